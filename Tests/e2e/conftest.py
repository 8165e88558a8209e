"""End-to-end fixtures for StreamBroker.

Each test starts the real `stream-broker` executable (path from STREAM_BROKER_BIN, default
<repo>/.build/debug/stream-broker) on a free port with its own data directory, and talks to it
over real WebSocket and HTTP connections. See /work/shared/SPEC.md (sections 5, 6, 8, 9).

Waiting is always done on a condition with a deadline (`wait_for`); fixed sleeps are used only
to assert that something does *not* happen within a short window (`WS.expect_nothing`).
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / ".build" / "debug" / "stream-broker"
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0
LOG_TAIL_LINES = 80


# --------------------------------------------------------------------------------------------
# generic helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(cond, timeout: float = 5.0, interval: float = 0.02, message: str = "condition"):
    """Poll `cond()` until it returns a truthy value; return that value. Fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError as exc:  # allow conditions written as assertions
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last assertion: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A unique, valid topic / group name."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def js_hash(key: str) -> int:
    """The sketch's JavaScript hash: h = (h<<5)-h+c | 0 over UTF-16 code units (signed 32-bit)."""
    data = key.encode("utf-16-le")
    h = 0
    for i in range(0, len(data), 2):
        c = data[i] | (data[i + 1] << 8)
        h = (h * 31 + c) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def partition_for(key: str, partitions: int) -> int:
    return abs(js_hash(key)) % partitions


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# urllib must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------
# WebSocket client


