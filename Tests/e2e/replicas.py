"""Helpers for the multi-replica end-to-end tests (SPEC §7): several `stream-broker` replicas
on one MongoDB database, a real HAProxy in front of them, group consumers in threads that
reconnect through HAProxy when their replica dies, a pipelining publisher that republishes a
batch with the same ids after a lost connection (idempotent publish), and readers of the
replicas' `/stats` ownership and of the `leases` / `group_offsets` / `members` collections.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import WS, Broker, _free_port, partition_for, wait_for

LEASE_TTL_MS = 2000
AUDIT_TOPIC = "system.bus.audit"


# --------------------------------------------------------------------------------------------
# MongoDB access from the tests


def mongo_client():
    """pymongo on the session's MongoDB (the shared double or the server in MONGO_URL)."""
    import pymongo

    return pymongo.MongoClient(os.environ["MONGO_URL"], serverSelectionTimeoutMS=5000)


# --------------------------------------------------------------------------------------------
# replicas


def replica_env(db: str, replica_id: str, **extra) -> dict:
    env = {
        "MONGO_DB": db,
        "BUS_REPLICA_ID": replica_id,
        "BUS_LEASE_TTL_MS": str(LEASE_TTL_MS),
        "BUS_METRICS_INTERVAL_MS": "0",  # less load on the (slow) double
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def new_broker(make_broker, env: dict, port: int | None = None, start: bool = True) -> Broker:
    """A broker managed (logs on failure, stopped at teardown) by the `make_broker` factory,
    optionally on a port chosen in advance (HAProxy slots declared before the broker runs)."""
    broker = Broker(make_broker._tmp.mktemp("replica"), env, port=port)
    make_broker.brokers.append(broker)
    if start:
        broker.start()
    return broker


def start_replicas(make_broker, n: int, db: str | None = None, topics: dict | None = None,
                   **extra) -> tuple[str, list[Broker]]:
    """`n` replicas r1..rn on one (new) database. `topics` ({topic: partitions}) are created
    on r1 before the others start. Returns (db, brokers)."""
    db = db or f"bus_e2e_rep_{uuid.uuid4().hex[:10]}"
    brokers = []
    for i in range(n):
        b = new_broker(make_broker, replica_env(db, f"r{i + 1}", **extra))
        wait_for(lambda b=b: b.http("GET", "/readyz")[0] == 200, 20, 0.1, f"/readyz of port {b.port}")
        brokers.append(b)
        if i == 0:
            for topic, partitions in (topics or {}).items():
                b.create_topic(topic, partitions=partitions)
    return db, brokers


def stats(broker: Broker, timeout: float = 5.0) -> dict:
    try:
        status, body = broker.http("GET", "/stats", timeout=timeout)
    except OSError as exc:
        code = broker.proc.poll() if broker.proc is not None else None
        raise AssertionError(f"GET /stats on {broker.env_overrides.get('BUS_REPLICA_ID')} (port "
                             f"{broker.port}, exit status {code}) failed: {exc}") from None
    assert status == 200, f"GET /stats on port {broker.port} -> {status} {body}"
    return body


def ownership(broker: Broker, topic: str, group: str) -> tuple[list[int], int] | None:
    """(owned partitions, connections) of (topic, group) on one replica; None if it lists none."""
    for o in stats(broker).get("ownership", []):
        if o.get("topic") == topic and o.get("group") == group:
            return sorted(o.get("partitions") or []), int(o.get("connections") or 0)
    return None


def owned(broker: Broker, topic: str, group: str) -> list[int]:
    o = ownership(broker, topic, group)
    return [] if o is None else o[0]


def connections(broker: Broker, topic: str, group: str) -> int:
    o = ownership(broker, topic, group)
    return 0 if o is None else o[1]


def owned_epochs(broker: Broker, topic: str, group: str) -> dict[int, int | None]:
    """partition -> epoch, from the per-partition `groups` entries of /stats."""
    out = {}
    for g in stats(broker).get("groups", []):
        if g.get("topic") == topic and g.get("group") == group:
            out[g["partition"]] = g.get("epoch")
    return out


def delivered(broker: Broker, topic: str) -> int:
    for t in stats(broker).get("topics", []):
        if t.get("topic") == topic:
            return int(t.get("delivered") or 0)
    return 0


def expected_spread(replica_ids, partitions: int) -> dict[str, list[int]]:
    """The contract's deterministic spread: partition p -> sorted(replicas)[p % n]."""
    ids = sorted(replica_ids)
    out = {r: [] for r in ids}
    for p in range(partitions):
        out[ids[p % len(ids)]].append(p)
    return out


def ownership_map(brokers, topic, group) -> dict[str, list[int]]:
    """replica id -> owned partitions, over the given (running) replicas."""
    return {b.env_overrides["BUS_REPLICA_ID"]: owned(b, topic, group) for b in brokers}


def wait_spread(brokers, topic, group, partitions: int, timeout: float = 20.0) -> dict[str, list[int]]:
    """Wait until the running replicas own exactly the contract's spread of `partitions`
    partitions over themselves (each partition once)."""
    want = expected_spread([b.env_overrides["BUS_REPLICA_ID"] for b in brokers], partitions)
    seen = {}

    def cond():
        seen["last"] = ownership_map(brokers, topic, group)
        return seen["last"] == want

    try:
        wait_for(cond, timeout, 0.1, f"ownership of {topic}/{group} == {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen.get('last')}") from None
    return want


def rid(broker: Broker) -> str:
    return broker.env_overrides["BUS_REPLICA_ID"]


def keys_for_partitions(partitions: int, per_partition: int = 5) -> list[str]:
    """Keys covering every partition evenly (`per_partition` keys each)."""
    by_p: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per_partition for v in by_p.values()):
        k = f"key-{i}"
        p = partition_for(k, partitions)
        if len(by_p[p]) < per_partition:
            by_p[p].append(k)
        i += 1
    return [k for p in range(partitions) for k in by_p[p]]


