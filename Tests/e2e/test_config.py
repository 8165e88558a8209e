"""Configuration is read once at start; a bad value stops the process with a message naming the
variable (SPEC §9), and a setting this build cannot honour is refused rather than ignored."""

import os
import subprocess

import pytest

from support.broker import DEFAULT_BIN
from support.net import free_port


def run_with(env_overrides, tmp_path):
    binary = os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))
    env = dict(os.environ, BUS_HOST="127.0.0.1", BUS_PORT=str(free_port()), BUS_DATA_DIR=str(tmp_path))
    env.pop("MONGO_URL", None)
    env.update(env_overrides)
    proc = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=20)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "env, named",
    [
        ({"BUS_PORT": "seventy"}, "BUS_PORT"),
        ({"BUS_PORT": "70000"}, "BUS_PORT"),
        ({"BUS_MAX_INFLIGHT": "0"}, "BUS_MAX_INFLIGHT"),
        ({"BUS_ACK_TIMEOUT_MS": "-5"}, "BUS_ACK_TIMEOUT_MS"),
        ({"BUS_MAX_FRAME_BYTES": "12"}, "BUS_MAX_FRAME_BYTES"),
        ({"BUS_LOG_LEVEL": "loud"}, "BUS_LOG_LEVEL"),
        ({"BUS_AUTH": "maybe"}, "BUS_AUTH"),
        ({"BUS_SYNC": "sometimes"}, "BUS_SYNC"),
        ({"BUS_OUTBOX": "nodot"}, "BUS_OUTBOX"),
        ({"BUS_OUTBOX": "shop.outbox"}, "BUS_OUTBOX"),
        ({"MONGO_URL": "http://127.0.0.1:1/"}, "MONGO_URL"),
        ({"MONGO_URL": "mongodb://127.0.0.1:1/", "MONGO_DB": "bad db"}, "MONGO_DB"),
        ({"BUS_MONGO_POOL_SIZE": "1"}, "BUS_MONGO_POOL_SIZE"),
        ({"BUS_AUTH": "token"}, "BUS_AUTH"),
    ],
)
def test_bad_or_unsupported_configuration_is_refused_at_start(env, named, tmp_path):
    code, stderr = run_with(env, tmp_path)
    assert code == 2, (code, stderr)
    assert "configuration error" in stderr and named in stderr, stderr


def test_unwritable_data_dir_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, stderr = run_with({"BUS_DATA_DIR": str(blocker / "sub")}, tmp_path)
    assert code != 0
    assert "data directory" in stderr or "SQLite" in stderr, stderr
