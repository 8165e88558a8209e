"""Durability across kill -9 and graceful shutdown."""

import time

from support.names import unique
from support.ws import RawWS


def test_kill9_keeps_events_and_committed_position(broker):
    """200 confirmed events and a committed position of 120 survive kill -9: after a restart the
    group resumes at 121, all 200 events are readable and the next publish gets offset 201."""
    topic, group = unique("k9"), "g"
    pub = broker.ws()
    replies = pub.publish_many(topic, [{"i": i} for i in range(1, 201)])
    assert [r["offset"] for r in replies] == list(range(1, 201))
    ids = [r["id"] for r in replies]

    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, max_inflight=50)
    acked = 0
    while acked < 120:
        m = sub.recv_type("MESSAGE")
        assert m["offset"] == acked + 1, f"expected offset {acked + 1}, got {m['offset']}"
        sub.ack(m)
        acked += 1
    broker.wait_committed(topic, group, 120)

    assert broker.kill9() == -9
    broker.restart()

    assert broker.committed(topic, group) == 120
    stored = broker.read_all_events(topic)
    assert [e["offset"] for e in stored] == list(range(1, 201))
    assert [e["id"] for e in stored] == ids
    assert [e["payload"] for e in stored] == [{"i": i} for i in range(1, 201)]

    sub = broker.ws()
    sub.subscribe(topic, group)
    first = sub.recv_type("MESSAGE")
    assert first["offset"] == 121
    assert first["envelope"]["payload"] == {"i": 121}

    assert broker.ws().publish(topic, {"i": 201})["offset"] == 201


def test_kill9_right_after_confirmation(broker):
    """A PUBLISHED confirmation means durable: events confirmed just before kill -9 are there
    after the restart, with their ids, and duplicate detection still knows their ids."""
    topic = unique("k9c")
    ws = broker.ws()
    replies = ws.publish_many(topic, [{"i": i} for i in range(1, 51)])
    last = ws.publish(topic, {"i": 51}, id="last-one")
    assert last["offset"] == 51
    broker.kill9()
    broker.restart()
    stored = broker.read_all_events(topic)
    assert [e["offset"] for e in stored] == list(range(1, 52))
    assert [e["id"] for e in stored[:50]] == [r["id"] for r in replies]
    again = broker.ws().publish(topic, {"i": "again"}, id="last-one")
    assert again["duplicate"] is True and again["offset"] == 51
    assert broker.high_watermark(topic) == 51


def test_topic_config_survives_restart(broker):
    """A topic config set with POST /topics survives kill -9."""
    topic = unique("cfgk9")
    broker.create_topic(topic, partitions=3, maxAttempts=2)
    broker.kill9()
    broker.restart()
    status, body = broker.http("GET", f"/topics/{topic}")
    assert status == 200, body
    assert body["config"]["partitions"] == 3
    assert body["config"]["maxAttempts"] == 2


def test_attempts_survive_restart(broker):
    """Attempts are persisted when a message is redelivered: after a NACK (attempt 2 delivered)
    and kill -9, the next delivery is not attempt 1 again."""
    topic, group = unique("att"), "g"
    broker.create_topic(topic, maxAttempts=10)
    broker.ws().publish(topic, {"x": 1})
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"})
    m = sub.recv_type("MESSAGE")
    assert m["attempt"] == 1
    sub.nack(m, reason="crash soon")
    m2 = sub.recv_type("MESSAGE")
    assert (m2["offset"], m2["attempt"]) == (1, 2)
    broker.kill9()
    broker.restart()
    sub = broker.ws()
    sub.subscribe(topic, group)
    m3 = sub.recv_type("MESSAGE")
    assert m3["offset"] == 1
    assert m3["attempt"] >= 2, f"attempts were lost across the restart: attempt {m3['attempt']}"


def test_sigterm_exits_zero(broker):
    """SIGTERM shuts the broker down gracefully with exit status 0, and the data is there
    after a restart."""
    topic = unique("term")
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 4)])
    assert broker.stop() == 0
    broker.restart()
    assert [e["offset"] for e in broker.read_all_events(topic)] == [1, 2, 3]


def test_sigterm_with_open_subscriber_exits_zero(broker):
    """SIGTERM with a connected WebSocket subscriber (holding an unacked message) still exits 0
    within the stop deadline, closing the client's connection."""
    topic = unique("term2")
    sub = broker.ws()
    sub.subscribe(topic, "g")
    broker.ws().publish(topic, {"x": 1})
    assert sub.recv_type("MESSAGE")["offset"] == 1
    # keep the client around (not closed by us) while the broker shuts down
    broker._clients.remove(sub)
    try:
        assert broker.stop() == 0
        code, _ = sub.wait_closed(timeout=5)
        assert code is None or code in (1000, 1001, 1006, 1012), code
    finally:
        sub.close()


def test_sigterm_with_unresponsive_client_exits_zero(broker):
    """A WebSocket client that stopped reading (it never answers the close handshake) must not
    hold up a graceful shutdown: SIGTERM still exits 0 within the 10 s stop deadline."""
    raw = RawWS(broker.port)
    try:
        t0 = time.monotonic()
        code = broker.stop()
        elapsed = time.monotonic() - t0
        assert code == 0, f"exit status {code} after {elapsed:.1f}s (negative: killed by the test)"
    finally:
        raw.close()
