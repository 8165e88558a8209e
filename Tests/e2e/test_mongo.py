"""MongoDB-specific end-to-end tests (SPEC §3, §4, §10): the change stream as the doorbell, its
resume and history-lost paths, the gap rule against real holes in `counters`, insert failures,
a server restart, and two broker processes on one database.

They run only with E2E_STORE=mongo. Tests that need fail points, a small change history or a
server stop start a MongoDB double of their own (`make_double`), so the session's shared double
is never disturbed. Tests that must prove the change stream (not the safety poll) did the work
set BUS_POLL_MS to 10 minutes, far beyond their (generous) deadlines, and check that they
finished before the first poll could have fired. Nothing here asserts how fast something
happened: latency belongs in benchmarks; deadlines only bound how long a test waits.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid

import pytest

from support.audit import audit
from support.mongo import fail_point, mongo_client, start_double, store_mode, wait_double_log
from support.names import unique
from support.waits import now_ms, wait_for

pytestmark = pytest.mark.skipif(store_mode() != "mongo", reason="MongoDB store tests")

SLOW_POLL_S = 600  # the safety poll never fires within a test (see within_the_poll)
SLOW_POLL = str(SLOW_POLL_S * 1000)


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def make_double(tmp_path):
    """`make_double(history=N)` starts a double of this test's own (a `DoubleProcess`); stopped
    at teardown (after the test's brokers: request it before `make_broker`). Its log is
    printed, so a failing test shows it."""
    doubles = []

    def factory(history: int | None = None):
        d = start_double(tmp_path / f"double{len(doubles)}", history=history)
        doubles.append(d)
        return d

    yield factory
    for d in doubles:
        try:
            d.stop(timeout=15)
        finally:
            tail = "\n".join(d.log().splitlines()[-60:])
            print(f"--- mongo double log tail ({d.log_path}) ---\n{tail}")


def double_fail_point(double, mode, data: dict | None = None) -> int:
    """configureFailPoint failCommand on a test's own double; returns how often it fired under
    its previous setting."""
    with double.client(serverSelectionTimeoutMS=5000) as client:
        return fail_point(client, mode, data)


def broker_log(broker) -> str:
    try:
        return broker.log_path.read_text(errors="replace")
    except OSError:
        return ""


def subscribe_and_warm_up(broker, topic, group="g", **opts):
    """A group subscriber on a new topic, proven live: one event published, delivered, acked
    and committed. Returns (subscriber, publisher)."""
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, **opts)
    pub = broker.ws()
    assert pub.publish(topic, {"warm": True})["offset"] == 1
    m = sub.recv_type("MESSAGE", timeout=5)
    assert (m["offset"], m["envelope"]["payload"]) == (1, {"warm": True})
    sub.ack(m)
    broker.wait_committed(topic, group, 1)
    return sub, pub


def metric(broker, name, **want) -> float | None:
    """The value of the one /metrics sample of `name` whose labels include `want`, or None."""
    for line in broker.http_raw("GET", "/metrics")[2].decode().splitlines():
        m = re.match(r"^(\w+)(?:\{([^}]*)\})?\s+(\S+)", line)
        if not m or m[1] != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        if all(labels.get(k) == str(v) for k, v in want.items()):
            return float(m[3])
    return None


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def within_the_poll(started: float) -> None:
    """The broker started at (or after) `started` runs with BUS_POLL_MS=SLOW_POLL: everything
    delivered until now was delivered before its safety poll could first fire, so the change
    stream woke the dispatcher. (Each wait in those tests is far shorter than the poll, so
    this only fails if a test somehow ran for ten minutes.)"""
    ran = time.monotonic() - started
    assert ran < SLOW_POLL_S, f"the test ran {ran:.0f}s, past the {SLOW_POLL_S}s safety poll: it proves nothing"


# --------------------------------------------------------------------------------------------
# 1. the change stream is the doorbell


def test_change_stream_wakes_without_the_poll(make_broker):
    """With the safety poll at 10 minutes, each of 20 events published one at a time reaches a
    group subscriber, in order, long before the poll could fire: the change stream woke the
    dispatcher. (The latencies are printed, not asserted.)"""
    started = time.monotonic()
    broker = make_broker(BUS_POLL_MS=SLOW_POLL)
    topic = unique("wake")
    sub, pub = subscribe_and_warm_up(broker, topic)

    since_sent = []
    for i in range(20):
        sent = time.monotonic()
        reply = pub.publish(topic, {"i": i})
        m = sub.recv_type("MESSAGE", timeout=15)
        got = time.monotonic()
        assert (m["offset"], m["envelope"]["payload"]) == (reply["offset"], {"i": i})
        sub.ack(m)
        since_sent.append((got - sent) * 1000)
    within_the_poll(started)
    print(f"\nwake latency publish-sent -> MESSAGE over 20 events: "
          f"p50={statistics.median(since_sent):.1f} ms p99={percentile(since_sent, 99):.1f} ms "
          f"max={max(since_sent):.1f} ms")
    broker.wait_committed(topic, "g", 21)


# --------------------------------------------------------------------------------------------
# 2. resume after a dropped connection


def test_tail_resumes_after_get_more_connection_closed(make_double, make_broker):
    """failCommand closes the connection of the tail's getMore once: the broker resumes from its
    token (logged as interrupted, never as lost), and 5 events published right after arrive in
    order, exactly once, with no repeat of the warm-up — all without the safety poll."""
    double = make_double()
    started = time.monotonic()
    broker = make_broker(MONGO_URL=double.url, BUS_POLL_MS=SLOW_POLL)
    topic = unique("cs.close")
    sub, pub = subscribe_and_warm_up(broker, topic)
    live = broker.ws()  # an ephemeral subscriber too, from the warm-up on
    live.subscribe(topic, from_={"kind": "offset", "value": 1})
    assert live.recv_type("MESSAGE")["offset"] == 1

    mark = len(double.log())
    assert double_fail_point(double, {"times": 1}, {"failCommands": ["getMore"], "closeConnection": True}) == 0
    wait_double_log(double, "getMore: failCommand closes the connection", since=mark, timeout=15)
    assert double_fail_point(double, "off") == 1  # it fired exactly once

    replies = [pub.publish(topic, {"after": i}) for i in range(5)]
    assert [r["offset"] for r in replies] == [2, 3, 4, 5, 6]
    msgs = sub.recv_messages(5, timeout=20)
    assert [m["offset"] for m in msgs] == [2, 3, 4, 5, 6]
    assert [m["envelope"]["payload"] for m in msgs] == [{"after": i} for i in range(5)]
    assert [m["envelope"]["id"] for m in msgs] == [r["id"] for r in replies]
    assert all(m["attempt"] == 1 for m in msgs)
    for m in msgs:
        sub.ack(m)
    live_msgs = live.recv_messages(5, timeout=15)
    assert [(m["offset"], m["envelope"]["payload"]) for m in live_msgs] == [
        (2 + i, {"after": i}) for i in range(5)]
    sub.expect_nothing(0.5)  # no duplicates, no second copy of the warm-up
    live.expect_nothing(0.1)
    broker.wait_committed(topic, "g", 6, timeout=15)
    within_the_poll(started)

    log = broker_log(broker)
    assert "change stream interrupted; resuming" in log, "the broker never noticed the dropped stream"
    assert "change stream lost" not in log, "the tail reopened from now instead of resuming"
    # /metrics counts the one resume of this topic's stream (SPEC §14).
    assert metric(broker, "bus_change_stream_resumes_total", stream=topic) == 1
    assert metric(broker, "bus_change_stream_wakeups_total", topic=topic) >= 1


# --------------------------------------------------------------------------------------------
# 3. history lost (286): reopen from now and rescan


def test_history_lost_reopens_and_rescans(make_double, make_broker):
    """With a change history of 5, the tail stays down (getMore and aggregate fail with a
    resumable error) while 30 events are published; when the server answers again the resume
    token is too old (286), the broker reopens from now and rescans by offset, and all 30 are
    delivered in order and committed up to the high-water mark — without the safety poll."""
    double = make_double(history=5)
    started = time.monotonic()
    broker = make_broker(MONGO_URL=double.url, BUS_POLL_MS=SLOW_POLL, BUS_METRICS_INTERVAL_MS="0")
    topic = unique("cs.lost")
    sub, pub = subscribe_and_warm_up(broker, topic, max_inflight=64)
    db = broker.mongo_db

    mark = len(double.log())
    broker_mark = len(broker_log(broker))
    double_fail_point(double, "alwaysOn", {"failCommands": ["getMore", "aggregate"], "errorCode": 91})
    try:
        # the tail's waiting getMore ends within its 1 s maxTimeMS; the next one fails
        wait_double_log(double, f"getMore on {db} failed: 91", since=mark, timeout=15)
        replies = pub.publish_many(topic, [{"n": i} for i in range(30)])
        assert [r["offset"] for r in replies] == list(range(2, 32))
        # the tail tried to resume and was refused while the history moved past its token
        wait_double_log(double, f"aggregate on {db} failed: 91", since=mark, timeout=15)
        sub.expect_nothing(0.3)  # the stream is down and the poll is 60 s away
    finally:
        double_fail_point(double, "off")

    got = []
    deadline = time.monotonic() + 30
    while len(got) < 30:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of 30 delivered: {[m['offset'] for m in got]}"
        m = sub.recv_type("MESSAGE", timeout=left)
        got.append(m)
        sub.ack(m)
    assert [m["offset"] for m in got] == list(range(2, 32))
    assert [m["envelope"]["payload"] for m in got] == [{"n": i} for i in range(30)]
    sub.expect_nothing(0.3)
    assert broker.high_watermark(topic) == 31
    broker.wait_committed(topic, "g", 31, timeout=15)
    within_the_poll(started)

    assert f"aggregate on {db} failed: 286" in double.log()[mark:], "the server never answered 286"
    tail = broker_log(broker)[broker_mark:]
    assert "change stream lost; reopening from now" in tail and "286" in tail, tail[-3000:]
    # /metrics: the stream reopened after errors, and the reopening rescanned by offset.
    assert metric(broker, "bus_change_stream_resumes_total", stream=topic) >= 1
    assert metric(broker, "bus_change_stream_rescans_total", topic=topic) >= 1


# --------------------------------------------------------------------------------------------
# 4-5. the gap rule against real holes in `counters`


def _reserve_offset(db, topic) -> int:
    """Reserve the next offset of partition 0 the way a writer does, and never insert it."""
    before = db.counters.find_one_and_update({"_id": f"{topic}:0"}, {"$inc": {"nextOffset": 1}})
    assert before is not None, "the broker did not create the counter"
    return int(before["nextOffset"])


def test_hole_is_skipped_after_the_gap_timeout(make_broker):
    """An offset reserved in `counters` and never inserted holds the next event back (it is
    not delivered during the first two thirds of the 3 s gap timeout, which is timed from when
    the hole was first seen, so from after the reservation), then it is skipped with a warning
    and a `gap.skipped` audit record naming it, and the group commits past it."""
    gap_s = 3.0
    broker = make_broker(BUS_GAP_TIMEOUT_MS=str(int(gap_s * 1000)))
    topic = unique("gap.skip")
    sub, pub = subscribe_and_warm_up(broker, topic)
    with mongo_client() as client:
        db = client[broker.mongo_db]
        reserved_at = time.monotonic()
        hole = _reserve_offset(db, topic)
        assert hole == 2
        reply = pub.publish(topic, {"after": "hole"})
        assert reply["offset"] == 3

        # Held back by the hole. Its timer cannot have started before the reservation, so
        # nothing may arrive before reserved_at + gap_s whatever the load; watch a safe
        # two thirds of that.
        hold = reserved_at + gap_s * 2 / 3 - time.monotonic()
        assert hold > 0.5, f"the publish took {time.monotonic() - reserved_at:.1f}s: no time left to watch the hold"
        sub.expect_nothing(hold)
        m = sub.recv_type("MESSAGE", timeout=gap_s + 20)
        assert (m["offset"], m["envelope"]["payload"]) == (3, {"after": "hole"})
        sub.ack(m)
        broker.wait_committed(topic, "g", 3)
        assert db.events.count_documents({"topic": topic, "offset": hole}) == 0

    records = wait_for(lambda: audit(broker, ("gap.skipped",), topic), 5, 0.1,
                       "a gap.skipped audit record")
    assert len(records) == 1, records
    assert {k: records[0].get(k) for k in ("kind", "topic", "group", "partition", "offset")} == {
        "kind": "gap.skipped", "topic": topic, "group": "g", "partition": 0, "offset": hole}
    assert "skipped missing offsets after the gap timeout" in broker_log(broker)


def test_slow_writer_inside_the_timeout_is_delivered_in_order(make_broker):
    """A writer that reserved offset N and inserts it 0.5 s later (well inside the 5 s gap
    timeout) is not skipped: the subscriber gets N (its payload) then N+1, and no gap.skipped
    record for N is ever written, not even after the timer would have fired."""
    gap_s = 5.0
    broker = make_broker(BUS_GAP_TIMEOUT_MS=str(int(gap_s * 1000)))
    topic = unique("gap.slow")
    sub, pub = subscribe_and_warm_up(broker, topic)
    import bson

    with mongo_client() as client:
        db = client[broker.mongo_db]
        reserved_at = time.monotonic()
        n = _reserve_offset(db, topic)
        assert n == 2
        assert pub.publish(topic, {"after": "slow"})["offset"] == n + 1
        sub.expect_nothing(0.5)  # N+1 waits for N
        db.events.insert_one({
            "topic": topic, "partition": 0, "offset": bson.Int64(n), "id": "slow-writer-1",
            "ts": bson.Int64(now_ms()), "payload": {"slow": True, "n": n}})
        inserted = time.monotonic() - reserved_at
        # the scenario's premise (not a speed requirement on the broker): N appeared inside
        # the gap timeout, with a margin
        assert inserted < gap_s - 1, f"the test's own insert came {inserted:.1f}s after the reservation"
        msgs = sub.recv_messages(2, timeout=20)
    assert [m["offset"] for m in msgs] == [n, n + 1]
    assert msgs[0]["envelope"]["payload"] == {"slow": True, "n": n}
    assert msgs[0]["envelope"]["id"] == "slow-writer-1"
    assert msgs[1]["envelope"]["payload"] == {"after": "slow"}
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, "g", n + 1)
    # past the moment the timer would have fired: still no skip recorded
    time.sleep(max(0.0, reserved_at + gap_s + 1.0 - time.monotonic()))
    sub.expect_nothing(0.1)
    assert audit(broker, ("gap.skipped",), topic) == []
    assert "skipped missing offsets" not in broker_log(broker)


# --------------------------------------------------------------------------------------------
# 6. a failed insert


def test_insert_failure_answers_unavailable_and_leaves_nothing(make_double, make_broker):
    """An insert the server refuses once makes that PUBLISH answer ERROR unavailable with its
    rid; nothing of it is stored or delivered; the next publish succeeds (one offset later: the
    failed one's reservation becomes a hole, skipped after the gap timeout), and the subscriber
    receives exactly the successful events."""
    double = make_double()
    broker = make_broker(MONGO_URL=double.url, BUS_GAP_TIMEOUT_MS="1000", BUS_METRICS_INTERVAL_MS="0")
    topic = unique("ins.fail")
    sub, pub = subscribe_and_warm_up(broker, topic)

    double_fail_point(double, {"times": 1}, {"failCommands": ["insert"], "errorCode": 91})
    pub.send({"type": "PUBLISH", "topic": topic, "payload": {"doomed": True}, "rid": "doomed-1"})
    err = pub._await_reply(("PUBLISHED", "ERROR"), 10)
    assert err["type"] == "ERROR", f"the failed insert was confirmed: {err}"
    assert err["code"] == "unavailable" and err.get("rid") == "doomed-1", err
    assert double_fail_point(double, "off") == 1

    ok = pub.publish(topic, {"fine": 1}, timeout=10)
    assert ok["offset"] == 3, ok  # 2 was reserved by the failed publish
    ok2 = pub.publish(topic, {"fine": 2})
    assert ok2["offset"] == 4

    msgs = sub.recv_messages(2, timeout=20)  # after the 1 s gap timeout of the hole at 2
    assert [(m["offset"], m["envelope"]["payload"]) for m in msgs] == [(3, {"fine": 1}), (4, {"fine": 2})]
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, "g", 4, timeout=15)
    sub.expect_nothing(0.5)
    stored = broker.read_all_events(topic)
    assert [(e["offset"], e["payload"]) for e in stored] == [
        (1, {"warm": True}), (3, {"fine": 1}), (4, {"fine": 2})]
    with double.client(serverSelectionTimeoutMS=5000) as client:
        assert client[broker.mongo_db].events.count_documents({"payload.doomed": True}) == 0
    records = wait_for(lambda: audit(broker, ("gap.skipped",), topic), 15, 0.1, "gap.skipped")
    assert [r["offset"] for r in records] == [2]


# --------------------------------------------------------------------------------------------
# 7. server stopped and restarted


def test_server_stop_and_restart(make_double, make_broker):
    """Stopping the server makes /readyz 503 (and a publish ERROR unavailable); after a restart
    (same port, kept data) /readyz is 200 again, the still-connected subscriber gets events
    published after the restart, and everything published before the stop is still there."""
    double = make_double()
    broker = make_broker(MONGO_URL=double.url)
    topic = unique("restart")
    sub, pub = subscribe_and_warm_up(broker, topic)
    before = pub.publish_many(topic, [{"before": i} for i in range(3)])
    msgs = sub.recv_messages(3, timeout=5)
    assert [m["offset"] for m in msgs] == [2, 3, 4]
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, "g", 4)
    assert broker.http("GET", "/readyz") == (200, {"ready": True})

    double.stop(timeout=15)
    wait_for(lambda: broker.http("GET", "/readyz", timeout=8)[0] == 503, 10, 0.2, "/readyz 503")
    pub.send({"type": "PUBLISH", "topic": topic, "payload": {"down": True}, "rid": "down-1"})
    err = pub._await_reply(("PUBLISHED", "ERROR"), 15)
    assert err["type"] == "ERROR" and err["code"] == "unavailable" and err.get("rid") == "down-1", err

    double.start()
    wait_for(lambda: broker.http("GET", "/readyz", timeout=8) == (200, {"ready": True}), 15, 0.2,
             "/readyz 200 after the restart")
    after = [pub.publish(topic, {"after": i}, timeout=10) for i in range(3)]
    got = sub.recv_messages(3, timeout=10)
    assert [m["offset"] for m in got] == [r["offset"] for r in after]
    assert [m["envelope"]["payload"] for m in got] == [{"after": i} for i in range(3)]
    for m in got:
        sub.ack(m)
    sub.expect_nothing(0.3)

    stored = broker.read_all_events(topic)
    by_offset = {e["offset"]: e for e in stored}
    for r, i in zip(before, range(3)):
        assert by_offset[r["offset"]]["payload"] == {"before": i}
        assert by_offset[r["offset"]]["id"] == r["id"]
    assert by_offset[1]["payload"] == {"warm": True}
    assert not [e for e in stored if e["payload"] == {"down": True}]
    broker.wait_committed(topic, "g", after[-1]["offset"], timeout=10)


# --------------------------------------------------------------------------------------------
# 8. two brokers, one database


def test_two_brokers_share_one_database(make_broker):
    """Two broker processes on one MONGO_DB: events published through A reach an ephemeral and
    a group subscriber on B through B's change stream (its poll is 10 minutes), with A's
    offsets, ids and payloads; B's group commits them."""
    db = f"bus_e2e_two_{uuid.uuid4().hex[:10]}"
    a = make_broker(MONGO_DB=db)
    started = time.monotonic()
    b = make_broker(MONGO_DB=db, BUS_POLL_MS=SLOW_POLL)
    topic = unique("two")

    live = b.ws()
    live.subscribe(topic, from_={"kind": "earliest"})
    grp = b.ws()
    grp.subscribe(topic, "g", from_={"kind": "earliest"})
    pub = a.ws()

    for i in range(1, 6):
        reply = pub.publish(topic, {"from": "A", "i": i})
        assert reply["offset"] == i
        m = live.recv_type("MESSAGE", timeout=15)
        assert m["group"] is None
        assert (m["offset"], m["envelope"]["id"], m["envelope"]["payload"]) == (
            i, reply["id"], {"from": "A", "i": i})
        g = grp.recv_type("MESSAGE", timeout=15)
        assert g["group"] == "g"
        assert (g["offset"], g["envelope"]["id"], g["envelope"]["payload"]) == (
            i, reply["id"], {"from": "A", "i": i})
        grp.ack(g)
    b.wait_committed(topic, "g", 5, timeout=15)
    within_the_poll(started)
    assert a.committed(topic, "g") == 5  # the same database
    assert [e["offset"] for e in a.read_all_events(topic)] == [1, 2, 3, 4, 5]
    live.expect_nothing(0.3)


# --------------------------------------------------------------------------------------------
# durability of confirmations, and more watched topics than pooled clients


def test_write_concern_error_is_not_confirmed(make_double, make_broker):
    """A PUBLISHED confirmation means durable (SPEC §11), which is why the insert asks for
    w:majority. When the server answers the insert with a writeConcernError (e.g. wtimeout),
    durability is unknown: the PUBLISH must answer ERROR unavailable (a retry with the same id
    then gets duplicate: true), not PUBLISHED."""
    double = make_double()
    broker = make_broker(MONGO_URL=double.url, BUS_METRICS_INTERVAL_MS="0")
    topic = unique("wce")
    pub = broker.ws()
    assert pub.publish(topic, {"warm": True})["offset"] == 1
    double_fail_point(double, {"times": 1}, {"failCommands": ["insert"], "writeConcernError": {
        "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
        "errInfo": {"wtimeout": True}}})
    pub.send({"type": "PUBLISH", "topic": topic, "payload": {"wce": True}, "id": "wce-1", "rid": "wce"})
    reply = pub._await_reply(("PUBLISHED", "ERROR"), 10)
    assert double_fail_point(double, "off") == 1
    assert reply["type"] == "ERROR" and reply["code"] == "unavailable" and reply.get("rid") == "wce", reply


def test_more_active_topics_than_pooled_clients_do_not_wedge_the_broker(make_broker):
    """SPEC §4: each per-topic change stream holds a pooled client while it waits. With more
    active topics than clients (pool of 8, 12 topics) the broker must stay alive: every
    SUBSCRIBE is answered, /readyz answers, publishing to another topic works."""
    started = time.monotonic()
    broker = make_broker(BUS_MONGO_POOL_SIZE="8", BUS_METRICS_INTERVAL_MS="0", BUS_POLL_MS=SLOW_POLL)
    try:
        sub = broker.ws()
        topics = [unique(f"pool{i}") for i in range(12)]
        for i, t in enumerate(topics):
            sub.send({"type": "SUBSCRIBE", "topic": t, "rid": f"s{i}"})
        answers = []
        deadline = time.monotonic() + 20
        while len(answers) < len(topics):
            left = deadline - time.monotonic()
            try:
                assert left > 0
                answers.append(sub.recv(left)["type"])
            except AssertionError:
                raise AssertionError(f"only {len(answers)} of {len(topics)} SUBSCRIBEs answered "
                                     "within 20 s") from None
        assert broker.http("GET", "/readyz", timeout=3)[0] == 200
        assert broker.http("POST", f"/topics/{unique('other')}/events", {"payload": 1}, timeout=3)[0] == 200
        # Topics beyond the dedicated streams are woken by the shared stream.
        for t in (topics[0], topics[-1]):
            broker.ws().publish(t, {"via": t})
            msg = sub.recv_type("MESSAGE", timeout=15)
            assert (msg["topic"], msg["envelope"]["payload"]) == (t, {"via": t}), msg
        within_the_poll(started)
    except BaseException:
        broker.kill9()  # a wedged broker does not stop on SIGTERM; don't wait for it
        raise


def test_payload_that_cannot_become_bson_is_refused_alone(make_broker):
    """A payload libbson cannot convert (Extended JSON with a bad value) gets bad_request before
    any offset is reserved, so the publishes around it are stored without holes or delay (the
    next event arrives long before the 60 s gap timeout a hole would cost)."""
    broker = make_broker(BUS_GAP_TIMEOUT_MS="60000")
    topic = unique("xjson")
    sub = broker.ws()
    sub.subscribe(topic, "g")
    pub = broker.ws()
    pub.send({"type": "PUBLISH", "topic": topic, "payload": {"$date": "not a date"}, "rid": "bad"})
    reply = pub._await_reply(("PUBLISHED", "ERROR"), 5, rid="bad")
    assert reply["type"] == "ERROR" and reply["code"] == "bad_request" and reply["rid"] == "bad", reply
    ok = pub.publish(topic, {"fine": True})
    assert ok["offset"] == 1, "nothing was reserved for the refused payload"
    msg = sub.recv_type("MESSAGE", timeout=15)
    assert msg["offset"] == 1 and msg["envelope"]["payload"] == {"fine": True}
