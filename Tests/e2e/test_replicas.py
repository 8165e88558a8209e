"""Several replicas on one MongoDB database behind a real HAProxy (SPEC §7): the partitions of a
group spread over the replicas that have members of it, a killed replica's partitions are taken
over from the committed watermark, a paused replica is fenced off by the lease epoch, and a new
replica takes its share.

Real processes throughout: `stream-broker` replicas (BUS_LEASE_TTL_MS=2000), Debian's HAProxy
(leastconn, health checks on /readyz), the MongoDB double (or the server in MONGO_URL), and
WebSocket consumers in threads that reconnect through HAProxy when their connection is lost.
Each test prints what it measured (duplicates, stalls, rebalance times); run with `-s` to see.
Those times are printed, not asserted: waits have generous deadlines, and how fast a takeover
or a rebalance is belongs in a benchmark.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import uuid

import pytest

from support.audit import audit
from support.load import Publisher, Tally, dump, make_events, max_gap, publish_batch, start_consumers, stop_all
from support.mongo import mongo_client, store_mode
from support.names import keys_for_partitions, partition_for, unique
from support.net import free_port
from support.replicas import (
    LEASE_TTL_MS,
    OffsetWatcher,
    connections,
    delivered,
    new_broker,
    owned,
    owned_epochs,
    ownership_map,
    replica_env,
    rid,
    start_replicas,
    wait_all_committed,
    wait_spread,
)
from support.waits import wait_for

pytestmark = pytest.mark.skipif(store_mode() != "mongo", reason="replicas need the MongoDB store")

PARTITIONS = 4
GROUP = "workers"
TTL_S = LEASE_TTL_MS / 1000


def three_behind_haproxy(make_broker, make_haproxy, topic: str):
    """Replicas r1, r2, r3 on one new database (`topic` created with 4 partitions on r1 before
    r2 and r3 start), HAProxy (leastconn) in front with all three UP."""
    db, brokers = start_replicas(make_broker, 3, topics={topic: PARTITIONS})
    hap = make_haproxy([b.port for b in brokers])
    hap.wait_states({0: "UP", 1: "UP", 2: "UP"})
    return db, brokers, hap


def lease_docs(db: str, topic: str, group: str = GROUP) -> dict[int, dict]:
    with mongo_client() as client:
        docs = {d["_id"]: d for d in client[db].leases.find(
            {"_id": {"$in": [f"{topic}:{p}:{group}" for p in range(PARTITIONS)]}})}
    return {p: docs[f"{topic}:{p}:{group}"] for p in range(PARTITIONS) if f"{topic}:{p}:{group}" in docs}


def partition_counts(replies: dict) -> collections.Counter:
    return collections.Counter(r["partition"] for r in replies.values())


# --------------------------------------------------------------------------------------------
# 0. a topic created on one replica is the same topic on all


def test_topic_created_on_one_replica_is_seen_by_all(make_broker):
    """`POST /topics` with 4 partitions on r1 while r2 and r3 run: r2 and r3 report 4
    partitions too, a keyed publish through r2 lands in the key's partition of 4, and the
    stored config keeps its 4 partitions (no replica shrinks it back to one). Growing it to 6
    on r3 reaches r1 and r2 as well."""
    db, brokers = start_replicas(make_broker, 3)
    topic = unique("cfg")

    def wait_partitions(b, n):
        seen = []

        def cond():
            status, body = b.http("GET", f"/topics/{topic}")
            seen.append((status, body))
            return status == 200 and len(body["partitions"]) == n

        try:
            wait_for(cond, 5, 0.1, f"{topic} with {n} partitions on {rid(b)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last GET /topics/{topic}: {seen[-1]}") from None

    brokers[0].create_topic(topic, partitions=PARTITIONS)
    for b in brokers[1:]:
        wait_partitions(b, PARTITIONS)
    key = keys_for_partitions(PARTITIONS, 1)[3]
    with brokers[1].ws() as conn:
        reply = conn.publish(topic, {"k": key}, key=key)
    assert reply["partition"] == partition_for(key, PARTITIONS) == 3, reply
    with mongo_client() as client:
        stored = client[db].topic_configs.find_one({"topic": topic})
    assert stored["partitions"] == PARTITIONS, stored

    brokers[2].create_topic(topic, partitions=6)
    for b in brokers[:2]:
        wait_partitions(b, 6)


# --------------------------------------------------------------------------------------------
# 1. the work spreads over three replicas


def test_work_spreads_over_three_replicas(make_broker, make_haproxy):
    """Six members of one group connect through HAProxy and land 2/2/2 on three replicas; the
    four partitions are owned as the contract spreads them (p -> sorted(replicas)[p % 3]), each
    by one replica; 2,000 keyed events published through HAProxy are all delivered and acked,
    each consumer gets only partitions its replica owns, every replica delivers (its /stats
    `delivered` equals the events of its partitions it sent), and the group commits to the end."""
    topic = unique("spread")
    db, brokers, hap = three_behind_haproxy(make_broker, make_haproxy, topic)
    tally = Tally()
    consumers = start_consumers(6, hap.ws_url, topic, GROUP, tally, brokers=brokers)
    try:
        per_replica = {rid(b): connections(b, topic, GROUP) for b in brokers}
        print(f"\nconnections per replica: {per_replica}; "
              f"placement: {[(c.name, c.replica) for c in consumers]}")
        assert all(n >= 1 for n in per_replica.values()), per_replica
        assert sum(per_replica.values()) == 6, per_replica

        want = wait_spread(brokers, topic, GROUP, PARTITIONS)
        assert want == {"r1": [0, 3], "r2": [1], "r3": [2]}
        epochs = {rid(b): owned_epochs(b, topic, GROUP) for b in brokers}
        leases = lease_docs(db, topic)
        for b in brokers:
            for p in want[rid(b)]:
                assert leases[p]["owner"] == rid(b), (p, leases[p])
                assert epochs[rid(b)].get(p) == leases[p]["epoch"], (rid(b), p, epochs, leases[p])

        keys = keys_for_partitions(PARTITIONS, 5)
        events = make_events(uuid.uuid4().hex[:8], 2000, keys)
        pub = Publisher(hap.ws_url, topic, events, batch=250)
        pub.start()
        pub.join(120)
        assert pub.done.is_set() and pub.error is None, (pub.error, pub.failures[-5:])
        assert len(pub.replies) == 2000 and pub.retries == 0, (len(pub.replies), pub.failures[-5:])
        per_partition = partition_counts(pub.replies)
        assert sorted(per_partition) == list(range(PARTITIONS)), per_partition

        wait_for(lambda: tally.distinct() >= 2000, 90, 0.1, "2000 distinct events delivered")
        assert tally.ids() == {e[0] for e in events}
        committed = wait_all_committed(brokers[0], topic, GROUP, PARTITIONS)
        assert {p: c for p, (c, _) in committed.items()} == dict(per_partition), committed

        # each consumer only got partitions its replica owns
        place = {c.name: c.replica for c in consumers}
        wrong = [(d.consumer, place[d.consumer], d.partition) for d in tally.snapshot()
                 if d.partition not in want[place[d.consumer]]]
        assert not wrong, f"deliveries of partitions the consumer's replica does not own: {wrong[:10]}"

        # every replica delivered: exactly the MESSAGEs the consumers received from it
        received = collections.Counter(place[d.consumer] for d in tally.snapshot())
        wait_for(lambda: {rid(b): delivered(b, topic) for b in brokers} == dict(received), 5, 0.1,
                 f"/stats delivered per replica == {dict(received)}")
        counts = {rid(b): delivered(b, topic) for b in brokers}
        for r, parts in want.items():
            assert counts[r] >= sum(per_partition[p] for p in parts) > 0, (r, counts, per_partition)
        print(f"delivered per replica: {counts}; events per partition: {dict(per_partition)}; "
              f"duplicates: {tally.duplicates()}")
        assert ownership_map(brokers, topic, GROUP) == want  # nothing moved under steady traffic
        assert not tally.errors, tally.errors[:5]
    finally:
        stop_all(consumers)


# --------------------------------------------------------------------------------------------
# 2. kill -9 a replica in the middle of the traffic


def test_kill9_replica_during_traffic(make_broker, make_haproxy):
    """20,000 events published through HAProxy (pipelined batches with ids, resent whole on a
    lost connection) while six members consume and ack; r1 (owner of p0 and p3, and the
    publisher's replica) is killed with SIGKILL when 40 % are consumed. Its members reconnect
    through HAProxy, r2 and r3 take its partitions (higher lease epochs, lease.acquired audit
    records) and resume from the committed watermarks: deliveries of each of its partitions
    resume after the kill, every event is acked, and the group commits to the end. (The
    longest delivery stall after the kill is printed.)"""
    topic = unique("kill9")
    db, brokers, hap = three_behind_haproxy(make_broker, make_haproxy, topic)
    total = 20_000
    tally = Tally()
    consumers = start_consumers(6, hap.ws_url, topic, GROUP, tally, max_inflight=100)
    pub = None
    try:
        want = wait_spread(brokers, topic, GROUP, PARTITIONS)
        before = lease_docs(db, topic)
        victim, survivors = brokers[0], brokers[1:]
        victim_parts = want[rid(victim)]

        keys = keys_for_partitions(PARTITIONS, 5)
        events = make_events(uuid.uuid4().hex[:8], total, keys)
        pub = Publisher(hap.ws_url, topic, events, batch=500)
        started = time.monotonic()
        pub.start()
        wait_for(lambda: tally.distinct() >= total * 2 // 5, 120, 0.05, f"{total * 2 // 5} events consumed")
        published_at_kill = pub.published
        kill_t = time.monotonic()
        victim.kill9()
        print(f"\nkilled {rid(victim)} (partitions {victim_parts}) {kill_t - started:.1f}s in: "
              f"{tally.distinct()} consumed, {published_at_kill} published")

        want2 = wait_spread(survivors, topic, GROUP, PARTITIONS, timeout=10 * TTL_S)
        takeover_s = time.monotonic() - kill_t
        # the killed replica's partitions are served again, by the survivors
        wait_for(lambda: all(any(d.partition == p and d.t > kill_t for d in tally.snapshot())
                             for p in victim_parts),
                 120, 0.1, f"deliveries of partitions {victim_parts} after the kill")

        pub.join(180)
        assert pub.done.is_set() and pub.error is None, (pub.error, pub.failures[-5:])
        assert len(pub.replies) == total
        wait_for(lambda: tally.distinct() >= total, 180, 0.1, f"all {total} events consumed")
        assert tally.ids() == {e[0] for e in events}
        committed = wait_all_committed(survivors[0], topic, GROUP, PARTITIONS, timeout=30)
        per_partition = partition_counts(pub.replies)
        # offsets reserved by the killed replica and never written are holes, skipped after the
        # gap timeout: the high-water marks may exceed the events, never fall short of them
        holes = {p: hw - per_partition[p] for p, (_, hw) in committed.items()}
        assert all(h >= 0 for h in holes.values()), (committed, per_partition)

        deliveries = tally.snapshot()
        firsts = dict(tally.first)
        done_t = max(d.t for d in firsts.values())
        stall = max_gap([d.t for d in deliveries], kill_t, done_t)
        per_p = {}
        for p in range(PARTITIONS):
            end_p = max((d.t for d in firsts.values() if d.partition == p), default=kill_t)
            if end_p > kill_t:
                per_p[p] = round(max_gap([d.t for d in deliveries if d.partition == p], kill_t, end_p), 3)
        dups = len(deliveries) - len(firsts)
        redelivered = sum(1 for d in deliveries if d.attempt > 1)
        reconnects = {c.name: c.reconnects for c in consumers}
        print(f"takeover (survivors own {want2}) {takeover_s:.2f}s after the kill; "
              f"all consumed {done_t - started:.1f}s after the first publish")
        print(f"duplicate deliveries: {dups} ({redelivered} with attempt > 1); publisher resent "
              f"{pub.retries} batch(es), {pub.duplicate_replies} duplicate PUBLISHED")
        print(f"longest stall after the kill: group {stall:.2f}s; per partition {per_p}; "
              f"consumer reconnects {reconnects}; holes left by the kill {holes}")

        after = lease_docs(db, topic)
        for p in victim_parts:
            assert after[p]["owner"] in {rid(b) for b in survivors}, after[p]
            assert after[p]["epoch"] > before[p]["epoch"], (before[p], after[p])
        acquired = audit(survivors[0], ("lease.acquired",), topic)
        for p in victim_parts:
            assert any(a.get("partition") == p and a.get("group") == GROUP
                       and a.get("replica") in {rid(b) for b in survivors}
                       and a.get("epoch", 0) > before[p]["epoch"] for a in acquired), \
                f"no lease.acquired of p{p} by a survivor: {dump(acquired)}"
        assert not tally.errors, tally.errors[:5]
    finally:
        if pub is not None:
            pub.stop()
        stop_all(consumers)


# --------------------------------------------------------------------------------------------
# 3. SIGSTOP: a paused replica is fenced off


def test_sigstop_replica_is_fenced(make_broker, make_haproxy):
    """The owner of p0 is paused (SIGSTOP) while a publisher (on another replica) keeps
    publishing and its members keep acking what reached them, until another replica has taken
    p0 with a higher epoch, and for at least 3 x TTL. After SIGCONT the paused replica gives
    p0 up (its /stats stops listing it at the old epoch; a lease.lost audit record), none of
    its late commits lands: polled all along, every partition's lastCommitted and epoch never
    go down and a committed epoch never runs ahead of its lease; at the end every event is
    acked, the group commits to the end, and each group_offsets epoch is its lease's epoch."""
    topic = unique("fence")
    db, brokers, hap = three_behind_haproxy(make_broker, make_haproxy, topic)
    watcher = OffsetWatcher(db, topic, GROUP, PARTITIONS)
    watcher.start()
    tally = Tally()
    consumers = start_consumers(6, hap.ws_url, topic, GROUP, tally, max_inflight=100)
    pub = None
    victim = None
    try:
        wait_spread(brokers, topic, GROUP, PARTITIONS)
        lease0 = lease_docs(db, topic)[0]
        victim = next(b for b in brokers if rid(b) == lease0["owner"])
        others = [b for b in brokers if b is not victim]
        epoch0 = lease0["epoch"]

        keys = keys_for_partitions(PARTITIONS, 5)
        total = 4000
        events = make_events(uuid.uuid4().hex[:8], total, keys)
        pub = Publisher(others[-1].ws_url, topic, events, batch=40, rate=400)  # ~10 s of traffic
        pub.start()
        wait_for(lambda: tally.distinct() >= 600, 60, 0.05, "600 events consumed")

        stop_t = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGSTOP)
        try:
            taken = wait_for(lambda: (lambda d: d if d["owner"] != rid(victim) and d["epoch"] > epoch0 else None)(
                lease_docs(db, topic)[0]), 30 * TTL_S, 0.05, "p0's lease taken from the paused replica")
            taken_s = time.monotonic() - stop_t
            time.sleep(max(0.0, stop_t + 3 * TTL_S - time.monotonic()))
        finally:
            os.kill(victim.proc.pid, signal.SIGCONT)
        cont_t = time.monotonic()
        print(f"\n{rid(victim)} paused {cont_t - stop_t:.1f}s; p0 taken by {taken['owner']} "
              f"(epoch {epoch0} -> {taken['epoch']}) {taken_s:.2f}s after SIGSTOP")

        # the paused replica gives p0 up: never again listed with its old epoch
        seen = []

        def gave_up():
            ep = owned_epochs(victim, topic, GROUP)
            seen.append((0 in owned(victim, topic, GROUP), ep.get(0)))
            return 0 not in owned(victim, topic, GROUP) or (ep.get(0) is not None and ep[0] > epoch0)

        wait_for(gave_up, 30 * TTL_S, 0.02, f"{rid(victim)} giving p0 (epoch {epoch0}) up")
        print(f"{rid(victim)} gave p0 up {time.monotonic() - cont_t:.2f}s after SIGCONT "
              f"(first /stats after SIGCONT: {seen[0]})")

        pub.join(120)
        assert pub.done.is_set() and pub.error is None, (pub.error, pub.failures[-5:])
        wait_for(lambda: tally.distinct() >= total, 120, 0.1, f"all {total} events consumed")
        assert tally.ids() == {e[0] for e in events}
        wait_spread(brokers, topic, GROUP, PARTITIONS, timeout=10 * TTL_S)

        # a final round on every partition, so that each current owner has committed
        with others[0].ws() as conn:
            tail = make_events("tail-" + uuid.uuid4().hex[:6], 40, keys)
            publish_batch(conn, topic, tail)
        wait_for(lambda: tally.distinct() >= total + 40, 60, 0.1, "the final round consumed")
        committed = wait_all_committed(others[0], topic, GROUP, PARTITIONS)
        time.sleep(0.5)  # a few more polls of the watcher after the last commits
        watcher.stop()

        bad = watcher.regressions()
        assert not bad, "group position or epoch went back:\n" + "\n".join(bad[:20])
        assert not watcher.ahead, "committed epoch ahead of the lease:\n" + "\n".join(watcher.ahead[:20])
        assert not watcher.errors, watcher.errors[:5]
        leases = lease_docs(db, topic)
        with mongo_client() as client:
            offs = {d["partition"]: d for d in client[db].group_offsets.find({"topic": topic, "group": GROUP})}
        for p in range(PARTITIONS):
            assert offs[p]["lastCommitted"] == committed[p][0], (p, offs[p], committed)
            assert offs[p].get("epoch") == leases[p]["epoch"], (p, offs[p], leases[p])
        print(f"p0 lease history: {watcher.lease_history(0)}")
        print(f"p0 (lastCommitted, epoch) history: {watcher.offset_history(0)[:3]} ... "
              f"{watcher.offset_history(0)[-3:]}")
        print(f"duplicate deliveries: {tally.duplicates()}")

        moves = audit(others[0], ("lease.acquired", "lease.released", "lease.lost"), topic)
        p0 = [(m["kind"], m.get("replica"), m.get("epoch")) for m in moves if m.get("partition") == 0
              and m.get("group") == GROUP]
        print(f"p0 audit: {p0}")
        assert ("lease.lost", rid(victim), epoch0) in p0, \
            f"no lease.lost of p0 at epoch {epoch0} by {rid(victim)}: {p0}"
        assert ("lease.acquired", taken["owner"], taken["epoch"]) in p0, p0
        refused = [ln for ln in victim.log_path.read_text(errors="replace").splitlines() if "fenced" in ln]
        print(f"{rid(victim)}'s log on fencing: {refused[:4] or 'nothing (no late commit was pending)'}")
        assert not tally.errors, tally.errors[:5]
    finally:
        if victim is not None and victim.running:
            os.kill(victim.proc.pid, signal.SIGCONT)
        if watcher.is_alive():
            watcher.stop()
        if pub is not None:
            pub.stop()
        stop_all(consumers)