def audit(broker: Broker, kinds: tuple[str, ...], topic: str | None = None) -> list[dict]:
    """Audit payloads of the given kinds (optionally about `topic`), in offset order per
    partition."""
    status, body = broker.http("GET", f"/topics/{AUDIT_TOPIC}")
    if status == 404:
        return []
    assert status == 200, body
    out = []
    for p in body["partitions"]:
        for e in broker.read_all_events(AUDIT_TOPIC, p["partition"]):
            payload = e["payload"]
            if isinstance(payload, dict) and payload.get("kind") in kinds and (
                    topic is None or payload.get("topic") == topic):
                out.append(payload)
    return out


def committed_all(broker: Broker, topic: str, group: str, partitions: int) -> dict[int, tuple]:
    """partition -> (committed, highWatermark) from GET /topics/{t}/offsets (the store's view)."""
    body = broker.offsets(topic)
    out = {}
    for g in body.get("groups", []):
        if g.get("group") == group:
            for p in g.get("partitions", []):
                out[p["partition"]] = (p.get("committed"), p.get("highWatermark"))
    return out


def wait_all_committed(broker, topic, group, partitions, timeout=30.0):
    seen = {}

    def cond():
        seen["last"] = c = committed_all(broker, topic, group, partitions)
        return len(c) == partitions and all(cm == hw and hw is not None for cm, hw in c.values())

    try:
        wait_for(cond, timeout, 0.2, f"{topic}/{group} committed == high-water mark on every partition")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen.get('last')}") from None
    return seen["last"]


# --------------------------------------------------------------------------------------------
# HAProxy


