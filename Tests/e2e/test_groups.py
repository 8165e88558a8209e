"""Consumer groups: order, acks, the contiguous watermark, sharing, filters, ephemeral subs."""

from support.names import unique


def offsets_of(msgs):
    return [m["offset"] for m in msgs]


def test_group_in_order_and_resumes_after_acks(broker):
    """A group gets events in offset order; after acking 1..3 and reconnecting it continues at
    4 (the first unacked), whose interrupted delivery counts as an attempt; `from` is ignored
    once the group has a committed position."""
    topic, group = unique("ord"), "workers"
    pub = broker.ws()
    pub.publish_many(topic, [{"i": i} for i in range(1, 6)])

    c1 = broker.ws()
    sub = c1.subscribe(topic, group, from_={"kind": "earliest"}, rid="s1")
    assert sub == {"type": "SUBSCRIBED", "topic": topic, "group": group, "rid": "s1"}
    msgs = c1.recv_messages(5)
    assert offsets_of(msgs) == [1, 2, 3, 4, 5]
    assert [m["envelope"]["payload"]["i"] for m in msgs] == [1, 2, 3, 4, 5]
    assert all(m["attempt"] == 1 and m["group"] == group for m in msgs)
    for m in msgs[:3]:
        c1.ack(m)
    broker.wait_committed(topic, group, 3)
    c1.close()

    c2 = broker.ws()
    c2.subscribe(topic, group, from_={"kind": "earliest"})  # no reset: from is ignored
    again = c2.recv_messages(2)
    assert offsets_of(again) == [4, 5]
    assert [m["attempt"] for m in again] == [2, 2]
    c2.expect_nothing(0.3)
    for m in again:
        c2.ack(m)
    broker.wait_committed(topic, group, 5)
    # new events keep flowing to the connected member
    pub.publish(topic, {"i": 6})
    assert c2.recv_type("MESSAGE")["offset"] == 6


def test_unacked_below_acked_comes_back(broker):
    """Acking 2 and 3 but not 1 keeps the watermark at 0; after reconnecting only 1 comes again
    (2 and 3 do not), and acking it moves the watermark to 3."""
    topic, group = unique("hole"), "g"
    broker.ws().publish_many(topic, [{"i": i} for i in (1, 2, 3)])
    c1 = broker.ws()
    c1.subscribe(topic, group, from_={"kind": "earliest"})
    m1, m2, m3 = c1.recv_messages(3)
    assert offsets_of([m1, m2, m3]) == [1, 2, 3]
    c1.ack(m2)
    c1.ack(m3)
    c1.barrier()
    # give a batched commit (100 ms) the chance to (wrongly) move past the unacked offset 1
    c1.expect_nothing(0.4)
    assert broker.committed(topic, group) in (None, 0)  # None: group not listed yet
    c1.close()

    c2 = broker.ws()
    c2.subscribe(topic, group)
    back = c2.recv_type("MESSAGE")
    assert back["offset"] == 1
    assert back["attempt"] == 2
    assert back["envelope"]["payload"] == {"i": 1}
    c2.expect_nothing(0.5)  # 2 and 3 were acked: never again
    c2.ack(back)
    broker.wait_committed(topic, group, 3)


def test_two_connections_share_a_group(broker):
    """Two connections in one group (max_inflight 1 each) share the work: together they get
    every event exactly once while acking promptly, and both get some."""
    topic, group, n = unique("share"), "pool", 30
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, n + 1)])
    a, b = broker.ws(), broker.ws()
    a.subscribe(topic, group, from_={"kind": "earliest"}, max_inflight=1)
    first_a = a.recv_type("MESSAGE")
    b.subscribe(topic, group, from_={"kind": "earliest"}, max_inflight=1)
    # a holds its message unacked, so the next one must go to b
    first_b = b.recv_type("MESSAGE")
    got = {"a": [first_a], "b": [first_b]}
    a.ack(first_a)
    b.ack(first_b)

    def total():
        return len(got["a"]) + len(got["b"])

    idle_rounds = 0
    while total() < n and idle_rounds < 20:
        progressed = False
        for name, conn in (("a", a), ("b", b)):
            try:
                m = conn._read(0.1)
            except TimeoutError:
                continue
            assert m["type"] == "MESSAGE", m
            got[name].append(m)
            conn.ack(m)
            progressed = True
        idle_rounds = 0 if progressed else idle_rounds + 1

    oa, ob = offsets_of(got["a"]), offsets_of(got["b"])
    assert not set(oa) & set(ob), f"delivered to both: {sorted(set(oa) & set(ob))}"
    assert sorted(oa + ob) == list(range(1, n + 1)), f"a={oa} b={ob}"
    assert len(oa) > 0 and len(ob) > 0
    assert all(m["attempt"] == 1 for m in got["a"] + got["b"])
    broker.wait_committed(topic, group, n)
    a.expect_nothing(0.2)
    b.expect_nothing(0.1)


