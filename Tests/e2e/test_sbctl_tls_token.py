"""`sbctl` credentials (SPEC §12, §13): `token hash` and `token jwt` checked against Python's own
SHA-256 and HMAC; `--cacert` / BUS_CACERT against a TLS broker whose CA the test made; bad
usage exits 2."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support.broker import DEFAULT_BIN
from support.names import unique
from support.tls import make_tls_files, start_tls_broker

SBCTL = Path(os.environ.get("SBCTL_BIN", str(Path(os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))).parent / "sbctl")))


def run(*args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    if not SBCTL.exists():
        pytest.fail(f"sbctl not found: {SBCTL} (build it with `swift build` or set SBCTL_BIN)")
    full = dict(os.environ)
    for name in ("BUS_URL", "BUS_TOKEN", "BUS_CACERT", "BUS_JWT_SECRET"):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run([str(SBCTL), *args], capture_output=True, text=True, timeout=timeout, env=full)


def ok(*args, **kw) -> list[dict]:
    done = run(*args, **kw)
    assert done.returncode == 0, f"sbctl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --------------------------------------------------------------------------------------------
# token hash


@pytest.mark.parametrize("token", ["s3cret", "ünïcødé-🚀", "a" * 300, "with spaces and \"quotes\""])
def test_token_hash_is_the_sha256_of_the_utf8_bytes(token):
    assert ok("token", "hash", token) == [{"sha256": hashlib.sha256(token.encode("utf-8")).hexdigest()}]


def test_token_hash_bad_usage_exits_2():
    for args in (["token", "hash"], ["token", "hash", ""], ["token", "hash", "a", "b"], ["token", "nope"]):
        done = run(*args)
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert done.stderr.strip(), args


# --------------------------------------------------------------------------------------------
# token jwt


SECRET = "k3y-of-at-least-32-bytes-for-hs256"
ENV_SECRET = "another-secret-from-the-environment-üñ"


def verify_hs256(token: str, secret: str) -> tuple[dict, dict]:
    header_b64, payload_b64, signature_b64 = token.split(".")
    expected = hmac.new(secret.encode("utf-8"), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(b64url_decode(signature_b64), expected), "the HS256 signature does not verify"
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))


def test_token_jwt_signs_the_claims_given():
    before = int(time.time())
    [out] = ok(
        "token", "jwt", "--secret", SECRET, "--sub", "billing",
        "--publish", "orders.>", "--publish", "payments",
        "--subscribe", "orders.*", "--group", "billing", "--group", "billing.>",
        "--admin", "--rate", "500", "--ttl", "30m",
    )
    after = int(time.time())
    header, claims = verify_hs256(out["token"], SECRET)
    assert header["alg"] == "HS256"
    assert claims["sub"] == "billing"
    assert isinstance(claims["exp"], int)
    assert before + 1800 <= claims["exp"] <= after + 1800
    assert out["expires"] == claims["exp"] * 1000
    assert claims["bus"] == {
        "publish": ["orders.>", "payments"],
        "subscribe": ["orders.*"],
        "groups": ["billing", "billing.>"],
        "admin": True,
        "rate": 500,
    }


def test_token_jwt_defaults_and_the_secret_from_the_environment():
    """No grants: publish and subscribe empty (nothing allowed), no groups (any), not admin, no
    rate; --ttl defaults to an hour; the secret may come from BUS_JWT_SECRET."""
    before = int(time.time())
    [out] = ok("token", "jwt", "--sub", "reader", env={"BUS_JWT_SECRET": ENV_SECRET})
    header, claims = verify_hs256(out["token"], ENV_SECRET)
    assert claims["bus"] == {"publish": [], "subscribe": [], "admin": False}
    assert before + 3600 <= claims["exp"] <= int(time.time()) + 3600
    with pytest.raises(AssertionError):
        verify_hs256(out["token"], "another secret")


@pytest.mark.parametrize("ttl, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800)])
def test_token_jwt_ttl_units(ttl, seconds):
    before = int(time.time())
    [out] = ok("token", "jwt", "--secret", SECRET, "--sub", "x", "--ttl", ttl)
    _, claims = verify_hs256(out["token"], SECRET)
    assert before + seconds <= claims["exp"] <= int(time.time()) + seconds


@pytest.mark.parametrize(
    "args",
    [
        ["token", "jwt", "--sub", "x"],  # no secret
        ["token", "jwt", "--secret", "s"],  # no sub
        ["token", "jwt", "--secret", "", "--sub", "x"],
        ["token", "jwt", "--secret", "31-bytes-is-one-short-of-enough", "--sub", "x"],  # RFC 7518 §3.2
        ["token", "jwt", "--secret", SECRET, "--sub", ""],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--ttl", "1y"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--ttl", "0s"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--ttl", "-5m"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--ttl", "h"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--rate", "0"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--rate", "many"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--publish", "orders..x"],
        ["token", "jwt", "--secret", SECRET, "--sub", "x", "--subscribe", ""],
    ],
)
def test_token_jwt_bad_usage_exits_2(args):
    done = run(*args)
    assert done.returncode == 2, (args, done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() and not done.stdout.strip(), (args, done.stdout, done.stderr)


# --------------------------------------------------------------------------------------------
# a TLS broker: --cacert / BUS_CACERT


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_broker(make_broker, tmp_path_factory, tls_files):
    return start_tls_broker(make_broker, tmp_path_factory, tls_files)


def wss_url(broker) -> str:
    """The broker's wss:// URL by host name (the certificate names both it and 127.0.0.1)."""
    return f"wss://localhost:{broker.port}/ws"