class HAProxy:
    """A real HAProxy (Debian `haproxy`) in front of broker ports, started with `-db`.
    `ports` may include ports of brokers that are not running yet: their server is DOWN until
    the health checks (GET /readyz every 500 ms, rise 2, fall 2) bring it up."""

    def __init__(self, ports: list[int], balance: str = "leastconn"):
        self.binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(self.binary).exists():
            pytest.fail("haproxy is not installed (apt-get install -y haproxy)", pytrace=False)
        self.ports = list(ports)
        self.balance = balance
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="e2e-haproxy-"))
        self.sock = self.dir / "admin.sock"
        self.cfg = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def server_name(self, i: int) -> str:
        return f"b{i + 1}"

    def config(self) -> str:
        servers = "\n".join(
            f"    server {self.server_name(i)} 127.0.0.1:{p} check inter 500ms fall 2 rise 2"
            for i, p in enumerate(self.ports))
        return f"""global
    maxconn 4096
    stats socket {self.sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 1s
    retries 3
    option redispatch

frontend fe
    bind 127.0.0.1:{self.port}
    default_backend brokers

backend brokers
    balance {self.balance}
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> "HAProxy":
        self.cfg.write_text(self.config())
        check = subprocess.run([self.binary, "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        assert check.returncode == 0, f"haproxy config refused:\n{check.stdout}\n{check.stderr}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-f", str(self.cfg), "-db"], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def listening():
            assert self.proc.poll() is None, f"haproxy exited: {self.log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.sock.exists()
            except OSError:
                return False

        wait_for(listening, 10, 0.05, "haproxy listening")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no haproxy log)"

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """server name -> status ("UP", "DOWN", "UP 1/2", "NOLB", "MAINT", ...)."""
        text = self.command("show stat")
        lines = [ln for ln in text.splitlines() if ln]
        header = lines[0].lstrip("# ").split(",")
        i_px, i_sv, i_st = header.index("pxname"), header.index("svname"), header.index("status")
        out = {}
        for ln in lines[1:]:
            cols = ln.split(",")
            if cols[i_px] == "brokers" and cols[i_sv] not in ("BACKEND", "FRONTEND"):
                out[cols[i_sv]] = cols[i_st]
        return out

    def wait_states(self, want: dict[int, str], timeout: float = 15.0) -> None:
        """Wait until server i (index into `ports`) has status want[i] ("UP" or "DOWN")."""
        seen = {}

        def cond():
            seen["last"] = st = self.server_states()
            return all(st.get(self.server_name(i)) == s for i, s in want.items())

        try:
            wait_for(cond, timeout, 0.1, f"haproxy server states {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen.get('last')}") from None


@pytest.fixture
def make_haproxy():
    started: list[HAProxy] = []

    def factory(ports, balance="leastconn") -> HAProxy:
        h = HAProxy(ports, balance).start()
        started.append(h)
        return h

    yield factory
    for h in started:
        h.stop()
        shutil.rmtree(h.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# consumers and publishers in threads


@dataclass
class Delivery:
    t: float  # time.monotonic() at arrival
    id: str
    partition: int
    offset: int
    attempt: int
    consumer: str


@dataclass
class Tally:
    """Everything a group's consumers received (shared by their threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    deliveries: list[Delivery] = field(default_factory=list)
    first: dict[str, Delivery] = field(default_factory=dict)  # id -> first delivery
    errors: list[dict] = field(default_factory=list)

    def record(self, d: Delivery) -> None:
        with self.lock:
            self.deliveries.append(d)
            self.first.setdefault(d.id, d)

    def distinct(self) -> int:
        with self.lock:
            return len(self.first)

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.first)

    def duplicates(self) -> int:
        with self.lock:
            return len(self.deliveries) - len(self.first)

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


class Consumer(threading.Thread):
    """One group member: subscribes (from earliest), acks every MESSAGE at once, and on any
    connection loss reconnects to `url` (HAProxy) and subscribes again, until stopped."""

    def __init__(self, name: str, url, topic: str, group: str, tally: Tally, max_inflight: int = 64):
        super().__init__(name=name, daemon=True)
        self.url = url
        self.topic = topic
        self.group = group
        self.tally = tally
        self.max_inflight = max_inflight
        self.stopping = threading.Event()
        self.subscribed = threading.Event()
        self.subscribed_at: float | None = None  # monotonic time of the first SUBSCRIBED
        self.subscriptions = 0
        self.reconnects = 0
        self.failures: list[str] = []
        self.conn: WS | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            conn = None
            try:
                conn = WS(self.url() if callable(self.url) else self.url)
                self.conn = conn
                conn.subscribe(self.topic, self.group, from_={"kind": "earliest"},
                               max_inflight=self.max_inflight, timeout=10)
                self.subscriptions += 1
                if self.subscribed_at is None:
                    self.subscribed_at = time.monotonic()
                self.subscribed.set()
                while not self.stopping.is_set():
                    if conn.pending:
                        frame = conn.pending.popleft()
                    else:
                        try:
                            frame = conn._read(0.2)
                        except TimeoutError:
                            continue
                    if frame.get("type") == "MESSAGE":
                        env = frame["envelope"]
                        self.tally.record(Delivery(time.monotonic(), env["id"], frame["partition"],
                                                   frame["offset"], frame.get("attempt", 1), self.name))
                        conn.ack(frame)
                    elif frame.get("type") == "ERROR":
                        with self.tally.lock:
                            self.tally.errors.append(frame)
            except Exception as exc:  # lost connection, refused, 503 from HAProxy, ...
                if self.stopping.is_set():
                    break
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                self.reconnects += 1
                time.sleep(0.2)
            finally:
                if conn is not None:
                    conn.close()
                self.conn = None

    def stop(self) -> None:
        self.stopping.set()

    def drop(self) -> None:
        """Close the current connection (the thread reconnects)."""
        c = self.conn
        if c is not None:
            c.close()