class WSClosed(AssertionError):
    def __init__(self, code, reason):
        super().__init__(f"WebSocket closed by server: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class WS:
    """A thin synchronous client for the broker's /ws endpoint (one JSON object per frame)."""

    _rids = itertools.count(1)

    def __init__(self, url: str, **kwargs):
        self.url = url
        self.conn = ws_connect(
            url,
            max_size=None,
            compression=None,  # frame sizes on the wire are what we send
            proxy=None,
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
            **kwargs,
        )
        # Frames read off the socket while waiting for a specific reply (e.g. MESSAGE frames
        # that arrive while publish() waits for its PUBLISHED); recv() returns these first.
        self.pending: collections.deque[dict] = collections.deque()

    # -- raw I/O ----------------------------------------------------------------------------

    def send(self, frame: dict) -> None:
        self.conn.send(json.dumps(frame))

    def send_raw(self, text) -> None:
        self.conn.send(text)

    def _read(self, timeout: float) -> dict:
        try:
            raw = self.conn.recv(timeout=timeout)
        except TimeoutError:
            raise
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise WSClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else None) from None
        assert isinstance(raw, str), f"expected a text frame, got {type(raw).__name__}: {raw!r:.200}"
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"server frame is not a JSON object: {raw!r:.200}"
        return frame

    def recv(self, timeout: float = 5.0) -> dict:
        """The next server frame (as a dict). Fails if none arrives within `timeout`."""
        if self.pending:
            return self.pending.popleft()
        try:
            return self._read(timeout)
        except TimeoutError:
            raise AssertionError(f"no frame from the server within {timeout}s") from None

    def recv_type(self, type_: str, timeout: float = 5.0) -> dict:
        """The next frame, asserted to be of type `type_`."""
        frame = self.recv(timeout)
        assert frame.get("type") == type_, f"expected a {type_} frame, got: {frame}"
        return frame

    def recv_messages(self, n: int, timeout: float = 5.0) -> list[dict]:
        """The next `n` frames, each asserted to be a MESSAGE (overall deadline `timeout`)."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"got only {len(out)} of {n} MESSAGE frames within {timeout}s: "
                    f"offsets {[m['offset'] for m in out]}"
                )
            out.append(self.recv_type("MESSAGE", timeout=left))
        return out

    def expect_nothing(self, seconds: float = 0.4) -> None:
        """Assert that no frame arrives within `seconds`."""
        assert not self.pending, f"unexpected frame: {self.pending[0]}"
        try:
            frame = self._read(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame for {seconds}s, got: {frame}")

    def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict]]:
        """Read until the server closes the connection; return (close code, frames read)."""
        deadline = time.monotonic() + timeout
        frames = list(self.pending)
        self.pending.clear()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close the connection within {timeout}s")
            try:
                frames.append(self._read(left))
            except TimeoutError:
                continue
            except WSClosed as closed:
                return closed.code, frames

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- request / reply --------------------------------------------------------------------

    def _await_reply(self, types: tuple[str, ...], timeout: float, rid=None) -> dict:
        """Wait for the next frame whose type is in `types` (and whose rid matches, if given);
        stash MESSAGE frames that arrive meanwhile for recv()."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {'/'.join(types)} reply within {timeout}s (rid={rid})")
            try:
                frame = self._read(left)
            except TimeoutError:
                continue
            if frame.get("type") == "MESSAGE":
                self.pending.append(frame)
                continue
            assert frame.get("type") in types, f"expected {'/'.join(types)}, got: {frame}"
            if rid is not None and frame.get("rid") != rid:
                raise AssertionError(f"reply with unexpected rid (wanted {rid!r}): {frame}")
            return frame

    def publish(self, topic, payload, key=None, headers=None, id=None, rid=None, timeout=5.0) -> dict:
        """Send PUBLISH, return the PUBLISHED frame (fails on ERROR)."""
        frame = {"type": "PUBLISH", "topic": topic, "payload": payload}
        if key is not None:
            frame["key"] = key
        if headers is not None:
            frame["headers"] = headers
        if id is not None:
            frame["id"] = id
        if rid is not None:
            frame["rid"] = rid
        self.send(frame)
        reply = self._await_reply(("PUBLISHED", "ERROR"), timeout, rid)
        assert reply["type"] == "PUBLISHED", f"PUBLISH to {topic!r} failed: {reply}"
        return reply

    def publish_many(self, topic, payloads, key=None, headers=None, timeout=15.0) -> list[dict]:
        """Pipeline one PUBLISH per payload (each with its own rid); return the PUBLISHED frames
        in send order."""
        rids = [f"pm-{next(self._rids)}" for _ in payloads]
        for rid, payload in zip(rids, payloads):
            frame = {"type": "PUBLISH", "topic": topic, "payload": payload, "rid": rid}
            if key is not None:
                frame["key"] = key
            if headers is not None:
                frame["headers"] = headers
            self.send(frame)
        got: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(rids):
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(got)} of {len(rids)} PUBLISHED within {timeout}s"
            reply = self._await_reply(("PUBLISHED", "ERROR"), left)
            assert reply["type"] == "PUBLISHED", f"PUBLISH failed: {reply}"
            got[reply.get("rid")] = reply
        return [got[r] for r in rids]

    def subscribe(self, topic, group=None, rid=None, timeout=5.0, **opts) -> dict:
        """Send SUBSCRIBE (opts: from_, max_inflight, ack_timeout_ms, filter, reset, ...);
        return the SUBSCRIBED frame (fails on ERROR)."""
        frame = {"type": "SUBSCRIBE", "topic": topic}
        if group is not None:
            frame["group"] = group
        if rid is not None:
            frame["rid"] = rid
        if "from_" in opts:
            opts["from"] = opts.pop("from_")
        frame.update(opts)
        self.send(frame)
        reply = self._await_reply(("SUBSCRIBED", "ERROR"), timeout, rid)
        assert reply["type"] == "SUBSCRIBED", f"SUBSCRIBE to {topic!r} failed: {reply}"
        return reply

    def ack(self, msg: dict) -> None:
        self.send(
            {
                "type": "ACK",
                "topic": msg["topic"],
                "partition": msg["partition"],
                "group": msg["group"],
                "offset": msg["offset"],
            }
        )

    def nack(self, msg: dict, delay_ms=None, reason=None) -> None:
        frame = {
            "type": "NACK",
            "topic": msg["topic"],
            "partition": msg["partition"],
            "group": msg["group"],
            "offset": msg["offset"],
        }
        if delay_ms is not None:
            frame["delay_ms"] = delay_ms
        if reason is not None:
            frame["reason"] = reason
        self.send(frame)

    def flow(self, topic, group, credits: int) -> None:
        self.send({"type": "FLOW", "topic": topic, "group": group, "credits": credits})

    def barrier(self, timeout: float = 5.0) -> None:
        """A round trip: every frame sent before this has been read and handled by the server
        (it answers frames of one connection in order)."""
        self.publish(unique("barrier"), {"barrier": True}, timeout=timeout)


class RawWS:
    """A minimal WebSocket client on a plain socket with a tiny receive buffer, so that not
    reading really stops the server's writes (a library client would keep reading)."""

    def __init__(self, port: int, rcvbuf: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, deadline: float):
        """(opcode, payload bytes)"""
        b0, b1 = self._need(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8, deadline))
        if b1 & 0x80:
            mask = self._need(4, deadline)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._need(n, deadline)))
        else:
            data = self._need(n, deadline)
        return b0 & 0x0F, data

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------------------------
# the broker process