def test_key_filter(broker):
    """A key filter delivers only events with that key; the others count as done, so the
    watermark reaches the high-water mark once the matching ones are acked."""
    topic, group = unique("fk"), "only-k1"
    pub = broker.ws()
    keys = ["k1", "k2", "k1", None, "k3", "k1", "k10"]
    for i, k in enumerate(keys, start=1):
        pub.publish(topic, {"i": i}, key=k)
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, filter={"key": "k1"})
    msgs = sub.recv_messages(3)
    assert offsets_of(msgs) == [1, 3, 6]
    assert all(m["envelope"]["key"] == "k1" for m in msgs)
    sub.expect_nothing(0.3)
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, group, 7)
    pub.publish(topic, {"i": 8}, key="k2")
    pub.publish(topic, {"i": 9}, key="k1")
    m = sub.recv_type("MESSAGE")
    assert m["offset"] == 9 and m["envelope"]["key"] == "k1"
    sub.ack(m)
    broker.wait_committed(topic, group, 9)


def test_header_filter(broker):
    """A header filter ["ct","json"] delivers only events whose header ct equals json."""
    topic, group = unique("fh"), "json-only"
    pub = broker.ws()
    heads = [{"ct": "json"}, {"ct": "xml"}, None, {"other": "json"}, {"ct": "json", "x": "y"}, {"ct": "JSON"}]
    for i, h in enumerate(heads, start=1):
        pub.publish(topic, {"i": i}, headers=h)
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, filter={"header": ["ct", "json"]})
    msgs = sub.recv_messages(2)
    assert offsets_of(msgs) == [1, 5]
    assert all(m["envelope"]["headers"]["ct"] == "json" for m in msgs)
    sub.expect_nothing(0.3)
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, group, 6)


def test_key_and_header_filter_together(broker):
    """Key and header filters combine with AND."""
    topic, group = unique("fkh"), "both"
    pub = broker.ws()
    rows = [("k1", {"ct": "json"}), ("k1", {"ct": "xml"}), ("k2", {"ct": "json"}), ("k1", {"ct": "json"})]
    for i, (k, h) in enumerate(rows, start=1):
        pub.publish(topic, {"i": i}, key=k, headers=h)
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, filter={"key": "k1", "header": ["ct", "json"]})
    assert offsets_of(sub.recv_messages(2)) == [1, 4]
    sub.expect_nothing(0.3)


def test_group_members_must_share_the_filter(broker):
    """A second member of a group subscribing with a different filter gets bad_request."""
    topic, group = unique("ff"), "g"
    a, b = broker.ws(), broker.ws()
    a.subscribe(topic, group, filter={"key": "k1"})
    b.send({"type": "SUBSCRIBE", "topic": topic, "group": group, "filter": {"key": "k2"}, "rid": "mismatch"})
    err = b.recv_type("ERROR")
    assert err["code"] == "bad_request"
    assert err["rid"] == "mismatch"


def test_ephemeral_subscriptions(make_broker):
    """Subscriptions without a group start at latest, carry group null, need no acks (no
    redelivery even past the ack timeout, ACK accepted silently), commit nothing, and each of
    two ephemeral subscribers gets every event."""
    broker = make_broker(BUS_ACK_TIMEOUT_MS="300")
    topic = unique("eph")
    pub = broker.ws()
    pub.publish(topic, {"before": True})  # offset 1: before the subscriptions (latest)
    s1, s2 = broker.ws(), broker.ws()
    r1 = s1.subscribe(topic, rid="e1")
    assert r1["topic"] == topic and r1["group"] is None and r1["rid"] == "e1"
    s2.subscribe(topic)
    pub.publish_many(topic, [{"i": i} for i in (2, 3, 4)])
    for s in (s1, s2):
        msgs = s.recv_messages(3)
        assert offsets_of(msgs) == [2, 3, 4]
        assert all(m["group"] is None and m["attempt"] == 1 for m in msgs)
        assert [m["envelope"]["payload"] for m in msgs] == [{"i": 2}, {"i": 3}, {"i": 4}]
    # an ACK for an ephemeral subscription is accepted and ignored
    s1.send({"type": "ACK", "topic": topic, "partition": 0, "offset": 2})
    s1.send({"type": "ACK", "topic": topic, "partition": 0, "group": None, "offset": 3})
    # no redelivery although nothing was acked and the ack timeout (300 ms) passed
    s1.expect_nothing(0.8)
    s2.expect_nothing(0.1)
    assert broker.offsets(topic)["groups"] == []
    # an ephemeral subscription from earliest replays everything
    s3 = broker.ws()
    s3.subscribe(topic, from_={"kind": "earliest"})
    assert offsets_of(s3.recv_messages(4)) == [1, 2, 3, 4]