# --------------------------------------------------------------------------------------------
# 4. a replica added while traffic flows takes its share


def test_replica_added_takes_a_share(make_broker, make_haproxy):
    """r1 and r2 serve a group of four (through HAProxy, whose third server slot is DOWN) while
    events flow; r3 starts, HAProxy brings it UP, two more members connect through HAProxy and
    land on r3, which then owns its share (p2; r1 gets p3 back from r2) through released and
    acquired leases. No event is lost: all are acked and the group commits to the end. Prints
    how long the rebalance took from r3's first subscriber."""
    db = f"bus_e2e_rep_{uuid.uuid4().hex[:10]}"
    r3_port = free_port()
    topic = unique("grow")
    _, brokers = start_replicas(make_broker, 2, db=db, topics={topic: PARTITIONS})
    hap = make_haproxy([brokers[0].port, brokers[1].port, r3_port])
    hap.wait_states({0: "UP", 1: "UP", 2: "DOWN"})
    tally = Tally()
    consumers = start_consumers(4, hap.ws_url, topic, GROUP, tally, max_inflight=100)
    pub = None
    try:
        assert [connections(b, topic, GROUP) for b in brokers] == [2, 2]
        before = wait_spread(brokers, topic, GROUP, PARTITIONS)
        assert before == {"r1": [0, 2], "r2": [1, 3]}
        leases_before = lease_docs(db, topic)

        keys = keys_for_partitions(PARTITIONS, 5)
        total = 4000
        events = make_events(uuid.uuid4().hex[:8], total, keys)
        pub = Publisher(hap.ws_url, topic, events, batch=40, rate=400)  # ~10 s of traffic
        pub.start()
        wait_for(lambda: tally.distinct() >= 800, 60, 0.05, "800 events consumed")

        r3 = new_broker(make_broker, replica_env(db, "r3"), port=r3_port)
        hap.wait_states({2: "UP"})
        owned_at: dict[str, float] = {}
        polling = threading.Event()

        def poll_r3():  # when r3 first lists a partition (20 ms resolution)
            while not polling.is_set() and "t" not in owned_at:
                try:
                    if owned(r3, topic, GROUP):
                        owned_at["t"] = time.monotonic()
                except Exception:  # noqa: BLE001 - the wait below reports
                    pass
                time.sleep(0.02)

        poller = threading.Thread(target=poll_r3, daemon=True)
        poller.start()
        more = start_consumers(2, hap.ws_url, topic, GROUP, tally, prefix="n", max_inflight=100)
        consumers += more
        wait_for(lambda: connections(r3, topic, GROUP) == 2, 20, 0.05, "both new members on r3")
        first_sub = min(c.subscribed_at for c in more)

        try:
            wait_for(lambda: "t" in owned_at, 10 * TTL_S, 0.02, "r3 owning a partition")
        finally:
            polling.set()
        first_owned_s = owned_at["t"] - first_sub
        after = wait_spread(brokers + [r3], topic, GROUP, PARTITIONS, timeout=10 * TTL_S)
        settled_s = time.monotonic() - first_sub
        assert after == {"r1": [0, 3], "r2": [1], "r3": [2]}
        print(f"\nrebalance: r3 owned its first partition {first_owned_s:.2f}s after its first "
              f"subscriber; spread {after} settled after {settled_s:.2f}s "
              f"({pub.published} of {total} published by then)")

        pub.join(120)
        assert pub.done.is_set() and pub.error is None, (pub.error, pub.failures[-5:])
        wait_for(lambda: tally.distinct() >= total, 120, 0.1, f"all {total} events consumed")
        assert tally.ids() == {e[0] for e in events}
        committed = wait_all_committed(r3, topic, GROUP, PARTITIONS)
        per_partition = partition_counts(pub.replies)
        assert {p: c for p, (c, _) in committed.items()} == dict(per_partition), committed
        print(f"duplicate deliveries: {tally.duplicates()}; delivered per replica: "
              f"{ {rid(b): delivered(b, topic) for b in brokers + [r3]} }")
        assert delivered(r3, topic) > 0

        leases_after = lease_docs(db, topic)
        assert leases_after[2]["owner"] == "r3" and leases_after[2]["epoch"] > leases_before[2]["epoch"]
        assert leases_after[3]["owner"] == "r1" and leases_after[3]["epoch"] > leases_before[3]["epoch"]
        moves = audit(r3, ("lease.acquired", "lease.released", "lease.lost"), topic)
        by_p = {p: [(m["kind"], m.get("replica")) for m in moves if m.get("partition") == p
                    and m.get("group") == GROUP] for p in range(PARTITIONS)}
        print("lease moves: " + "; ".join(
            f"p{p}: " + ", ".join(f"{m['kind'][6:]} {m.get('replica')}@{m.get('epoch')}" for m in moves
                                  if m.get("partition") == p and m.get("group") == GROUP)
            for p in range(PARTITIONS)))
        for p, r_old, r_new in ((2, "r1", "r3"), (3, "r2", "r1")):
            rel = [m["epoch"] for m in moves if m.get("partition") == p and m["kind"] == "lease.released"
                   and m.get("replica") == r_old]
            acq = [m["epoch"] for m in moves if m.get("partition") == p and m["kind"] == "lease.acquired"
                   and m.get("replica") == r_new]
            assert rel and acq and max(acq) > max(rel), (p, rel, acq)
        assert ("lease.released", "r1") in by_p[2] and ("lease.acquired", "r3") in by_p[2], by_p
        assert ("lease.released", "r2") in by_p[3] and ("lease.acquired", "r1") in by_p[3], by_p
        assert not tally.errors, tally.errors[:5]
    finally:
        if pub is not None:
            pub.stop()
        stop_all(consumers)
