"""One `stream-broker` process: started on a free port with its own data directory (path of
the executable from STREAM_BROKER_BIN, default <repo>/.build/debug/stream-broker), stopped with
SIGTERM or SIGKILL, restarted on the same port and data; its HTTP API and WebSocket clients
(SPEC §5, §6, §8, §9). `BrokerFactory` starts brokers for a test and cleans all of them up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from support.net import OPENER, free_port
from support.waits import wait_for
from support.ws import WS

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / ".build" / "debug" / "stream-broker"
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0
LOG_TAIL_LINES = 80


class Broker:
    def __init__(self, data_dir: Path, env_overrides: dict | None = None, port: int | None = None):
        self.binary = Path(os.environ.get("STREAM_BROKER_BIN", str(DEFAULT_BIN)))
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
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
            with OPENER.open(req, timeout=timeout) as resp:
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


class BrokerFactory:
    """Starts brokers (each with a fresh data dir and port) and cleans all of them up."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.brokers: list[Broker] = []

    def __call__(self, **env) -> Broker:
        return self.add(env)

    def add(self, env: dict, port: int | None = None, start: bool = True,
            name: str = "broker") -> Broker:
        """A broker in a fresh data dir `<name>N`, optionally on a port chosen in advance (e.g.
        an HAProxy slot declared before the broker runs), started unless `start` is false."""
        broker = Broker(self._tmp.mktemp(name), env, port=port)
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def cleanup(self) -> None:
        for b in self.brokers:
            b._close_clients()  # a client that is not reading must not hold up the shutdown
            try:
                b.stop(timeout=5)
            except Exception:
                b.kill9()