def test_unsubscribe_stops_delivery(broker):
    """After UNSUBSCRIBE a connection gets no more MESSAGEs for that subscription."""
    topic, group = unique("unsub"), "g"
    pub, sub = broker.ws(), broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"})
    pub.publish(topic, {"i": 1})
    m = sub.recv_type("MESSAGE")
    sub.ack(m)
    broker.wait_committed(topic, group, 1)
    sub.send({"type": "UNSUBSCRIBE", "topic": topic, "group": group})
    # The spec defines no reply to UNSUBSCRIBE; an UNSUBSCRIBED confirmation is tolerated. The
    # server answers a connection's frames in order, so whatever it says about the UNSUBSCRIBE
    # comes before the PUBLISHED of a publish sent after it.
    sub.send({"type": "PUBLISH", "topic": unique("barrier"), "payload": {"barrier": True}, "rid": "after-unsub"})
    while (reply := sub.recv(timeout=10)).get("rid") != "after-unsub":
        assert reply == {"type": "UNSUBSCRIBED", "topic": topic, "group": group}, reply
    assert reply["type"] == "PUBLISHED", reply
    pub.publish(topic, {"i": 2})
    sub.expect_nothing(0.5)
    # the group still exists and resumes at 2 for the next member
    other = broker.ws()
    other.subscribe(topic, group)
    assert other.recv_type("MESSAGE")["offset"] == 2


def test_group_over_several_partitions(broker):
    """A group on a 3-partition topic gets every event once, in offset order within each
    partition, and commits a watermark per partition."""
    topic, group = unique("multi"), "g"
    broker.create_topic(topic, partitions=3)
    pub = broker.ws()
    keys = [f"key-{i}" for i in range(12)]
    published = [pub.publish(topic, {"k": k}, key=k) for k in keys]
    per_part = {p: [r["offset"] for r in published if r["partition"] == p] for p in range(3)}
    assert sum(1 for v in per_part.values() if v) >= 2  # the keys spread
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"})
    msgs = sub.recv_messages(len(keys))
    sub.expect_nothing(0.2)
    seen = {p: [m["offset"] for m in msgs if m["partition"] == p] for p in range(3)}
    assert seen == per_part
    for m in msgs:
        assert m["envelope"]["partition"] == m["partition"]
        sub.ack(m)
    for p in range(3):
        broker.wait_committed(topic, group, len(per_part[p]), partition=p)
    entry = {g["group"]: g["partitions"] for g in broker.offsets(topic)["groups"]}[group]
    assert sorted(e["partition"] for e in entry) == [0, 1, 2]
    assert all(e["lag"] == 0 for e in entry)


def test_member_disconnect_hands_unacked_to_other_member(broker):
    """When a member closes with unacked messages, another member of the group gets them
    (attempt 2); nothing is lost."""
    topic, group = unique("handoff"), "g"
    a, b = broker.ws(), broker.ws()
    a.subscribe(topic, group, max_inflight=3)
    broker.ws().publish_many(topic, [{"i": i} for i in (1, 2, 3)])
    held = a.recv_messages(3)
    assert [m["offset"] for m in held] == [1, 2, 3]
    b.subscribe(topic, group, max_inflight=3)
    b.expect_nothing(0.3)  # a still holds them
    a.close()
    moved = b.recv_messages(3)
    assert sorted(m["offset"] for m in moved) == [1, 2, 3]
    assert all(m["attempt"] == 2 for m in moved)
    for m in moved:
        b.ack(m)
    broker.wait_committed(topic, group, 3)


def test_ephemeral_with_filter(broker):
    """An ephemeral subscription honours a key filter."""
    topic = unique("ephf")
    sub = broker.ws()
    sub.subscribe(topic, filter={"key": "a"})
    pub = broker.ws()
    for i, k in enumerate(["a", "b", "a", None], start=1):
        pub.publish(topic, {"i": i}, key=k)
    msgs = sub.recv_messages(2)
    assert [m["offset"] for m in msgs] == [1, 3]
    assert all(m["group"] is None for m in msgs)
    sub.expect_nothing(0.3)


def test_rejected_resubscribe_keeps_the_existing_subscription(broker):
    """A second SUBSCRIBE on the same connection that is refused (here: a different filter than
    the group's other member) leaves the first subscription as it was: its messages can still
    be acked, and closing the connection hands its in-flight message to the other member."""
    topic, group = unique("resub"), "g"
    first = broker.ws()
    first.subscribe(topic, group, max_inflight=1)
    second = broker.ws()
    second.subscribe(topic, group, max_inflight=1)
    first.send({"type": "SUBSCRIBE", "topic": topic, "group": group, "filter": {"key": "other"}, "rid": "again"})
    reply = first.recv()
    assert reply["type"] == "ERROR" and reply["code"] == "bad_request" and reply["rid"] == "again", reply
    pub = broker.ws()
    pub.publish(topic, {"n": 1})
    pub.publish(topic, {"n": 2})
    got_first = first.recv_type("MESSAGE")
    got_second = second.recv_type("MESSAGE")
    assert {got_first["offset"], got_second["offset"]} == {1, 2}
    first.ack(got_first)
    second.ack(got_second)
    first.expect_nothing(0.3)  # no ERROR not_found for the ack
    broker.wait_committed(topic, group, 2)
    # The first connection is still a member: its next message comes back when it closes.
    pub.publish(topic, {"n": 3})
    pub.publish(topic, {"n": 4})
    in_flight = first.recv_type("MESSAGE")
    second.ack(second.recv_type("MESSAGE"))
    first.close()
    again = second.recv_type("MESSAGE", timeout=5)
    assert (again["offset"], again["attempt"]) == (in_flight["offset"], 2)