def test_sbctl_against_a_tls_broker_with_cacert(tls_broker, tls_files):
    topic = unique("tlscli")
    url = ["--url", wss_url(tls_broker)]
    [published] = ok("pub", topic, '{"n":1}', *url, "--cacert", str(tls_files.ca))
    assert published["offset"] == 1
    # BUS_CACERT instead of --cacert, and the broker's https:// URL for the HTTP commands.
    env = {"BUS_CACERT": str(tls_files.ca), "BUS_URL": f"https://localhost:{tls_broker.port}"}
    ok("pub", topic, '{"n":2}', env=env)
    envelopes = ok("sub", topic, "--group", "g", "--from", "earliest", "--count", "2", "--wait", "20", env=env)
    assert [e["payload"] for e in envelopes] == [{"n": 1}, {"n": 2}]
    described = ok("topics", "describe", topic, env=env)
    assert described[0]["config"]["topic"] == topic and described[0]["partitions"][0]["highWatermark"] == 2, described
    # The HTTP commands may name the broker by its address too.
    listed = ok("topics", "list", env={**env, "BUS_URL": f"https://127.0.0.1:{tls_broker.port}"})
    assert topic in json.dumps(listed)
    tls_broker.wait_committed(topic, "g", 2)


def test_sbctl_without_the_ca_refuses_the_broker(tls_broker, tls_files, tmp_path):
    """The system's roots do not know the test's CA: the WebSocket commands give up after
    --timeout with the TLS failure in the message, the HTTP ones at once; both exit 1."""
    topic = unique("tlscli")
    done = run("pub", topic, '{"n":1}', "--url", wss_url(tls_broker), "--timeout", "3")
    assert done.returncode == 1, done.stderr
    assert "unavailable" in done.stderr and "certificate" in done.stderr.lower(), done.stderr
    done = run("topics", "list", "--url", f"https://127.0.0.1:{tls_broker.port}", "--timeout", "5")
    assert done.returncode == 1, done.stderr
    assert "unavailable" in done.stderr, done.stderr
    # Another CA is no better.
    other = make_tls_files(tmp_path / "other")
    done = run("pub", topic, '{"n":1}', "--url", wss_url(tls_broker), "--timeout", "3", "--cacert", str(other.ca))
    assert done.returncode == 1 and "certificate" in done.stderr.lower(), done.stderr
    assert tls_broker.high_watermark(topic) is None, "nothing was published"


def test_plain_ws_to_a_tls_broker_fails_within_the_timeout(tls_broker):
    """ws:// to the TLS port: the broker closes the socket; sbctl gives up after --timeout
    (plus the client's close grace), exit 1, and does not hang."""
    started = time.monotonic()
    done = run("pub", "t", "{}", "--url", f"ws://localhost:{tls_broker.port}/ws", "--timeout", "3", timeout=60)
    assert done.returncode == 1 and "unavailable" in done.stderr, (done.returncode, done.stderr)
    assert time.monotonic() - started < 30
    assert tls_broker.http("GET", "/healthz")[0] == 200


def test_wss_to_an_ip_address_checks_the_address(tls_broker, tls_files, make_broker, tmp_path_factory, tmp_path):
    """wss:// by IP address: no TLS server name is sent (SNI carries no address) and the
    certificate must name the address; one that names only the host name is refused."""
    topic = unique("tlsip")
    [published] = ok("pub", topic, '{"n":1}', "--url", f"wss://127.0.0.1:{tls_broker.port}/ws", "--cacert", str(tls_files.ca))
    assert published["offset"] == 1
    named_only = make_tls_files(tmp_path / "named", ips=())
    broker = start_tls_broker(make_broker, tmp_path_factory, named_only, host="localhost")
    done = run("pub", topic, '{"n":2}', "--url", f"wss://127.0.0.1:{broker.port}/ws", "--cacert", str(named_only.ca), "--timeout", "3")
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "does not name 127.0.0.1" in done.stderr, done.stderr
    [published] = ok("pub", unique("tlsip"), '{"n":3}', "--url", f"wss://localhost:{broker.port}/ws", "--cacert", str(named_only.ca))
    assert published["offset"] == 1


def test_cacert_that_cannot_be_used_is_bad_usage(tmp_path, tls_files):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", garbage):
        done = run("pub", "t", "{}", "--url", "wss://127.0.0.1:1/ws", "--cacert", str(path))
        assert done.returncode == 2, (path, done.returncode, done.stderr)
        assert "--cacert" in done.stderr, done.stderr
        done = run("topics", "list", "--url", "wss://127.0.0.1:1/ws", env={"BUS_CACERT": str(path)})
        assert done.returncode == 2, (path, done.returncode, done.stderr)
