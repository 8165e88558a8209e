"""Where a subscription starts: earliest, latest, offset, timestamp, reset, HTTP group reset."""

from support.names import unique
from support.waits import now_ms, wait_for


def offsets_of(msgs):
    return [m["offset"] for m in msgs]


def _seed(broker, n):
    topic = unique("replay")
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, n + 1)])
    return topic


def test_from_earliest(broker):
    """A new group from earliest gets every stored event from offset 1."""
    topic = _seed(broker, 4)
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "earliest"})
    assert offsets_of(sub.recv_messages(4)) == [1, 2, 3, 4]
    sub.expect_nothing(0.2)


def test_from_latest_and_default(broker):
    """A new group from latest -- and a new group without `from` -- gets only events published
    after it subscribed."""
    topic = _seed(broker, 3)
    latest, default = broker.ws(), broker.ws()
    latest.subscribe(topic, "g-latest", from_={"kind": "latest"})
    default.subscribe(topic, "g-default")
    latest.expect_nothing(0.3)
    default.expect_nothing(0.05)
    broker.ws().publish(topic, {"i": 4})
    for s in (latest, default):
        m = s.recv_type("MESSAGE")
        assert m["offset"] == 4 and m["envelope"]["payload"] == {"i": 4}
        s.ack(m)
        s.expect_nothing(0.1)
    broker.wait_committed(topic, "g-latest", 4)
    broker.wait_committed(topic, "g-default", 4)


def test_from_offset(broker):
    """from offset 4 delivers 4, 5, 6, ... first."""
    topic = _seed(broker, 8)
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "offset", "value": 4})
    assert offsets_of(sub.recv_messages(5)) == [4, 5, 6, 7, 8]
    sub.expect_nothing(0.2)


def test_from_timestamp(broker):
    """from timestamp T delivers first the first event with ts >= T."""
    topic = unique("ts")
    pub = broker.ws()
    pub.publish_many(topic, [{"i": i} for i in (1, 2, 3)])
    ts3 = broker.read_events(topic)[2]["ts"]
    # make sure the next events get a later millisecond than event 3
    wait_for(lambda: now_ms() > ts3 + 5, 2, 0.002, "the clock to pass event 3's ts")
    pub.publish_many(topic, [{"i": i} for i in (4, 5, 6)])
    events = broker.read_events(topic)
    ts4 = events[3]["ts"]
    assert ts4 > ts3, f"event 4 ts {ts4} not after event 3 ts {ts3}"

    at_ts4 = broker.ws()
    at_ts4.subscribe(topic, "g-ts4", from_={"kind": "timestamp", "value": ts4})
    assert offsets_of(at_ts4.recv_messages(3)) == [4, 5, 6]
    at_ts4.expect_nothing(0.2)

    between = broker.ws()
    between.subscribe(topic, "g-between", from_={"kind": "timestamp", "value": ts3 + 1})
    assert between.recv_type("MESSAGE")["offset"] == 4

    at_zero = broker.ws()
    at_zero.subscribe(topic, "g-zero", from_={"kind": "timestamp", "value": 0})
    assert at_zero.recv_type("MESSAGE")["offset"] == 1

    future = broker.ws()
    future.subscribe(topic, "g-future", from_={"kind": "timestamp", "value": now_ms() + 3_600_000})
    future.expect_nothing(0.3)
    pub.publish(topic, {"i": 7})
    assert future.recv_type("MESSAGE")["offset"] == 7


def test_reset_true_reapplies_from(broker):
    """A group with a committed position ignores `from` unless `reset: true`."""
    topic, group = _seed(broker, 3), "g"
    c1 = broker.ws()
    c1.subscribe(topic, group, from_={"kind": "earliest"})
    for m in c1.recv_messages(3):
        c1.ack(m)
    broker.wait_committed(topic, group, 3)
    c1.close()

    c2 = broker.ws()
    c2.subscribe(topic, group, from_={"kind": "offset", "value": 2})
    c2.expect_nothing(0.3)
    c2.close()

    c3 = broker.ws()
    c3.subscribe(topic, group, from_={"kind": "offset", "value": 2}, reset=True)
    assert offsets_of(c3.recv_messages(2)) == [2, 3]
    c3.expect_nothing(0.2)


def test_reset_true_applies_on_the_first_subscribe_after_a_restart(broker):
    """`reset: true` applies `from` always, also when the group's first SUBSCRIBE after a broker
    restart finds its committed position in the store."""
    topic, group = _seed(broker, 3), "g"
    c1 = broker.ws()
    c1.subscribe(topic, group, from_={"kind": "earliest"})
    for m in c1.recv_messages(3):
        c1.ack(m)
    broker.wait_committed(topic, group, 3)
    c1.close()
    broker.stop()
    broker.restart()

    c2 = broker.ws()
    c2.subscribe(topic, group, from_={"kind": "earliest"}, reset=True)
    assert offsets_of(c2.recv_messages(3)) == [1, 2, 3]
    c2.expect_nothing(0.2)


def test_group_reset_over_http(broker):
    """POST /groups/{g}/topics/{t}/reset moves the group (committed = new start - 1) and a
    connected member gets the events from the new position again."""
    topic, group = _seed(broker, 5), "ops"
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"})
    for m in sub.recv_messages(5):
        sub.ack(m)
    broker.wait_committed(topic, group, 5)
    sub.expect_nothing(0.2)

    status, body = broker.http("POST", f"/groups/{group}/topics/{topic}/reset",
                               {"from": {"kind": "offset", "value": 3}})
    assert status == 200, body
    assert body["topic"] == topic and body["group"] == group
    assert body["partitions"] == [{"partition": 0, "committed": 2}]
    replay = sub.recv_messages(3)
    assert offsets_of(replay) == [3, 4, 5]
    assert [m["envelope"]["payload"]["i"] for m in replay] == [3, 4, 5]
    for m in replay:
        sub.ack(m)
    broker.wait_committed(topic, group, 5)

    status, body = broker.http("POST", f"/groups/{group}/topics/{topic}/reset",
                               {"from": {"kind": "latest"}})
    assert status == 200, body
    assert body["partitions"] == [{"partition": 0, "committed": 5}]
    sub.expect_nothing(0.3)

    status, body = broker.http("POST", f"/groups/{group}/topics/{topic}/reset",
                               {"from": {"kind": "earliest"}})
    assert status == 200, body
    assert body["partitions"] == [{"partition": 0, "committed": 0}]
    assert offsets_of(sub.recv_messages(5)) == [1, 2, 3, 4, 5]


def test_group_reset_while_disconnected(broker):
    """A reset of a group with no member connected takes effect at its next subscribe."""
    topic, group = _seed(broker, 4), "offline"
    c1 = broker.ws()
    c1.subscribe(topic, group, from_={"kind": "earliest"})
    for m in c1.recv_messages(4):
        c1.ack(m)
    broker.wait_committed(topic, group, 4)
    c1.close()
    status, body = broker.http("POST", f"/groups/{group}/topics/{topic}/reset",
                               {"from": {"kind": "offset", "value": 2}})
    assert status == 200, body
    assert body["partitions"] == [{"partition": 0, "committed": 1}]
    assert broker.committed(topic, group) == 1
    c2 = broker.ws()
    c2.subscribe(topic, group)
    assert offsets_of(c2.recv_messages(3)) == [2, 3, 4]
