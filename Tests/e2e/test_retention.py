"""Retention: a topic's `retentionMs` deletes old events; groups behind them move on at once."""

import time

from support.names import unique
from support.waits import wait_for


def test_retention_deletes_old_events_and_groups_skip_them(make_broker):
    broker = make_broker(BUS_RETENTION_INTERVAL_MS="300", BUS_GAP_TIMEOUT_MS="120000")
    topic, group = unique("ret"), "g"
    broker.create_topic(topic, partitions=1, retentionMs=1000)
    pub = broker.ws()
    # A group that commits its start before the old events exist, and then goes away.
    first = broker.ws()
    first.subscribe(topic, group, **{"from": {"kind": "earliest"}})
    first.close()
    old = [pub.publish(topic, {"old": i})["offset"] for i in range(3)]
    assert old == [1, 2, 3]
    # Wait until retention has removed them (they are older than 1 s).
    wait_for(lambda: broker.read_events(topic) == [], timeout=20, message="old events deleted")
    fresh = pub.publish(topic, {"new": 1})
    assert fresh["offset"] == 4, "offsets continue after retention"
    assert [e["offset"] for e in broker.read_events(topic)] == [4]
    # The group's position is 0: offsets 1-3 are gone, so it gets 4 without waiting for the
    # (2 min) gap timeout (the deadline below is far shorter), and its watermark moves past
    # the deleted range.
    sub = broker.ws()
    sub.subscribe(topic, group)
    msg = sub.recv_type("MESSAGE", timeout=20)
    assert msg["offset"] == 4 and msg["envelope"]["payload"] == {"new": 1}
    sub.ack(msg)
    broker.wait_committed(topic, group, 4)
    # A topic without retention keeps everything.
    other = unique("keep")
    pub.publish(other, {"x": 1})
    time.sleep(1.5)
    assert len(broker.read_events(other)) == 1
