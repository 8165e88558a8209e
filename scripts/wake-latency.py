#!/usr/bin/env python3
"""Change-stream wake-up latency with 1, 10 and 100 active topics (SPEC §4).

Starts its own MongoDB wire-protocol double (Tests/MongoDouble) and, for each N, a fresh broker
on it (so exactly N topics are active), with the safety poll at 60 s so that only the change
stream can wake a dispatcher. One WebSocket connection subscribes (ephemeral) to N new topics;
each topic is warmed up with one event; then 300 events are published round-robin over the
topics, one at a time, from another connection, and the time from sending the PUBLISH to
receiving its MESSAGE is measured. Prints one JSON line per N:

  {"active_topics": N, "events": 300, "p50_ms": ..., "p99_ms": ..., "max_ms": ..., ...}

Binary: STREAM_BROKER_BIN, else .build/release/stream-broker if it exists (and is not older
than the debug build), else .build/debug/stream-broker. Logs stay in a temp dir (printed on
stderr); all processes started here are stopped at the end.

  python3 scripts/wake-latency.py [--events 300] [--topics 1,10,100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from websockets.sync.client import connect as ws_connect

REPO = Path(__file__).resolve().parents[1]
DOUBLE = REPO / "Tests" / "MongoDouble" / "mongo_double.py"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_binary() -> Path:
    if os.environ.get("STREAM_BROKER_BIN"):
        return Path(os.environ["STREAM_BROKER_BIN"]).resolve()
    release = REPO / ".build" / "release" / "stream-broker"
    debug = REPO / ".build" / "debug" / "stream-broker"
    if release.exists():
        if debug.exists() and debug.stat().st_mtime > release.stat().st_mtime:
            log(f"note: {release} is older than {debug}; using the debug build "
                "(build release with `swift build -c release`, or set STREAM_BROKER_BIN)")
            return debug
        return release
    return debug


def http_status(port: int, path: str) -> int:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Conn:
    def __init__(self, port: int):
        self.ws = ws_connect(f"ws://127.0.0.1:{port}/ws", max_size=None, compression=None,
                             proxy=None, open_timeout=10, ping_interval=None, close_timeout=2)

    def send(self, frame: dict) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self, timeout: float) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def measure(binary: Path, mongo_url: str, workdir: Path, n_topics: int, events: int) -> dict:
    port = free_port()
    data_dir = workdir / f"broker-{n_topics}"
    data_dir.mkdir()
    env = dict(os.environ, BUS_HOST="127.0.0.1", BUS_PORT=str(port), BUS_DATA_DIR=str(data_dir),
               MONGO_URL=mongo_url, MONGO_DB=f"wake_{n_topics}", BUS_LOG_LEVEL="info",
               BUS_POLL_MS="60000", BUS_METRICS_INTERVAL_MS="0")
    logf = open(data_dir / "broker.log", "ab")
    proc = subprocess.Popen([str(binary)], cwd=data_dir, env=env, stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=subprocess.STDOUT)
    sub = pub = None
    try:
        wait_until(lambda: proc.poll() is None and http_status(port, "/readyz") == 200, 30,
                   f"the broker ({n_topics} topics) to be ready")
        if "MongoDB store open" not in (data_dir / "broker.log").read_text(errors="replace"):
            raise RuntimeError(f"{binary} did not open the MongoDB store (a build without it?)")
        topics = [f"wake.n{n_topics}.t{i}" for i in range(n_topics)]
        sub, pub = Conn(port), Conn(port)
        for i, t in enumerate(topics):
            sub.send({"type": "SUBSCRIBE", "topic": t, "from": {"kind": "earliest"}, "rid": f"s{i}"})
        for _ in topics:
            reply = sub.recv(10)
            assert reply["type"] == "SUBSCRIBED", reply
        # warm-up: one event per topic, all delivered (every tail is open and live)
        for i, t in enumerate(topics):
            pub.send({"type": "PUBLISH", "topic": t, "payload": {"warm": i}, "rid": f"w{i}"})
        for _ in topics:
            reply = pub.recv(10)
            assert reply["type"] == "PUBLISHED" and reply["offset"] == 1, reply
        warmed = set()
        while len(warmed) < n_topics:
            m = sub.recv(15)
            assert m["type"] == "MESSAGE" and m["offset"] == 1, m
            warmed.add(m["topic"])
        # measured: one at a time, round-robin
        lat = []
        for k in range(events):
            topic = topics[k % n_topics]
            offset = 2 + k // n_topics
            sent = time.perf_counter()
            pub.send({"type": "PUBLISH", "topic": topic, "payload": {"k": k}, "rid": f"p{k}"})
            while True:
                m = sub.recv(10)
                if m.get("type") == "MESSAGE":
                    break
            got = time.perf_counter()
            assert (m["topic"], m["offset"], m["envelope"]["payload"]) == (topic, offset, {"k": k}), m
            reply = pub.recv(10)
            assert reply["type"] == "PUBLISHED" and reply["offset"] == offset, reply
            lat.append((got - sent) * 1000)
        return {
            "active_topics": n_topics, "events": events,
            "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(max(lat), 2), "mean_ms": round(statistics.fmean(lat), 2),
            "binary": str(binary.relative_to(REPO)) if binary.is_relative_to(REPO) else str(binary),
        }
    finally:
        for c in (sub, pub):
            if c is not None:
                c.close()
        stop(proc)
        logf.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--topics", default="1,10,100", help="comma list of active-topic counts")
    args = ap.parse_args()
    binary = pick_binary()
    if not binary.exists():
        log(f"broker binary not found: {binary} (swift build, or set STREAM_BROKER_BIN)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="wake-latency-"))
    log(f"logs in {workdir}; broker {binary}")
    dport = free_port()
    dlog = open(workdir / "double.log", "ab")
    double = subprocess.Popen(
        [sys.executable, str(DOUBLE), "--host", "127.0.0.1", "--port", str(dport)],
        stdout=dlog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def double_up():
            if double.poll() is not None:
                raise RuntimeError(f"the double exited with {double.returncode}")
            with socket.create_connection(("127.0.0.1", dport), timeout=0.5):
                return True
        wait_until(double_up, 20, "the MongoDB double")
        url = f"mongodb://127.0.0.1:{dport}/?replicaSet=rs0"
        for n in (int(x) for x in args.topics.split(",")):
            print(json.dumps(measure(binary, url, workdir, n, args.events)), flush=True)
    finally:
        stop(double)
        dlog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
