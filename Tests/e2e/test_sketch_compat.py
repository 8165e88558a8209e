"""What the TypeScript sketch's client and test recipe send must work against us (SPEC §5):
`from=offset(0)`, the topic-less FLOW frame, and the connection gauge a newcomer reads first."""

import re

from support.names import unique
from support.waits import wait_for
from support.ws import WS


def test_from_offset_zero_starts_at_the_earliest(broker):
    """The sketch's recipe joins with `from=offset(0)`: every stored event, from offset 1."""
    topic = unique("zero")
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 4)])
    sub = broker.ws()
    sub.subscribe(topic, "g1", from_={"kind": "offset", "value": 0}, max_inflight=10)
    msgs = sub.recv_messages(3)
    assert [m["offset"] for m in msgs] == [1, 2, 3]
    for m in msgs:
        sub.ack(m)
    broker.wait_committed(topic, "g1", 3)


def test_reset_to_offset_zero_starts_at_the_earliest(broker):
    """The same rule over HTTP: a group reset to offset 0 rewinds to before the first event."""
    topic = unique("zreset")
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 4)])
    status, body = broker.http("POST", f"/groups/g/topics/{topic}/reset", {"from": {"kind": "offset", "value": 0}})
    assert status == 200, body
    assert broker.committed(topic, "g") == 0


def test_negative_from_offset_is_refused(broker):
    topic = unique("neg")
    ws = broker.ws()
    ws.send({"type": "SUBSCRIBE", "topic": topic, "group": "g", "from": {"kind": "offset", "value": -1}, "rid": "n1"})
    err = ws.recv_type("ERROR")
    assert err["code"] == "bad_request" and err["rid"] == "n1"
    assert "at least 0" in err["message"]


def test_flow_without_topic_grants_every_subscription(broker):
    """`{"type":"FLOW","credits":N}` (the sketch's frame) gives N credits to each subscription of
    the connection: after FLOW 0 nothing flows on either topic, after FLOW 2 two of each."""
    a, b = unique("fla"), unique("flb")
    sub = broker.ws()
    sub.subscribe(a, "g", max_inflight=100)
    sub.subscribe(b, "g", max_inflight=100)
    sub.send({"type": "FLOW", "credits": 0})
    sub.barrier()
    pub = broker.ws()
    pub.publish_many(a, [{"i": i} for i in range(1, 5)])
    pub.publish_many(b, [{"i": i} for i in range(1, 5)])
    sub.expect_nothing(0.5)
    sub.send({"type": "FLOW", "credits": 2})
    msgs = sub.recv_messages(4)
    by_topic = {}
    for m in msgs:
        by_topic.setdefault(m["topic"], []).append(m["offset"])
        sub.ack(m)
    assert by_topic == {a: [1, 2], b: [1, 2]}
    sub.expect_nothing(0.4)


def test_flow_without_topic_and_no_subscription_says_so(broker):
    ws = broker.ws()
    ws.send({"type": "FLOW", "credits": 5, "rid": "f1"})
    err = ws.recv_type("ERROR")
    assert err["code"] == "not_found" and err["rid"] == "f1"
    # The connection stays usable.
    topic = unique("after")
    ws.subscribe(topic, "g")


def test_flow_with_group_but_no_topic_is_a_bad_request(broker):
    ws = broker.ws()
    ws.send({"type": "FLOW", "group": "g", "credits": 5, "rid": "f2"})
    err = ws.recv_type("ERROR")
    assert err["code"] == "bad_request" and err["rid"] == "f2"


def _connections_gauge(broker) -> float:
    status, _, raw = broker.http_raw("GET", "/metrics")
    assert status == 200
    text = raw.decode()
    match = re.search(r"^bus_connections(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert match, text[:2000]
    return float(match.group(1))


def test_connections_gauge_counts_open_connections(broker):
    """`bus_connections` is the number open now, not a running total."""
    clients = [broker.ws() for _ in range(3)]
    for c in clients:
        c.barrier()
    wait_for(lambda: _connections_gauge(broker) == 3, timeout=5, message="3 open connections")
    clients[0].close()
    clients[1].close()
    wait_for(lambda: _connections_gauge(broker) == 1, timeout=5, message="1 open connection after 2 closed")


def test_the_sketch_client_connects_at_the_root_path(broker):
    """The sketch's BusClient opens `ws://127.0.0.1:7070` (path `/`), not `/ws`: both work."""
    root = WS(f"ws://127.0.0.1:{broker.port}")
    try:
        topic = unique("root")
        root.subscribe(topic, "monitor", from_={"kind": "latest"}, max_inflight=32)
        broker.ws().publish(topic, {"hb": 1}, key="proc:1")
        msg = root.recv_type("MESSAGE")
        assert msg["envelope"]["payload"] == {"hb": 1}
        root.send({"type": "ACK", "topic": msg["topic"], "partition": msg["partition"], "group": msg["group"], "offset": msg["offset"]})
        broker.wait_committed(topic, "monitor", 1)
    finally:
        root.close()