def start_consumers(n, url, topic, group, tally, prefix="c", brokers=None, **kw) -> list[Consumer]:
    """Start `n` consumers one after the other (each subscribed before the next connects, so
    that HAProxy's leastconn spreads them evenly). With `brokers`, each consumer's `replica`
    is set to the replica whose /stats `ownership.connections` went up when it subscribed."""
    out = []
    for i in range(n):
        before = {rid(b): connections(b, topic, group) for b in brokers} if brokers else None
        c = Consumer(f"{prefix}{i + 1}", url, topic, group, tally, **kw)
        c.replica = None
        c.start()
        assert c.subscribed.wait(15), f"consumer {c.name} did not subscribe: {c.failures}"
        if brokers:
            def placed(before=before):
                now = {rid(b): connections(b, topic, group) for b in brokers}
                up = [r for r in now if now[r] > before[r]]
                if len(up) == 1 and sum(now.values()) == sum(before.values()) + 1:
                    return up
                return None

            c.replica = wait_for(placed, 5, 0.05, f"{c.name}'s connection in some replica's /stats")[0]
        out.append(c)
    return out


def stop_all(threads, timeout=5.0) -> None:
    for t in threads:
        t.stop()
    for t in threads:
        t.join(timeout)


def publish_batch(conn: WS, topic: str, batch: list[tuple[str, str | None, object]], timeout: float = 30.0):
    """Pipeline PUBLISH frames with explicit ids; return {rid: reply}. Raises on ERROR or on a
    lost connection."""
    rids = []
    for eid, key, payload in batch:
        r = f"p-{eid}"
        frame = {"type": "PUBLISH", "topic": topic, "payload": payload, "id": eid, "rid": r}
        if key is not None:
            frame["key"] = key
        conn.send(frame)
        rids.append(r)
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(rids):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(got)} of {len(rids)} PUBLISHED within {timeout}s")
        try:
            reply = conn._read(left)
        except TimeoutError:
            continue
        if reply.get("type") == "PUBLISHED":
            got[reply.get("rid")] = reply
        elif reply.get("type") == "ERROR":
            raise RuntimeError(f"PUBLISH failed: {reply}")
    return got


class Publisher(threading.Thread):
    """Publishes `events` [(id, key, payload)] in pipelined batches through `url`; a batch
    whose connection is lost (or that gets an ERROR) is sent again, whole, with the same ids on
    a new connection: the broker stores each id once (idempotent publish). `rate` (events/s)
    paces it."""

    def __init__(self, url, topic, events, batch: int = 200, rate: float | None = None):
        super().__init__(name="publisher", daemon=True)
        self.url = url
        self.topic = topic
        self.events = events
        self.batch = batch
        self.rate = rate
        self.replies: dict[str, dict] = {}  # id -> first PUBLISHED
        self.retries = 0
        self.duplicate_replies = 0
        self.failures: list[str] = []
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = None
        start = time.monotonic()
        try:
            for i in range(0, len(self.events), self.batch):
                chunk = self.events[i:i + self.batch]
                if self.rate:
                    due = start + i / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                attempts = 0
                while True:
                    if self.stopping.is_set():
                        return
                    try:
                        if conn is None:
                            conn = WS(self.url() if callable(self.url) else self.url)
                        got = publish_batch(conn, self.topic, chunk)
                        break
                    except Exception as exc:
                        attempts += 1
                        self.retries += 1
                        self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                        if conn is not None:
                            conn.close()
                            conn = None
                        if attempts > 50:
                            raise
                        time.sleep(0.2)
                for eid, _, _ in chunk:
                    reply = got[f"p-{eid}"]
                    if reply.get("duplicate"):
                        self.duplicate_replies += 1
                    self.replies.setdefault(eid, reply)
                self.published += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            if conn is not None:
                conn.close()
            self.done.set()

    def stop(self) -> None:
        self.stopping.set()


