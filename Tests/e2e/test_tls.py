"""TLS on the broker's port (SPEC §12): with BUS_TLS_CERT_FILE and BUS_TLS_KEY_FILE the one port
serves HTTPS and wss://; a plain-text client fails cleanly and the broker keeps serving; bad TLS
settings stop the broker at start (exit 2) naming the variable. The CA and the server
certificate are made by the test (support/tls.py)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from support.broker import DEFAULT_BIN
from support.names import unique
from support.net import free_port
from support.tls import make_tls_files, start_tls_broker
from support.ws import WS


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_broker(make_broker, tmp_path_factory, tls_files):
    return start_tls_broker(make_broker, tmp_path_factory, tls_files, BUS_LOG_LEVEL="debug")


def test_https_healthz_and_publish(tls_broker):
    status, body = tls_broker.http("GET", "/healthz")
    assert status == 200, body
    topic = unique("tls")
    reply = tls_broker.http_publish(topic, {"n": 1}, key="k")
    assert reply["offset"] == 1 and reply["topic"] == topic
    events = tls_broker.read_events(topic)
    assert [e["payload"] for e in events] == [{"n": 1}]


def test_https_needs_the_ca(tls_broker):
    """A client that does not trust the test's CA refuses the broker's certificate."""
    ctx = ssl.create_default_context()  # the system's roots only
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    with pytest.raises(OSError) as info:
        opener.open(tls_broker.base_url + "/healthz", timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value), info.value


def test_wss_publish_subscribe_receive(tls_broker):
    topic = unique("tls")
    sub = tls_broker.ws()
    sub.subscribe(topic, group="g", from_={"kind": "earliest"})
    pub = tls_broker.ws()
    published = pub.publish(topic, {"hello": "tls"}, key="k")
    assert published["offset"] == 1
    msg = sub.recv_type("MESSAGE", timeout=10)
    assert msg["topic"] == topic and msg["offset"] == 1
    assert msg["envelope"]["payload"] == {"hello": "tls"}


def _assert_closed_without_http(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Reads until the broker closes the socket; returns what it sent (never an HTTP response)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"the broker kept a plain-text connection open for {timeout}s")
    assert not received.startswith(b"HTTP/"), received[:200]
    return received


def test_plain_text_clients_fail_cleanly_and_the_broker_keeps_serving(tls_broker):
    port = tls_broker.port
    # http:// to the TLS port: the request fails, no HTTP answer comes back.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    conn.close()

    # ws:// to the TLS port: the handshake fails.
    with pytest.raises(Exception) as info:
        WS(f"ws://127.0.0.1:{port}/ws")
    assert not isinstance(info.value, AssertionError), info.value

    # A raw plain-text request and garbage: the broker closes each socket.
    for data in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b"hello\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            _assert_closed_without_http(sock)

    # A TLS client that stops after connecting (no handshake): the others are not held up.
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        # Still serving: HTTPS and a wss:// round trip.
        status, _ = tls_broker.http("GET", "/healthz")
        assert status == 200
        topic = unique("tls")
        client = tls_broker.ws()
        client.subscribe(topic, group="g", from_={"kind": "earliest"})
        client.publish(topic, {"after": "plain"})
        assert client.recv_type("MESSAGE", timeout=10)["offset"] == 1
    finally:
        idle.close()

    assert tls_broker.running
    log = tls_broker.log_path.read_text(errors="replace")
    failures = [line for line in log.splitlines() if "TLS connection failed" in line]
    assert failures, "each plain-text connection is logged (at debug)\n" + log[-3000:]
    assert all("debug" in line for line in failures), failures


def test_a_client_that_closes_without_close_notify_is_no_error(tls_broker):
    """A wss client that drops its TCP connection: the broker closes its side and serves on."""
    ctx = tls_broker.ssl_context
    raw = socket.create_connection(("127.0.0.1", tls_broker.port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    raw_fd = tls.detach()  # no close_notify
    socket.socket(fileno=raw_fd).close()
    status, _ = tls_broker.http("GET", "/healthz")
    assert status == 200
    log = tls_broker.log_path.read_text(errors="replace")
    assert " error " not in log and "critical" not in log, log[-3000:]


# --------------------------------------------------------------------------------------------
# bad TLS settings: exit 2, naming the variable


def run_with(env_overrides, tmp_path):
    binary = os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN))
    env = dict(os.environ, BUS_HOST="127.0.0.1", BUS_PORT=str(free_port()), BUS_DATA_DIR=str(tmp_path))
    env.pop("MONGO_URL", None)
    env.update(env_overrides)
    proc = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=20)
    return proc.returncode, proc.stderr


def test_bad_tls_settings_stop_the_broker_naming_the_variable(tmp_path, tls_files):
    other = make_tls_files(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    cases = [
        # (env, variable named, a word of the reason)
        ({"BUS_TLS_CERT_FILE": str(tmp_path / "missing.pem"), "BUS_TLS_KEY_FILE": str(tls_files.key)},
         "BUS_TLS_CERT_FILE", "cannot be read"),
        ({"BUS_TLS_CERT_FILE": str(garbage), "BUS_TLS_KEY_FILE": str(tls_files.key)}, "BUS_TLS_CERT_FILE", "certificate"),
        ({"BUS_TLS_CERT_FILE": str(empty), "BUS_TLS_KEY_FILE": str(tls_files.key)}, "BUS_TLS_CERT_FILE", "certificate"),
        # a key where the certificate belongs
        ({"BUS_TLS_CERT_FILE": str(tls_files.key), "BUS_TLS_KEY_FILE": str(tls_files.key)}, "BUS_TLS_CERT_FILE", "certificate"),
        ({"BUS_TLS_CERT_FILE": str(tls_files.cert), "BUS_TLS_KEY_FILE": str(tmp_path / "missing.key")},
         "BUS_TLS_KEY_FILE", "cannot be read"),
        ({"BUS_TLS_CERT_FILE": str(tls_files.cert), "BUS_TLS_KEY_FILE": str(tls_files.cert)}, "BUS_TLS_KEY_FILE", "private key"),
        ({"BUS_TLS_CERT_FILE": str(tls_files.cert), "BUS_TLS_KEY_FILE": str(other.key)}, "BUS_TLS_KEY_FILE", "does not go with"),
        ({"BUS_TLS_CERT_FILE": str(tls_files.cert)}, "BUS_TLS_KEY_FILE", "both or neither"),
        ({"BUS_TLS_KEY_FILE": str(tls_files.key)}, "BUS_TLS_CERT_FILE", "both or neither"),
    ]
    for env, named, reason in cases:
        code, stderr = run_with(env, tmp_path)
        assert code == 2, (env, code, stderr)
        assert "configuration error" in stderr and named in stderr and reason in stderr, (env, stderr)


def test_the_certificate_file_may_hold_a_chain(make_broker, tmp_path_factory, tmp_path, tls_files):
    """A full chain (leaf, then CA) in BUS_TLS_CERT_FILE is served as a chain."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes(tls_files.cert.read_bytes() + tls_files.ca.read_bytes())
    files = type(tls_files)(ca=tls_files.ca, cert=chain, key=tls_files.key)
    broker = start_tls_broker(make_broker, tmp_path_factory, files)
    assert broker.http("GET", "/healthz")[0] == 200
    assert json.dumps(broker.http("GET", "/topics")[1]) is not None
