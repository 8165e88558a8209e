"""Backpressure: max_inflight and FLOW credits."""

import json
import socket
import struct
import time

from support.names import unique
from support.net import max_socket_send_buffer
from support.ws import RawWS


def offsets_of(msgs):
    return [m["offset"] for m in msgs]


def test_max_inflight_limits_unacked(broker):
    """With max_inflight 3 a connection holds at most 3 unacked MESSAGEs; each ack lets exactly
    one more through, in offset order."""
    topic, group = unique("infl"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, max_inflight=3)
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 11)])
    first = sub.recv_messages(3)
    assert offsets_of(first) == [1, 2, 3]
    sub.expect_nothing(0.4)
    sub.ack(first[1])  # ack 2: one slot frees up
    assert sub.recv_type("MESSAGE")["offset"] == 4
    sub.expect_nothing(0.3)
    sub.ack(first[0])
    sub.ack(first[2])
    nxt = sub.recv_messages(2)
    assert offsets_of(nxt) == [5, 6]
    sub.expect_nothing(0.3)
    broker.wait_committed(topic, group, 3)


def test_max_inflight_is_per_connection(broker):
    """The limit is per connection: a second member of the group gets its own 2."""
    topic, group = unique("inflc"), "g"
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 7)])
    a = broker.ws()
    a.subscribe(topic, group, from_={"kind": "earliest"}, max_inflight=2)
    assert offsets_of(a.recv_messages(2)) == [1, 2]
    a.expect_nothing(0.3)
    b = broker.ws()
    b.subscribe(topic, group, max_inflight=2)
    assert offsets_of(b.recv_messages(2)) == [3, 4]
    b.expect_nothing(0.3)
    a.expect_nothing(0.05)


def test_flow_credits_gate_delivery(broker):
    """After FLOW 0 nothing is delivered; FLOW 2 lets exactly 2 through; FLOW 3 three more
    (credits add up, each MESSAGE spends one), even though every message is acked."""
    topic, group = unique("flow"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, max_inflight=100)
    sub.flow(topic, group, 0)
    sub.barrier()
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 6)])
    sub.expect_nothing(0.5)

    sub.flow(topic, group, 2)
    got = sub.recv_messages(2)
    assert offsets_of(got) == [1, 2]
    for m in got:
        sub.ack(m)
    sub.expect_nothing(0.4)  # acks free in-flight slots, but there are no credits left

    sub.flow(topic, group, 3)
    more = sub.recv_messages(3)
    assert offsets_of(more) == [3, 4, 5]
    for m in more:
        sub.ack(m)
    broker.wait_committed(topic, group, 5)

    # credits are additive across FLOW frames: 1 + 1 = 2 of the next 3
    broker.ws().publish_many(topic, [{"i": i} for i in range(6, 9)])
    sub.expect_nothing(0.3)
    sub.flow(topic, group, 1)
    sub.flow(topic, group, 1)
    assert offsets_of(sub.recv_messages(2)) == [6, 7]
    sub.expect_nothing(0.3)


def test_flow_and_max_inflight_both_apply(broker):
    """With plenty of credits, max_inflight still caps the unacked messages."""
    topic, group = unique("flowi"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, max_inflight=2)
    sub.flow(topic, group, 10)
    sub.barrier()
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 6)])
    got = sub.recv_messages(2)
    assert offsets_of(got) == [1, 2]
    sub.expect_nothing(0.3)
    sub.ack(got[0])
    assert sub.recv_type("MESSAGE")["offset"] == 3
    sub.expect_nothing(0.3)


# --------------------------------------------------------------------------------------------
# ephemeral outbound queue bound


def _wait_until_deliveries_settle(broker, topic, published, timeout=60.0):
    """Waits until GET /stats shows every event handed over to subscribers of `topic`, or the
    count stayed the same for 1.5 s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        status, body = broker.http("GET", "/stats")
        assert status == 200, (status, body)
        delivered = next((t["delivered"] for t in body["topics"] if t["topic"] == topic), 0)
        if delivered >= published:
            return
        if delivered != last:
            last, since = delivered, time.monotonic()
        elif time.monotonic() - since >= 1.5:
            return
        time.sleep(0.1)
    raise AssertionError(f"deliveries of {topic} still moving after {timeout} s (last {last})")


def test_ephemeral_queue_overflow_closes_with_1008(make_broker):
    """An ephemeral subscriber that stops reading is closed with 1008 (and a reason) once more
    than BUS_EPHEMERAL_QUEUE (50) frames are queued for it, instead of being buffered without
    bound; when it reads again it gets the backlog and then the close frame; publishing is not
    blocked by it."""
    limit, frame_bytes = 50, 50_000
    broker = make_broker(BUS_EPHEMERAL_QUEUE=str(limit))
    topic = unique("tail")
    raw = RawWS(broker.port)  # tiny receive buffer, reads nothing until told to
    try:
        raw.send_text(json.dumps({"type": "SUBSCRIBE", "topic": topic, "rid": "tail"}))
        op, data = raw.read_frame(time.monotonic() + 5)
        assert op == 1 and json.loads(data)["type"] == "SUBSCRIBED", (op, data)

        # Publish until the bytes sent to the subscriber surely exceed everything the kernel
        # can buffer (the server's send buffer autotunes up to tcp_wmem max) plus `limit`
        # queued frames, with a margin.
        needed = (max_socket_send_buffer() + 256 * 1024) // frame_bytes + limit + 40
        blob = "p" * frame_bytes
        pub = broker.ws()
        published = 0
        while published < needed:
            pub.publish_many(topic, [{"i": published + i, "blob": blob} for i in range(10)], timeout=30)
            published += 10

        # The broker may still be handing the events to the subscriber's queue (the change feed
        # of a slow store lags behind the confirmations): wait until it stops (all handed over,
        # or the subscriber closed), as a subscriber that stopped reading would.
        _wait_until_deliveries_settle(broker, topic, published)

        # The subscriber resumes reading after a pause of 1 s (a GC pause, a busy UI thread):
        # it must still find the close frame with 1008 after the backlog. This pause is part
        # of the scenario, not a wait for the server (the server's close handshake allows 2 s).
        time.sleep(1.0)
        deadline = time.monotonic() + 10
        messages, close_code = 0, None
        while True:
            try:
                op, data = raw.read_frame(deadline)
            except (EOFError, ConnectionResetError):
                raise AssertionError(
                    f"connection ended without a close frame after {messages} MESSAGEs"
                ) from None
            except (socket.timeout, TimeoutError):
                raise AssertionError(
                    f"no close within the deadline after {messages} of {published} MESSAGEs"
                ) from None
            if op == 1:
                messages += 1
                continue
            if op == 8:
                close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                reason = data[2:].decode(errors="replace")
                break
        assert close_code == 1008, close_code
        assert reason, "the close frame carries no reason"
        assert messages < published, "the subscriber got everything: nothing was bounded"
        # the broker is healthy and the events are all stored
        assert broker.high_watermark(topic) == published
    finally:
        raw.close()
