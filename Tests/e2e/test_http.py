"""The HTTP API: health, readiness, metrics, stats, topics, offsets, publish and read."""

import re

from support.mongo import store_mode
from support.names import unique
from support.waits import now_ms, wait_for


def test_healthz_and_readyz(broker):
    """GET /healthz -> 200 {"status":"ok"}; GET /readyz -> 200 {"ready":true} once the store is
    open (on MongoDB the gateway may answer a moment before, with 503 {"ready":false})."""
    assert broker.http("GET", "/healthz") == (200, {"status": "ok"})
    wait_for(lambda: broker.http("GET", "/readyz")[0] == 200, timeout=10, message="/readyz 200")
    assert broker.http("GET", "/readyz") == (200, {"ready": True})


def test_http_publish_and_read_range(broker):
    """POST /topics/{t}/events returns partition/offset/id/duplicate; GET .../events reads a
    range by partition, from and limit, returning whole envelopes."""
    topic = unique("hpub")
    before = now_ms()
    replies = [
        broker.http_publish(topic, {"i": i}, key=f"k{i}", headers={"n": str(i)}) for i in range(1, 8)
    ]
    for i, r in enumerate(replies, start=1):
        assert r["topic"] == topic
        assert r["partition"] == 0
        assert r["offset"] == i
        assert r["duplicate"] is False
        assert isinstance(r["id"], str) and r["id"]
    r = broker.http_publish(topic, ["custom"], id="my-id-1")
    assert (r["offset"], r["id"], r["duplicate"]) == (8, "my-id-1", False)

    page = broker.read_events(topic, 0, 3, 2)
    assert [e["offset"] for e in page] == [3, 4]
    e = page[0]
    assert e["topic"] == topic and e["partition"] == 0 and e["key"] == "k3"
    assert e["headers"] == {"n": "3"} and e["payload"] == {"i": 3}
    assert e["id"] == replies[2]["id"]
    assert before - 1000 <= e["ts"] <= now_ms() + 1000

    assert [e["offset"] for e in broker.read_events(topic, 0, 1, 100)] == list(range(1, 9))
    assert [e["offset"] for e in broker.read_events(topic, 0, 6, 100)] == [6, 7, 8]
    assert broker.read_events(topic, 0, 9, 100) == []
    last = broker.read_events(topic, 0, 8, 1)[0]
    assert last["id"] == "my-id-1" and last["payload"] == ["custom"]


def test_http_publish_is_delivered_to_ws_subscriber(broker):
    """An event published over HTTP reaches a WebSocket group subscriber with its envelope."""
    topic = unique("h2ws")
    sub = broker.ws()
    sub.subscribe(topic, "g")
    r = broker.http_publish(topic, {"via": "http"}, key="kk", headers={"src": "curl"})
    m = sub.recv_type("MESSAGE")
    assert m["offset"] == r["offset"] == 1
    env = m["envelope"]
    assert env["id"] == r["id"]
    assert (env["key"], env["headers"], env["payload"]) == ("kk", {"src": "curl"}, {"via": "http"})
    sub.ack(m)
    broker.wait_committed(topic, "g", 1)


def test_topics_config_and_listing(broker):
    """POST /topics creates/updates a config (returned), GET /topics lists configs (including
    implicitly created topics), GET /topics/{t} shows config and per-partition high-water marks."""
    explicit, implicit = unique("cfg"), unique("impl")
    cfg = broker.create_topic(explicit, partitions=3, maxAttempts=4, ackTimeoutMs=1500,
                              redeliveryBackoffMs=[100, 200])
    assert cfg["topic"] == explicit
    assert cfg["partitions"] == 3
    assert cfg["maxAttempts"] == 4
    assert cfg["ackTimeoutMs"] == 1500
    assert cfg["redeliveryBackoffMs"] == [100, 200]
    broker.ws().publish(implicit, {"x": 1})
    for k in ("a", "b", "c", "d", "e"):
        broker.http_publish(explicit, {"k": k}, key=k)

    status, body = broker.http("GET", "/topics")
    assert status == 200
    by_name = {c["topic"]: c for c in body["topics"]}
    assert by_name[explicit]["partitions"] == 3 and by_name[explicit]["maxAttempts"] == 4
    assert by_name[implicit]["partitions"] == 1

    status, body = broker.http("GET", f"/topics/{explicit}")
    assert status == 200
    assert body["config"]["topic"] == explicit and body["config"]["partitions"] == 3
    hwms = {p["partition"]: p["highWatermark"] for p in body["partitions"]}
    assert sorted(hwms) == [0, 1, 2]
    assert sum(hwms.values()) == 5

    # update: grow partitions, change maxAttempts
    cfg = broker.create_topic(explicit, partitions=5, maxAttempts=2)
    assert cfg["partitions"] == 5 and cfg["maxAttempts"] == 2
    status, body = broker.http("GET", f"/topics/{explicit}")
    assert body["config"]["partitions"] == 5 and body["config"]["maxAttempts"] == 2
    assert [p["partition"] for p in body["partitions"]] == [0, 1, 2, 3, 4]

    assert broker.http("GET", f"/topics/{unique('nope')}")[0] == 404


