"""The outbox drain (SPEC §1, §7): a service inserts rows `{topic, key?, headers?, payload,
createdTs}` into an outbox collection of its own database; the broker replica that holds the
`job:outbox:DB.COLL` lease turns each row into one event (`id = str(_id)`, in `createdTs, _id`
order) and deletes the row. Rows of a bad shape go to `DB.outbox_rejects` and block nothing.

Real processes: `stream-broker` replicas with BUS_OUTBOX, the MongoDB double (or the server in
MONGO_URL), and a pymongo writer thread.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest

from support.mongo import fail_point, mongo_client, store_mode
from support.names import partition_for, unique
from support.replicas import LEASE_TTL_MS, new_broker, replica_env, rid
from support.waits import now_ms, wait_for

pytestmark = pytest.mark.skipif(store_mode() != "mongo", reason="the outbox needs the MongoDB store")

TTL_S = LEASE_TTL_MS / 1000


class Writer(threading.Thread):
    """Inserts `total` outbox rows (keys k0..k19, payload {seq, key}) in small batches, paced
    at `rate` rows/s, the way many service transactions would."""

    def __init__(self, shop_db: str, topic: str, total: int, rate: float, batch: int = 20):
        super().__init__(name="outbox-writer", daemon=True)
        self.shop_db, self.topic, self.total, self.rate, self.batch = shop_db, topic, total, rate, batch
        self.ids: list = []  # ObjectIds in insertion order
        self.written = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with mongo_client() as client:
                coll = client[self.shop_db].outbox
                start = time.monotonic()
                for i in range(0, self.total, self.batch):
                    if self.stopping.is_set():
                        return
                    delay = start + i / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    rows = []
                    for n in range(i, min(i + self.batch, self.total)):
                        key = f"k{n % 20}"
                        rows.append({"topic": self.topic, "key": key, "payload": {"seq": n, "key": key},
                                     "createdTs": now_ms()})
                    res = coll.insert_many(rows, ordered=True)
                    self.ids.extend(res.inserted_ids)
                    self.written += len(rows)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def job_lease(db, name: str) -> dict | None:
    return db.leases.find_one({"_id": f"job:outbox:{name}"})


def test_outbox_kill9_exactly_once(make_broker):
    """Two replicas drain one outbox while a writer inserts 10,000 rows. Mid-way, with the
    server refusing deletes (so the drainer has stored events whose rows are still there), the
    replica holding the `job:outbox:…` lease is killed with SIGKILL; the other takes the lease
    over (higher epoch) and drains the rest. At the end the outbox is empty, nothing was
    rejected, and every row is exactly one event: 10,000 events, ids unique and equal to the
    rows' `_id`s, each key in one partition with its `seq`s in the writer's order by offset."""
    db_name = f"bus_e2e_ob_{uuid.uuid4().hex[:10]}"
    shop = f"shop_{uuid.uuid4().hex[:10]}"
    outbox = f"{shop}.outbox"
    topic = unique("ob")
    brokers = [new_broker(make_broker, replica_env(db_name, "r1", BUS_OUTBOX=outbox))]
    brokers[0].create_topic(topic, partitions=4)  # before r2 starts: r2 reads it at its start
    brokers.append(new_broker(make_broker, replica_env(db_name, "r2", BUS_OUTBOX=outbox)))
    total = 10_000
    client = mongo_client()
    writer = Writer(shop, topic, total, rate=1000)
    fp_on = False
    try:
        db, sdb = client[db_name], client[shop]
        writer.start()
        wait_for(lambda: job_lease(db, outbox), 15 * TTL_S, 0.05, "a job:outbox lease")
        wait_for(lambda: db.events.count_documents({"topic": topic}) >= 3000, 60, 0.2, "3000 rows drained")

        # the crash window: events stored, rows not yet deleted
        fail_point(client, "alwaysOn", {"failCommands": ["delete"], "errorCode": 1})
        fp_on = True
        t0 = time.monotonic()

        def stored_not_deleted():
            head = [r["_id"] for r in sdb.outbox.find({}, {"_id": 1}).sort([("createdTs", 1), ("_id", 1)]).limit(200)]
            return db.events.count_documents({"topic": topic, "id": {"$in": [str(i) for i in head]}})

        window = 0
        try:
            window = wait_for(stored_not_deleted, 3, 0.1, "events stored for rows not yet deleted")
        except AssertionError:
            pass  # reported below; the result must be exactly-once either way
        lease = job_lease(db, outbox)
        victim = next(b for b in brokers if rid(b) == lease["owner"])
        survivor = next(b for b in brokers if b is not victim)
        victim.kill9()
        fired = fail_point(client, "off")
        fp_on = False
        drained_at_kill = db.events.count_documents({"topic": topic})
        print(f"\nkilled the drainer {rid(victim)} (lease epoch {lease['epoch']}) "
              f"{time.monotonic() - t0:.1f}s after refusing deletes ({fired} refused): "
              f"{drained_at_kill} events, {writer.written} rows written, "
              f"{window} rows in the crash window")

        assert window > 0 and fired >= 1, (
            "the kill never hit the window between an event's insert and its row's delete "
            f"(deletes refused: {fired}, rows with their event already stored: {window})")

        taken = wait_for(lambda: (lambda d: d if d and d["owner"] == rid(survivor) and d["epoch"] > lease["epoch"]
                                  else None)(job_lease(db, outbox)), 15 * TTL_S, 0.05, "the survivor taking the lease")
        print(f"{rid(survivor)} took the lease (epoch {taken['epoch']}) "
              f"{time.monotonic() - t0:.1f}s after deletes were refused")

        writer.join(60)
        assert not writer.is_alive() and writer.error is None, writer.error
        assert writer.written == total
        wait_for(lambda: sdb.outbox.count_documents({}) == 0, 90, 0.3, "the outbox drained")
        assert sdb.outbox_rejects.count_documents({}) == 0, list(sdb.outbox_rejects.find().limit(3))

        evs = list(db.events.find({"topic": topic}, {"_id": 0, "id": 1, "partition": 1, "offset": 1,
                                                     "key": 1, "payload": 1}))
        ids = collections.Counter(e["id"] for e in evs)
        dup = [i for i, n in ids.items() if n > 1]
        assert not dup, f"{len(dup)} rows became more than one event: {dup[:5]}"
        assert len(evs) == total, f"{len(evs)} events for {total} rows"
        assert set(ids) == {str(i) for i in writer.ids}
        by_id = {str(i): n for n, i in enumerate(writer.ids)}
        assert all(by_id[e["id"]] == e["payload"]["seq"] for e in evs)

        by_key = collections.defaultdict(list)
        for e in sorted(evs, key=lambda e: (e["partition"], e["offset"])):
            assert e["key"] == e["payload"]["key"], e
            assert e["partition"] == partition_for(e["key"], 4), e
            by_key[e["key"]].append(e["payload"]["seq"])
        for key, seqs in by_key.items():
            assert seqs == sorted(seqs), f"{key}: out of order, e.g. {[s for a, s in zip(seqs, seqs[1:]) if s < a][:5]}"
        offsets = collections.defaultdict(list)
        for e in evs:
            offsets[e["partition"]].append(e["offset"])
        print(f"events per partition: { {p: len(v) for p, v in sorted(offsets.items())} }; "
              f"offsets contiguous: { {p: sorted(v) == list(range(1, len(v) + 1)) for p, v in sorted(offsets.items())} }")
    finally:
        writer.stopping.set()
        if fp_on:
            fail_point(client, "off")
        client.close()


def test_outbox_rejects_bad_rows(make_broker):
    """Rows without a topic, with an invalid topic name, a topic that is not a string, without
    a payload, with a non-string header or headers that are not an object, or beyond the id,
    key or header limits of every other way in move to
    `outbox_rejects` as {_id, row, reason, rejectedTs}; the good rows between them become
    events in order (id = str(_id), key, headers and payload as written), and the outbox is
    left empty."""
    from bson import ObjectId

    db_name = f"bus_e2e_obr_{uuid.uuid4().hex[:10]}"
    shop = f"shop_{uuid.uuid4().hex[:10]}"
    broker = new_broker(make_broker, replica_env(db_name, "r1", BUS_OUTBOX=f"{shop}.outbox"))
    topic = unique("obr")
    ts = now_ms()

    def good(n):
        return {"topic": topic, "key": f"k{n}", "headers": {"h": f"v{n}"}, "payload": {"good": n}}

    bad = {
        "no topic": {"key": "x", "payload": {"bad": 1}},
        "bad topic name": {"topic": "bad topic!", "payload": {"bad": 2}},
        "topic not a string": {"topic": 42, "payload": {"bad": 3}},
        "no payload": {"topic": topic, "key": "x"},
        "header not a string": {"topic": topic, "headers": {"x": 1}, "payload": {"bad": 5}},
        "headers not an object": {"topic": topic, "headers": "nope", "payload": {"bad": 6}},
        # The limits every way in applies (one validation): ids, keys and headers.
        "id too long": {"_id": "i" * 201, "topic": topic, "payload": {"bad": 7}},
        "key too long": {"topic": topic, "key": "k" * 1025, "payload": {"bad": 8}},
        "header value too long": {"topic": topic, "headers": {"h": "v" * 4097}, "payload": {"bad": 9}},
    }
    rows, good_rows, bad_rows = [], [], {}
    n = 0
    for what, row in bad.items():
        g = good(n)
        n += 1
        rows += [g, row]
        good_rows.append(g)
        bad_rows[what] = row
    g = good(n)
    rows.append(g)
    good_rows.append(g)
    for i, row in enumerate(rows):
        row.setdefault("_id", ObjectId())
        row["createdTs"] = ts + i

    with mongo_client() as client:
        sdb = client[shop]
        sdb.outbox.insert_many(rows)
        wait_for(lambda: sdb.outbox.count_documents({}) == 0, 20, 0.1, "the outbox drained")
        rejects = {r["_id"]: r for r in sdb.outbox_rejects.find()}
        events = list(client[db_name].events.find({"topic": topic}).sort("offset", 1))

    assert len(rejects) == len(bad_rows), [(r["_id"], r.get("reason")) for r in rejects.values()]
    for what, row in bad_rows.items():
        rej = rejects.get(row["_id"])
        assert rej is not None, f"row with {what} not in outbox_rejects"
        stored = {k: v for k, v in rej["row"].items() if k != "_id"}
        assert stored == {k: v for k, v in row.items() if k != "_id"}, (what, rej)
        assert isinstance(rej.get("reason"), str) and rej["reason"], (what, rej)
        assert isinstance(rej.get("rejectedTs"), int) and rej["rejectedTs"] >= ts - 5000, (what, rej)
        print(f"{what}: {rej['reason']}")

    assert [e["id"] for e in events] == [str(r["_id"]) for r in good_rows]
    assert [e["offset"] for e in events] == list(range(1, len(good_rows) + 1))
    for e, r in zip(events, good_rows):
        assert (e["key"], e.get("headers"), e["payload"]) == (r["key"], r["headers"], r["payload"]), e
    # the HTTP view agrees
    over_http = broker.read_all_events(topic)
    assert [(e["id"], e["payload"], e.get("headers")) for e in over_http] == [
        (str(r["_id"]), r["payload"], r["headers"]) for r in good_rows]
