"""Redelivery: ack timeout, NACK (with and without delay), attempts, dead letters.

Timers are checked from below only ("nothing before a safe fraction of the delay", measured
from a moment before the frame that starts the timer was sent, so load cannot make it fail);
waits for what must come use generous deadlines. How punctual the timers are is not asserted.
"""

import json
import time

from support.audit import AUDIT_TOPIC
from support.names import unique
from support.waits import wait_for


def test_ack_timeout_redelivers_with_attempt_2(broker):
    """A message not acked within the subscription's ack_timeout_ms (1 s) comes again with
    attempt 2 (not during the first 0.7 s after it was published); once acked it does not come
    again."""
    topic, group = unique("ato"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, ack_timeout_ms=1000)
    t0 = time.monotonic()  # the first delivery, and so its ack timer, starts after this
    broker.ws().publish(topic, {"x": 1}, key="k")
    first = sub.recv_type("MESSAGE")
    assert (first["offset"], first["attempt"]) == (1, 1)
    sub.expect_nothing(max(0.0, t0 + 0.7 - time.monotonic()))
    second = sub.recv_type("MESSAGE", timeout=10)
    assert second["offset"] == 1
    assert second["attempt"] == 2
    assert second["envelope"]["id"] == first["envelope"]["id"]
    assert second["envelope"]["payload"] == {"x": 1}
    sub.ack(second)
    sub.expect_nothing(0.7)
    broker.wait_committed(topic, group, 1)


def test_ack_timeout_counts_up(broker):
    """Each timeout ends an attempt: attempts 1, 2, 3 for the same offset."""
    topic, group = unique("ato3"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, ack_timeout_ms=200)
    broker.ws().publish(topic, {"x": 1})
    attempts = [sub.recv_type("MESSAGE", timeout=10) for _ in range(3)]
    assert [(m["offset"], m["attempt"]) for m in attempts] == [(1, 1), (1, 2), (1, 3)]
    sub.ack(attempts[-1])
    sub.expect_nothing(0.5)


def test_nack_without_delay_redelivers_now(broker):
    """NACK without delay_ms redelivers at once with attempt + 1; the next event is delivered
    too (order between the two is not prescribed), each exactly once."""
    topic, group = unique("nack0"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group, max_inflight=1)
    broker.ws().publish_many(topic, [{"i": 1}, {"i": 2}])
    m1 = sub.recv_type("MESSAGE")
    assert (m1["offset"], m1["attempt"]) == (1, 1)
    sub.nack(m1, reason="try again")
    got = []
    for _ in range(2):
        m = sub.recv_type("MESSAGE", timeout=10)
        got.append((m["offset"], m["attempt"]))
        sub.ack(m)
    assert sorted(got) == [(1, 2), (2, 1)], got
    sub.expect_nothing(0.3)
    broker.wait_committed(topic, group, 2)


def test_nack_with_delay(broker):
    """NACK with delay_ms=800 redelivers (attempt 2), not during the first 600 ms after the
    NACK was sent, and does after."""
    topic, group = unique("nackd"), "g"
    sub = broker.ws()
    sub.subscribe(topic, group)
    broker.ws().publish(topic, {"x": 1})
    m = sub.recv_type("MESSAGE")
    sub.nack(m, delay_ms=800, reason="later")
    sub.expect_nothing(0.6)  # the delay runs from when the broker read the NACK, after this
    again = sub.recv_type("MESSAGE", timeout=10)
    assert (again["offset"], again["attempt"]) == (1, 2)
    sub.ack(again)
    broker.wait_committed(topic, group, 1)


def _dlq_events(broker, topic):
    if broker.high_watermark(f"{topic}.DLQ") is None:
        return []
    return broker.read_all_events(f"{topic}.DLQ")


def _audit_dead_letters(broker, topic):
    if broker.high_watermark(AUDIT_TOPIC) is None:
        return []
    out = []
    status, body = broker.http("GET", f"/topics/{AUDIT_TOPIC}")
    for p in body["partitions"]:
        for e in broker.read_all_events(AUDIT_TOPIC, p["partition"]):
            payload = e["payload"]
            if isinstance(payload, dict) and payload.get("kind") == "dead_letter" and topic in json.dumps(payload):
                out.append(e)
    return out