def test_offsets_with_lag(broker):
    """GET /topics/{t}/offsets shows per group and partition committed, highWatermark and
    lag = highWatermark - committed."""
    topic = unique("lag")
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 6)])
    fast, slow = broker.ws(), broker.ws()
    fast.subscribe(topic, "fast", from_={"kind": "earliest"})
    slow.subscribe(topic, "slow", from_={"kind": "earliest"})
    for m in fast.recv_messages(5):
        fast.ack(m)
    sm = slow.recv_messages(5)
    for m in sm[:2]:
        slow.ack(m)
    broker.wait_committed(topic, "fast", 5)
    broker.wait_committed(topic, "slow", 2)
    body = broker.offsets(topic)
    assert body["topic"] == topic
    groups = {g["group"]: g["partitions"] for g in body["groups"]}
    assert set(groups) == {"fast", "slow"}
    assert groups["fast"] == [{"partition": 0, "committed": 5, "highWatermark": 5, "lag": 0}]
    assert groups["slow"] == [{"partition": 0, "committed": 2, "highWatermark": 5, "lag": 3}]
    broker.ws().publish(topic, {"i": 6})
    wait_for(lambda: broker.group_partition(topic, "slow")["highWatermark"] == 6, 3,
             message="highWatermark 6")
    assert broker.group_partition(topic, "slow")["lag"] == 4
    assert broker.group_partition(topic, "fast")["lag"] == 1


def _group_stats(broker, topic, group, partition=0):
    status, body = broker.http("GET", "/stats")
    assert status == 200, body
    for g in body["groups"]:
        if (g["topic"], g["group"], g["partition"]) == (topic, group, partition):
            return g
    return None


def _topic_stats(broker, topic):
    status, body = broker.http("GET", "/stats")
    assert status == 200, body
    return next((t for t in body["topics"] if t["topic"] == topic), None)


def test_stats(broker):
    """GET /stats reports per-topic published/delivered counts and rates, and per group and
    partition committed, highWatermark, lag, inflight vs maxInflight, oldest unacked age,
    redeliveries, dead letters and connections."""
    topic, group = unique("stats"), "g"
    broker.ws().publish_many(topic, [{"i": i} for i in range(1, 5)])
    sub = broker.ws()
    sub.subscribe(topic, group, from_={"kind": "earliest"}, max_inflight=2)
    m1, m2 = sub.recv_messages(2)
    sub.ack(m1)
    sub.ack(m2)
    m3, m4 = sub.recv_messages(2)
    assert (m3["offset"], m4["offset"]) == (3, 4)
    broker.wait_committed(topic, group, 2)

    status, body = broker.http("GET", "/stats")
    assert status == 200
    assert isinstance(body["replica"], str) and body["replica"]

    t = wait_for(lambda: (s := _topic_stats(broker, topic)) and s["delivered"] == 4 and s,
                 3, message="stats delivered == 4")
    assert t["published"] == 4
    assert isinstance(t["publishRate"], (int, float)) and t["publishRate"] >= 0
    assert isinstance(t["deliverRate"], (int, float)) and t["deliverRate"] >= 0

    g = wait_for(lambda: (s := _group_stats(broker, topic, group)) and s["committed"] == 2 and s,
                 3, message="stats committed == 2")
    assert g["highWatermark"] == 4
    assert g["lag"] == 2
    assert g["inflight"] == 2
    assert g["maxInflight"] == 2
    assert isinstance(g["oldestUnackedMs"], (int, float)) and g["oldestUnackedMs"] >= 0
    assert g["redeliveries"] == 0
    assert g["deadLetters"] == 0
    assert g["connections"] == 1

    # a NACK makes a redelivery; acking everything empties the in-flight set
    sub.nack(m3)
    again = sub.recv_type("MESSAGE")
    assert (again["offset"], again["attempt"]) == (3, 2)
    sub.ack(again)
    sub.ack(m4)
    broker.wait_committed(topic, group, 4)
    g = wait_for(lambda: (s := _group_stats(broker, topic, group)) and s["inflight"] == 0 and s,
                 3, message="stats inflight == 0")
    assert g["redeliveries"] == 1
    assert g["lag"] == 0


METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def _metric(text, name, topic):
    """Sum of the samples of `name` whose labels include topic="<topic>"."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or m["name"] != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        if labels.get("topic") == topic:
            total += float(m["value"])
            found = True
    return total if found else None


def test_metrics(broker):
    """GET /metrics is Prometheus text with bus_events_published_total and
    bus_events_delivered_total samples labelled by topic, counting this topic's events."""
    topic = unique("metrics")
    sub = broker.ws()
    sub.subscribe(topic, "g")
    broker.ws().publish_many(topic, [{"i": i} for i in range(3)])
    for m in sub.recv_messages(3):
        sub.ack(m)

    def scrape():
        status, headers, raw = broker.http_raw("GET", "/metrics")
        assert status == 200
        assert headers.get("Content-Type", "").startswith("text/plain"), headers.get("Content-Type")
        return raw.decode()

    text = wait_for(
        lambda: (t := scrape()) and _metric(t, "bus_events_published_total", topic) == 3
        and _metric(t, "bus_events_delivered_total", topic) == 3 and t,
        3, message="published/delivered metrics == 3",
    )
    assert "# TYPE bus_events_published_total counter" in text


def _sample(text, name, **want):
    """The value of the one sample of `name` whose labels include `want`, or None."""
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or m["name"] != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        if all(labels.get(k) == str(v) for k, v in want.items()):
            return float(m["value"])
    return None


def test_group_gauges(broker):
    """Per (topic, group, partition) gauges after a known sequence: 5 published, 5 delivered, 3
    acked → committed 3, lag 2, 2 in flight with a positive oldest-unacked age; after the other
    2 acks → lag 0, nothing in flight, age 0. `bus_connections` counts the open WebSockets."""
    topic = unique("gauges")
    sub = broker.ws()
    sub.subscribe(topic, "g", max_inflight=10, from_={"kind": "earliest"})
    broker.ws().publish_many(topic, [{"i": i} for i in range(5)])
    messages = sorted(sub.recv_messages(5), key=lambda m: m["offset"])
    for m in messages[:3]:
        sub.ack(m)
    labels = {"topic": topic, "group": "g", "partition": 0}

    def scrape():
        return broker.http_raw("GET", "/metrics")[2].decode()

    text = wait_for(lambda: (t := scrape()) and _sample(t, "bus_group_committed_offset", **labels) == 3 and t,
                    5, message="committed offset gauge 3")
    assert _sample(text, "bus_group_lag", **labels) == 2
    assert _sample(text, "bus_group_inflight", **labels) == 2
    assert _sample(text, "bus_group_oldest_unacked_age_seconds", **labels) > 0
    assert _sample(text, "bus_connections") >= 2
    assert "# TYPE bus_group_lag gauge" in text

    for m in messages[3:]:
        sub.ack(m)
    text = wait_for(lambda: (t := scrape()) and _sample(t, "bus_group_lag", **labels) == 0 and t,
                    5, message="lag gauge 0")
    assert _sample(text, "bus_group_committed_offset", **labels) == 5
    assert _sample(text, "bus_group_inflight", **labels) == 0
    assert _sample(text, "bus_group_oldest_unacked_age_seconds", **labels) == 0


LATENCY_HISTOGRAMS = ("bus_append_duration_seconds", "bus_commit_duration_seconds",
                      "bus_publish_to_delivery_seconds")
# The buckets the broker configures for its latency histograms (0.5 ms … 5 s, then +Inf).
LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf")]


