"""Traffic in threads: group consumers that ack everything and reconnect (through HAProxy)
when their replica dies, a pipelining publisher that resends a lost batch whole with the same
ids (idempotent publish), what they received, and measurements over it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from support.replicas import connections, rid
from support.waits import wait_for
from support.ws import WS


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
# measurements


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest interval without an arrival in [start, end] (arrivals sorted or not)."""
    pts = sorted(t for t in times if start <= t <= end)
    edges = [start] + pts + [end]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