def make_events(run: str, n: int, keys: list[str]) -> list[tuple[str, str, dict]]:
    return [(f"{run}-{i}", keys[i % len(keys)], {"n": i, "k": keys[i % len(keys)]}) for i in range(n)]


# --------------------------------------------------------------------------------------------
# watching the lease and offset collections


class OffsetWatcher(threading.Thread):
    """Polls `group_offsets` (first) and `leases` (second) of (topic, group) with pymongo and
    records every observation, so a test can assert that a group's position never went back,
    that epochs never went back, and that a committed epoch never ran ahead of its lease."""

    def __init__(self, db: str, topic: str, group: str, partitions: int, interval: float = 0.05):
        super().__init__(name="offset-watcher", daemon=True)
        self.db = db
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.interval = interval
        self.stopping = threading.Event()
        self.offsets: dict[int, list[tuple[float, int, int | None]]] = {p: [] for p in range(partitions)}
        self.leases: dict[int, list[tuple[float, str | None, int | None]]] = {p: [] for p in range(partitions)}
        self.ahead: list[str] = []  # group_offsets epoch > lease epoch read after it
        self.errors: list[str] = []

    def lease_id(self, p: int) -> str:
        return f"{self.topic}:{p}:{self.group}"

    def run(self) -> None:
        client = mongo_client()
        try:
            db = client[self.db]
            ids = [self.lease_id(p) for p in range(self.partitions)]
            while not self.stopping.is_set():
                try:
                    t = time.monotonic()
                    offs = {d["partition"]: d for d in db.group_offsets.find(
                        {"topic": self.topic, "group": self.group})}
                    leases = {d["_id"]: d for d in db.leases.find({"_id": {"$in": ids}})}
                    for p in range(self.partitions):
                        o = offs.get(p)
                        lease = leases.get(self.lease_id(p))
                        if o is not None:
                            self.offsets[p].append((t, int(o["lastCommitted"]),
                                                    None if o.get("epoch") is None else int(o["epoch"])))
                        if lease is not None:
                            self.leases[p].append((t, lease.get("owner"), int(lease.get("epoch", 0))))
                        if o is not None and lease is not None and o.get("epoch") is not None \
                                and int(o["epoch"]) > int(lease.get("epoch", 0)):
                            self.ahead.append(f"p{p}: group_offsets epoch {o['epoch']} > lease epoch "
                                              f"{lease.get('epoch')} (owner {lease.get('owner')})")
                except Exception as exc:  # keep watching; reported at the end
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                self.stopping.wait(self.interval)
        finally:
            client.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    def regressions(self) -> list[str]:
        """Every place where a partition's lastCommitted or epoch went down between two polls."""
        bad = []
        for p, seq in self.offsets.items():
            for (t0, c0, e0), (t1, c1, e1) in zip(seq, seq[1:]):
                if c1 < c0:
                    bad.append(f"p{p}: lastCommitted {c0} -> {c1} (epoch {e0} -> {e1})")
                if e0 is not None and e1 is not None and e1 < e0:
                    bad.append(f"p{p}: group_offsets epoch {e0} -> {e1} (lastCommitted {c0} -> {c1})")
        for p, seq in self.leases.items():
            for (t0, o0, e0), (t1, o1, e1) in zip(seq, seq[1:]):
                if e1 < e0:
                    bad.append(f"p{p}: lease epoch {e0} ({o0}) -> {e1} ({o1})")
        return bad

    def lease_history(self, p: int) -> list[tuple[str | None, int]]:
        """Distinct (owner, epoch) of partition p's lease, in the order seen."""
        out = []
        for _, owner, epoch in self.leases[p]:
            if not out or out[-1] != (owner, epoch):
                out.append((owner, epoch))
        return out

    def offset_history(self, p: int) -> list[tuple[int, int | None]]:
        out = []
        for _, c, e in self.offsets[p]:
            if not out or out[-1] != (c, e):
                out.append((c, e))
        return out


# --------------------------------------------------------------------------------------------
# measurements


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest interval without an arrival in [start, end] (arrivals sorted or not)."""
    pts = sorted(t for t in times if start <= t <= end)
    edges = [start] + pts + [end]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