def _histogram(text, name, **want):
    """(buckets {le: cumulative count}, sum, count) of the one series of histogram `name`
    whose labels include `want`; None when it has no series."""
    buckets, total, count = {}, None, None
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or not m["name"].startswith(name):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        if not all(labels.get(k) == str(v) for k, v in want.items()):
            continue
        suffix = m["name"][len(name):]
        if suffix == "_bucket":
            buckets[float(labels["le"])] = float(m["value"])
        elif suffix == "_sum":
            total = float(m["value"])
        elif suffix == "_count":
            count = float(m["value"])
    if count is None:
        return None
    return buckets, total, count


def _check_histogram(text, name, **labels):
    """The histogram has observations, the configured buckets, cumulative bucket counts ending
    in `+Inf` == `_count`, and a `_sum` a set of observations within its buckets can have."""
    found = _histogram(text, name, **labels)
    assert found is not None, f"no {name} series with {labels}"
    buckets, total, count = found
    assert count > 0, f"{name}{labels}: no observations"
    assert sorted(buckets) == LATENCY_BUCKETS, f"{name}: buckets {sorted(buckets)}"
    counts = [buckets[le] for le in sorted(buckets)]
    assert counts == sorted(counts), f"{name}: bucket counts are not cumulative: {counts}"
    assert buckets[float("inf")] == count, f"{name}: +Inf bucket {buckets[float('inf')]} != count {count}"
    # Each observation lies in (previous bound, bound]; the sum can be no more than every
    # observation at its bucket's bound (the +Inf ones are not bounded: only >= 5 s each).
    finite = [le for le in sorted(buckets) if le != float("inf")]
    upper = sum(le * (buckets[le] - (buckets[finite[i - 1]] if i else 0)) for i, le in enumerate(finite))
    beyond = count - buckets[finite[-1]]
    lower = sum((finite[i - 1] if i else 0) * (buckets[le] - (buckets[finite[i - 1]] if i else 0))
                for i, le in enumerate(finite)) + 5 * beyond
    assert total is not None and lower <= total + 1e-9, f"{name}: sum {total} below what its buckets hold ({lower})"
    if beyond == 0:
        assert total <= upper + 1e-9, f"{name}: sum {total} above what its buckets hold ({upper})"
    return count


def test_latency_histograms_and_wakeups(broker):
    """After 10 publishes that a group subscriber receives and acks (all committed), /metrics has
    the three latency histograms with observations, the configured buckets and consistent
    `_bucket`/`_sum`/`_count` (append latency has no labels; commit and publish-to-delivery are
    per topic), their HELP texts, and change-feed wake-ups for the topic. Each histogram counts
    batches, not events: never more observations than events."""
    topic = unique("latency")
    sub = broker.ws()
    sub.subscribe(topic, "g", max_inflight=100, from_={"kind": "earliest"})
    pub = broker.ws()
    for i in range(10):  # one at a time: several append batches and delivery batches
        pub.publish(topic, {"i": i})
    messages = sub.recv_messages(10)
    for m in messages:
        sub.ack(m)
    broker.wait_committed(topic, "g", 10)

    def scrape():
        return broker.http_raw("GET", "/metrics")[2].decode()

    text = wait_for(lambda: (t := scrape()) and (_histogram(t, "bus_commit_duration_seconds", topic=topic) or (0, 0, 0))[2] > 0
                    and t, 5, message="a commit observed")
    appends = _check_histogram(text, "bus_append_duration_seconds")
    commits = _check_histogram(text, "bus_commit_duration_seconds", topic=topic)
    deliveries = _check_histogram(text, "bus_publish_to_delivery_seconds", topic=topic)
    assert deliveries <= 10, f"{deliveries} publish-to-delivery observations for 10 events: not per batch"
    assert commits >= 1 and appends >= 1
    for name in LATENCY_HISTOGRAMS:
        assert f"# TYPE {name} histogram" in text
        assert re.search(rf"^# HELP {name} \S", text, re.M), f"{name} has no HELP text"
    wakeups = _sample(text, "bus_change_stream_wakeups_total", topic=topic)
    assert wakeups is not None and 1 <= wakeups <= 10, f"wake-ups {wakeups}: one per change notice, at most one per publish"
    assert "# TYPE bus_change_stream_rescans_total counter" in text
    if store_mode() != "mongo":
        # SQLite's feed hands every commit to the dispatchers before anything else can read
        # it, so the safety poll never finds what the feed missed. (A MongoDB change stream
        # can be a moment behind a poll, which then rescans: not asserted there.)
        assert _sample(text, "bus_change_stream_rescans_total", topic=topic) == 0