class Broker:
    def __init__(self, data_dir: Path, env_overrides: dict | None = None, port: int | None = None):
        self.binary = Path(os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN)))
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.env_overrides = {k: str(v) for k, v in (env_overrides or {}).items()}
        self.log_path = self.data_dir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._clients: list[WS] = []
        self.mongo_db = f"bus_e2e_{uuid.uuid4().hex[:12]}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "Broker":
        if not self.binary.exists():
            pytest.fail(
                f"broker binary not found: {self.binary} "
                "(build it with `swift build` or set STREAM_BROKER_BIN)",
                pytrace=False,
            )
        env = dict(os.environ)
        env.update(
            {
                "BUS_HOST": "127.0.0.1",
                "BUS_PORT": str(self.port),
                "BUS_DATA_DIR": str(self.data_dir),
                "BUS_LOG_LEVEL": "info",
            }
        )
        if env.get("MONGO_URL"):
            # A killed replica's leases are taken over after the lease TTL; keep it short so
            # that restart tests do not wait 10 s (the default) for a lease to expire.
            env.setdefault("BUS_LEASE_TTL_MS", "2000")
        if env.get("MONGO_URL") and "MONGO_DB" not in self.env_overrides:
            # Against a real MongoDB (MONGO_URL set by the caller) each broker gets its own
            # database, kept across restarts.
            env["MONGO_DB"] = self.mongo_db
        env.update(self.env_overrides)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== start {time.strftime('%H:%M:%S')} port={self.port} "
                             f"env={self.env_overrides} =====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            [str(self.binary)],
            cwd=str(self.data_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"broker exited with status {code} during startup\n{self.log_tail()}"
                )
            try:
                status, _ = self.http("GET", "/healthz", timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.kill9()
                raise AssertionError(
                    f"broker did not answer GET /healthz with 200 within {START_DEADLINE_S}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _close_clients(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()

    def stop(self, timeout: float = STOP_DEADLINE_S) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit status
        (negative = killed by that signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._after_exit()
        return code

    def kill9(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        code = self.proc.returncode
        self._after_exit()
        return code

    def _after_exit(self) -> None:
        self._close_clients()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> "Broker":
        """Start again with the same data dir and port (stops first if still running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        tail = text.splitlines()[-lines:]
        return f"--- broker log tail ({self.log_path}) ---\n" + "\n".join(tail)

    # -- HTTP -------------------------------------------------------------------------------

    def http_raw(self, method: str, path: str, data: bytes | None = None,
                 headers: dict | None = None, timeout: float = 5.0):
        """(status, headers, body bytes)."""
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            body = err.read()
            return err.code, err.headers, body

    def http(self, method: str, path: str, body=None, timeout: float = 5.0):
        """(status, parsed JSON body or None)."""
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, raw = self.http_raw(method, path, data, headers, timeout)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    # -- WebSocket --------------------------------------------------------------------------

    def ws(self) -> WS:
        client = WS(self.ws_url)
        self._clients.append(client)
        return client

    # -- convenience ------------------------------------------------------------------------

    def create_topic(self, topic: str, **config) -> dict:
        status, body = self.http("POST", "/topics", {"topic": topic, **config})
        assert status == 200, f"POST /topics {topic} {config} -> {status} {body}"
        return body

    def http_publish(self, topic, payload, key=None, headers=None, id=None) -> dict:
        body = {"payload": payload}
        if key is not None:
            body["key"] = key
        if headers is not None:
            body["headers"] = headers
        if id is not None:
            body["id"] = id
        status, reply = self.http("POST", f"/topics/{q(topic)}/events", body)
        assert status == 200, f"POST /topics/{topic}/events -> {status} {reply}"
        return reply

    def read_events(self, topic, partition=0, from_=1, limit=100) -> list[dict]:
        status, body = self.http(
            "GET", f"/topics/{q(topic)}/events?partition={partition}&from={from_}&limit={limit}"
        )
        assert status == 200, f"GET events of {topic} -> {status} {body}"
        return body["events"]

    def read_all_events(self, topic, partition=0) -> list[dict]:
        """All events of a partition, paging in case the server caps `limit`."""
        out: list[dict] = []
        nxt = 1
        while True:
            page = self.read_events(topic, partition, nxt, 500)
            if not page:
                return out
            out.extend(page)
            nxt = page[-1]["offset"] + 1

    def offsets(self, topic) -> dict:
        status, body = self.http("GET", f"/topics/{q(topic)}/offsets")
        assert status == 200, f"GET /topics/{topic}/offsets -> {status} {body}"
        return body

    def group_partition(self, topic, group, partition=0) -> dict | None:
        """The offsets entry {partition, committed, highWatermark, lag} of a group, or None."""
        for g in self.offsets(topic).get("groups", []):
            if g.get("group") == group:
                for p in g.get("partitions", []):
                    if p.get("partition") == partition:
                        return p
        return None

    def committed(self, topic, group, partition=0) -> int | None:
        entry = self.group_partition(topic, group, partition)
        return None if entry is None else entry.get("committed")

    def wait_committed(self, topic, group, value, partition=0, timeout=5.0) -> None:
        seen = []

        def cond():
            c = self.committed(topic, group, partition)
            seen.append(c)
            return c == value

        try:
            wait_for(cond, timeout, 0.03, f"{topic}/{group}/p{partition} committed == {value}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen committed={seen[-1] if seen else None}") from None

    def high_watermark(self, topic, partition=0) -> int | None:
        """A partition's high-water mark from GET /topics/{t}; None if the topic is unknown."""
        status, body = self.http("GET", f"/topics/{q(topic)}")
        if status == 404:
            return None
        assert status == 200, f"GET /topics/{topic} -> {status} {body}"
        for p in body["partitions"]:
            if p["partition"] == partition:
                return p["highWatermark"]
        raise AssertionError(f"no partition {partition} in {body}")


def q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# --------------------------------------------------------------------------------------------
# fixtures


class BrokerFactory:
    """Starts brokers (each with a fresh data dir and port) and cleans all of them up."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.brokers: list[Broker] = []

    def __call__(self, **env) -> Broker:
        data_dir = self._tmp.mktemp("broker")
        broker = Broker(data_dir, env)
        self.brokers.append(broker)
        broker.start()
        return broker

    def cleanup(self) -> None:
        for b in self.brokers:
            b._close_clients()  # a client that is not reading must not hold up the shutdown
            try:
                b.stop(timeout=5)
            except Exception:
                b.kill9()


@pytest.fixture
def make_broker(tmp_path_factory, request):
    """`make_broker(BUS_X="1", ...)` starts a broker with env overrides; all are stopped at the end."""
    factory = BrokerFactory(tmp_path_factory)
    request.node._brokers = factory.brokers
    yield factory
    factory.cleanup()


@pytest.fixture
def broker(make_broker) -> Broker:
    """A fresh broker with the default configuration, for one test."""
    return make_broker()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    """One broker for a whole module, for tests that are independent by topic name."""
    factory = BrokerFactory(tmp_path_factory)
    b = factory(BUS_MAX_BAD_FRAMES="1000")
    yield b
    factory.cleanup()


@pytest.fixture
def shared(shared_broker, request) -> Broker:
    request.node._brokers = [shared_broker]
    return shared_broker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        brokers = getattr(item, "_brokers", None) or []
        for i, b in enumerate(brokers):
            report.sections.append((f"broker log #{i} (port {b.port})", b.log_tail()))


# --------------------------------------------------------------------------------------------
# store mode: E2E_STORE=mongo runs every test with the broker on MongoDB. With MONGO_URL set,
# that server is used; otherwise the MongoDB wire-protocol double (Tests/MongoDouble) is started
# for the session and stopped afterwards.

DOUBLE_SCRIPT = REPO / "Tests" / "MongoDouble" / "mongo_double.py"


def store_mode() -> str:
    return os.environ.get("E2E_STORE", "sqlite")


class MongoDouble:
    """The wire-protocol double as a child process (restartable, optionally with kept data)."""

    def __init__(self, workdir: Path, history: int | None = None):
        self.port = _free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_file = self.workdir / "double.data"
        self.log_path = self.workdir / "double.log"
        self.history = history
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"

    def start(self) -> "MongoDouble":
        args = [os.environ.get("PYTHON", "python3"), str(DOUBLE_SCRIPT), "--host", "127.0.0.1",
                "--port", str(self.port), "--data", str(self.data_file)]
        if self.history is not None:
            args += ["--history", str(self.history)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mongo double exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("mongo double did not accept connections within 20 s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        import pymongo  # only needed in MongoDB mode
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)


@pytest.fixture(scope="session", autouse=True)
def mongo_store(tmp_path_factory):
    """In MongoDB mode without MONGO_URL, one double for the whole session."""
    if store_mode() != "mongo" or os.environ.get("MONGO_URL"):
        yield None
        return
    double = MongoDouble(tmp_path_factory.mktemp("mongo-double")).start()
    os.environ["MONGO_URL"] = double.url
    try:
        yield double
    finally:
        os.environ.pop("MONGO_URL", None)
        double.stop()


def pytest_report_header(config):
    return f"store mode: {store_mode()}"
