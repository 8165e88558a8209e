"""Several `stream-broker` replicas on one MongoDB database (SPEC §7): their environment,
readers of their `/stats` ownership, of the audit topic and of the committed offsets, waits
for the contract's spread of partitions, and a watcher of the `leases` / `group_offsets`
collections.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

from support.broker import Broker
from support.mongo import mongo_client
from support.waits import wait_for

LEASE_TTL_MS = 2000


def url_forms(db: str) -> tuple[str, str]:
    """The session's MongoDB in two forms users paste: `mongodb://host:port/` (trailing slash,
    the database in MONGO_DB) and `mongodb://host:port/DB` (the database in the path, MONGO_DB
    unset). Options of MONGO_URL are kept when it names several hosts."""
    match = re.match(r"^(mongodb(?:\+srv)?://[^/?]+)/?[^?]*(\?.*)?$", os.environ["MONGO_URL"])
    assert match, os.environ["MONGO_URL"]
    prefix, query = match.group(1), match.group(2) or ""
    if "," not in prefix:
        query = ""
    return f"{prefix}/{query}", f"{prefix}/{db}{query}"


def replica_env(db: str, replica_id: str, **extra) -> dict:
    """Odd replicas (r1, r3, …) get `mongodb://host:port/` and MONGO_DB; even ones the database
    in the URI's path and no MONGO_DB: both forms share one database."""
    slash, path = url_forms(db)
    odd = int(re.sub(r"\D", "", replica_id) or "1") % 2 == 1
    env = {
        "MONGO_URL": slash if odd else path,
        "MONGO_DB": db if odd else "",
        "BUS_REPLICA_ID": replica_id,
        "BUS_LEASE_TTL_MS": str(LEASE_TTL_MS),
        "BUS_METRICS_INTERVAL_MS": "0",  # less load on the (slow) double
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def new_broker(make_broker, env: dict, port: int | None = None, start: bool = True) -> Broker:
    """A broker managed (logs on failure, stopped at teardown) by the `make_broker` factory,
    optionally on a port chosen in advance (HAProxy slots declared before the broker runs)."""
    return make_broker.add(env, port=port, start=start, name="replica")


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
