"""`sbctl` against a broker with BUS_AUTH set (SPEC §12, §13): `--token` / BUS_TOKEN on the
WebSocket upgrade and on HTTP requests; without a token, or with a bad one, a command is
refused with exit 1 and `unauthorized` on stderr; outside its patterns, `forbidden`. The
tokens file's hashes come from `sbctl token hash`, the JWTs from `sbctl token jwt`, so the
commands are checked against the broker that reads what they make."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support.broker import DEFAULT_BIN
from support.names import unique
from support.tls import make_tls_files, start_tls_broker
from support.waits import wait_for

SBCTL = Path(os.environ.get("SBCTL_BIN", str(Path(os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))).parent / "sbctl")))

BILLING = "billing-token-" + "7" * 20
ADMIN = "admin-token-" + "a" * 20
JWT_SECRET = "jwt-secret-of-at-least-32-bytes-for-hs256"


def run(broker, *args, env: dict | None = None, url: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    if not SBCTL.exists():
        pytest.fail(f"sbctl not found: {SBCTL} (build it with `swift build` or set SBCTL_BIN)")
    full = dict(os.environ)
    for name in ("BUS_URL", "BUS_TOKEN", "BUS_CACERT", "BUS_JWT_SECRET"):
        full.pop(name, None)
    if broker is not None:
        full["BUS_URL"] = url or broker.ws_url
    full.update(env or {})
    return subprocess.run([str(SBCTL), *args], capture_output=True, text=True, timeout=timeout, env=full)


def ok(broker, *args, **kw) -> list[dict]:
    done = run(broker, *args, **kw)
    assert done.returncode == 0, f"sbctl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def refused(broker, code: str, *args, **kw) -> str:
    done = run(broker, *args, **kw)
    assert done.returncode == 1, f"sbctl {' '.join(args)} exited {done.returncode}: {done.stdout} {done.stderr}"
    assert f"error: {code}:" in done.stderr, done.stderr
    assert not done.stdout.strip(), done.stdout
    return done.stderr


def sha256_of(token: str) -> str:
    [line] = ok(None, "token", "hash", token)
    return line["sha256"]


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": "billing", "sha256": sha256_of(BILLING), "publish": ["orders.>"], "subscribe": ["orders.*"],
         "groups": ["billing", "billing.>"]},
        {"name": "ops", "sha256": sha256_of(ADMIN), "publish": [">"], "subscribe": [">"], "admin": True},
    ]}))
    return path


@pytest.fixture
def token_broker(make_broker, tokens_file):
    return make_broker(BUS_AUTH="token", BUS_TOKENS_FILE=str(tokens_file))


def test_token_and_bus_token_publish_and_subscribe(token_broker):
    topic = "orders." + unique("auth").replace(".", "-")
    [first] = ok(token_broker, "pub", topic, '{"n":1}', "--token", BILLING)
    assert first["offset"] == 1
    [second] = ok(token_broker, "pub", topic, '{"n":2}', env={"BUS_TOKEN": BILLING})
    assert second["offset"] == 2
    # --token wins over BUS_TOKEN.
    ok(token_broker, "pub", topic, '{"n":3}', "--token", BILLING, env={"BUS_TOKEN": "not-a-token"})

    envelopes = ok(token_broker, "sub", topic, "--group", "billing", "--from", "earliest", "--count", "3", "--wait", "20",
                   env={"BUS_TOKEN": BILLING})
    assert [e["payload"] for e in envelopes] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert all(e["headers"].get("x-bus-principal") == "billing" for e in envelopes), envelopes
    # The acks reached the broker: read with the token too (GET needs a credential).
    def committed():
        lines = ok(token_broker, "groups", "offsets", topic, "--token", BILLING)
        return [line["committed"] for line in lines if line["group"] == "billing"] == [3]

    wait_for(committed, 10, 0.1, "billing committed 3")


def test_without_a_token_the_commands_are_unauthorized(token_broker):
    topic = "orders." + unique("auth").replace(".", "-")
    refused(token_broker, "unauthorized", "pub", topic, '{"n":1}')
    refused(token_broker, "unauthorized", "sub", topic, "--group", "billing", "--from", "earliest", "--count", "1", "--wait", "5")
    refused(token_broker, "unauthorized", "topics", "list")
    refused(token_broker, "unauthorized", "groups", "offsets", topic)
    refused(token_broker, "not_found", "topics", "describe", topic, "--token", ADMIN)  # nothing was published


def test_a_bad_token_is_unauthorized_at_once(token_broker):
    """The upgrade is refused with 401; sbctl says unauthorized rather than waiting for --timeout."""
    topic = "orders." + unique("auth").replace(".", "-")
    started = time.monotonic()
    stderr = refused(token_broker, "unauthorized", "pub", topic, '{"n":1}', "--token", "wrong", "--timeout", "30")
    assert time.monotonic() - started < 20, f"took {time.monotonic() - started:.1f}s: {stderr}"
    refused(token_broker, "unauthorized", "sub", topic, "--count", "1", "--token", "wrong", "--timeout", "30")
    refused(token_broker, "unauthorized", "topics", "list", env={"BUS_TOKEN": "wrong"})


def test_outside_its_patterns_a_token_is_forbidden(token_broker):
    stderr = refused(token_broker, "forbidden", "pub", "payments", '{"n":1}', "--token", BILLING)
    assert "billing" in stderr and "payments" in stderr, stderr
    refused(token_broker, "forbidden", "sub", "orders.a.b", "--group", "billing", "--count", "1", "--token", BILLING)
    refused(token_broker, "forbidden", "sub", "orders.x", "--group", "other", "--count", "1", "--token", BILLING)
    # Admin routes need admin.
    refused(token_broker, "forbidden", "topics", "create", "orders.new", "--token", BILLING)
    [created] = ok(token_broker, "topics", "create", "orders.new", "--partitions", "2", "--token", ADMIN)
    assert created["partitions"] == 2
    # A read needs any valid credential.
    listed = ok(token_broker, "topics", "list", "--token", BILLING)
    assert "orders.new" in json.dumps(listed)


def test_jwt_from_sbctl_token_jwt_is_accepted(make_broker):
    broker = make_broker(BUS_AUTH="jwt", BUS_JWT_SECRET=JWT_SECRET)
    [made] = ok(None, "token", "jwt", "--secret", JWT_SECRET, "--sub", "alice", "--publish", "jobs.>",
                "--subscribe", "jobs.>", "--ttl", "10m")
    topic = "jobs." + unique("auth").replace(".", "-")
    ok(broker, "pub", topic, '{"job":1}', "--token", made["token"])
    [envelope] = ok(broker, "sub", topic, "--from", "earliest", "--count", "1", "--wait", "20", env={"BUS_TOKEN": made["token"]})
    assert envelope["payload"] == {"job": 1} and envelope["headers"]["x-bus-principal"] == "alice"
    # Signed with another secret: refused.
    [other] = ok(None, "token", "jwt", "--secret", JWT_SECRET + "-other", "--sub", "alice", "--publish", "jobs.>")
    refused(broker, "unauthorized", "pub", topic, '{"job":2}', "--token", other["token"])
    # Outside its claims: forbidden.
    refused(broker, "forbidden", "pub", "mail.out", '{"n":1}', "--token", made["token"])


def test_token_over_tls(make_broker, tmp_path_factory, tmp_path, tokens_file):
    files = make_tls_files(tmp_path / "tls")
    broker = start_tls_broker(make_broker, tmp_path_factory, files, BUS_AUTH="token", BUS_TOKENS_FILE=str(tokens_file))
    topic = "orders." + unique("auth").replace(".", "-")
    env = {"BUS_CACERT": str(files.ca)}
    url = f"wss://localhost:{broker.port}/ws"
    ok(broker, "pub", topic, '{"n":1}', "--token", BILLING, env=env, url=url)
    [envelope] = ok(broker, "sub", topic, "--group", "billing", "--from", "earliest", "--count", "1", "--wait", "20",
                    "--token", BILLING, env=env, url=url)
    assert envelope["payload"] == {"n": 1}
    refused(broker, "unauthorized", "pub", topic, '{"n":2}', env=env, url=url)
    refused(broker, "unauthorized", "topics", "list", env=env, url=f"https://localhost:{broker.port}")