def test_dead_letter_after_max_attempts(broker):
    """With maxAttempts 3, the third failed attempt sends the event to <topic>.DLQ with the
    x-original-* / x-attempts / x-last-reason headers, same key and payload; it is never
    delivered to the group again, counts as done, and an audit record is written."""
    topic, group = unique("dlq"), "billing"
    cfg = broker.create_topic(topic, partitions=1, maxAttempts=3)
    assert cfg["maxAttempts"] == 3
    pub = broker.ws()
    payload = {"order": 7, "items": ["a", "b"]}
    pub.publish(topic, {"warmup": True})  # offset 1, acked normally
    pub.publish(topic, payload, key="cust-9", headers={"ct": "json"})  # offset 2
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"})
    w = sub.recv_type("MESSAGE")
    assert w["offset"] == 1
    sub.ack(w)
    for attempt, reason in ((1, "r1"), (2, "r2"), (3, "boom: final")):
        m = sub.recv_type("MESSAGE", timeout=3)
        assert (m["offset"], m["attempt"]) == (2, attempt)
        sub.nack(m, reason=reason)
    # dead-lettered: never delivered to this group again, and it counts as done
    sub.expect_nothing(0.8)
    broker.wait_committed(topic, group, 2)

    dlq = wait_for(lambda: _dlq_events(broker, topic), 10, message=f"an event on {topic}.DLQ")
    assert len(dlq) == 1
    d = dlq[0]
    assert d["topic"] == f"{topic}.DLQ"
    assert d["key"] == "cust-9"
    assert d["payload"] == payload
    h = d["headers"]
    assert h["x-original-topic"] == topic
    assert h["x-original-partition"] == "0"
    assert h["x-original-offset"] == "2"
    assert h["x-attempts"] == "3"
    assert h["x-last-reason"] == "boom: final"
    assert all(isinstance(v, str) for v in h.values()), h

    # an ordinary topic: an ephemeral subscriber from earliest sees it
    watcher = broker.ws()
    watcher.subscribe(f"{topic}.DLQ", from_={"kind": "earliest"})
    seen = watcher.recv_type("MESSAGE")
    assert seen["envelope"]["payload"] == payload
    assert seen["envelope"]["headers"]["x-original-offset"] == "2"

    # a reconnecting member of the group does not get it either
    sub.close()
    again = broker.ws()
    again.subscribe(topic, group)
    again.expect_nothing(0.5)

    audits = wait_for(lambda: _audit_dead_letters(broker, topic), 10, message="a dead_letter audit record")
    assert len(audits) == 1, audits

    status, stats = broker.http("GET", "/stats")
    assert status == 200
    g = [g for g in stats["groups"] if (g["topic"], g["group"], g["partition"]) == (topic, group, 0)]
    assert len(g) == 1, stats["groups"]
    assert g[0]["deadLetters"] == 1
    assert g[0]["redeliveries"] == 2


def test_dead_letter_after_ack_timeouts(broker):
    """Timeouts count as failed attempts too: maxAttempts 2 + ack timeout 200 ms sends an
    unacked event to the DLQ after its second delivery, with x-attempts "2"."""
    topic, group = unique("dlqt"), "g"
    broker.create_topic(topic, maxAttempts=2)
    sub = broker.ws()
    sub.subscribe(topic, group, ack_timeout_ms=200)
    broker.ws().publish(topic, {"slow": True}, key="k")
    a1 = sub.recv_type("MESSAGE")
    a2 = sub.recv_type("MESSAGE", timeout=10)
    assert [(a1["offset"], a1["attempt"]), (a2["offset"], a2["attempt"])] == [(1, 1), (1, 2)]
    dlq = wait_for(lambda: _dlq_events(broker, topic), 10, message=f"an event on {topic}.DLQ")
    assert len(dlq) == 1
    assert dlq[0]["headers"]["x-attempts"] == "2"
    assert dlq[0]["headers"]["x-original-offset"] == "1"
    assert dlq[0]["payload"] == {"slow": True}
    sub.expect_nothing(0.5)
    broker.wait_committed(topic, group, 1)


def test_topic_backoff_applies_to_nack_without_delay(broker):
    """A topic's redeliveryBackoffMs [500, 1000] sets the delay before attempt 2 (500 ms) and
    attempt 3 (1000 ms) after NACKs without delay_ms: nothing comes back during the first 70 %
    of each delay (for attempt 3 that is longer than the first step, so the second step was
    used), and then it does."""
    topic, group = unique("backoff"), "g"
    cfg = broker.create_topic(topic, redeliveryBackoffMs=[500, 1000])
    assert cfg["redeliveryBackoffMs"] == [500, 1000]
    sub = broker.ws()
    sub.subscribe(topic, group)
    broker.ws().publish(topic, {"x": 1})
    m = sub.recv_type("MESSAGE")
    for attempt, delay in ((2, 0.5), (3, 1.0)):
        sub.nack(m)
        sub.expect_nothing(delay * 0.7)  # the delay runs from when the broker read the NACK
        m = sub.recv_type("MESSAGE", timeout=10)
        assert (m["offset"], m["attempt"]) == (1, attempt)
    sub.ack(m)
    broker.wait_committed(topic, group, 1)


def test_ack_timeout_precedence(make_broker):
    """The ack timeout is the subscription's ack_timeout_ms, else the topic's ackTimeoutMs, else
    BUS_ACK_TIMEOUT_MS."""
    broker = make_broker(BUS_ACK_TIMEOUT_MS="300")
    plain, slow_topic = unique("ackenv"), unique("acktopic")
    broker.create_topic(slow_topic, ackTimeoutMs=120_000)
    a, b, c = broker.ws(), broker.ws(), broker.ws()
    a.subscribe(plain, "g")  # env: 300 ms
    b.subscribe(slow_topic, "g1")  # topic: 2 min (never within this test)
    c.subscribe(slow_topic, "g2", ack_timeout_ms=300)  # subscription: 300 ms
    pub = broker.ws()
    pub.publish(plain, {"x": 1})
    pub.publish(slow_topic, {"x": 2})
    for s in (a, b, c):
        assert s.recv_type("MESSAGE")["attempt"] == 1
    assert a.recv_type("MESSAGE", timeout=10)["attempt"] == 2
    assert c.recv_type("MESSAGE", timeout=10)["attempt"] == 2
    b.expect_nothing(0.3)
