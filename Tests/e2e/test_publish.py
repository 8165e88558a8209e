"""Publishing over WebSocket: offsets, ids, idempotency, partitioning, envelopes."""

import re

from support.names import js_hash, partition_for, unique
from support.waits import now_ms

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_offsets_start_at_one_and_grow(broker):
    """A new topic has one partition; offsets are 1, 2, 3, ... in publish order; ids are
    distinct UUIDv7 strings; the rid is echoed; duplicate is false."""
    topic = unique("pub")
    ws = broker.ws()
    replies = [ws.publish(topic, {"n": i}, rid=f"r{i}") for i in range(1, 6)]
    for i, r in enumerate(replies, start=1):
        assert r["type"] == "PUBLISHED"
        assert r["topic"] == topic
        assert r["partition"] == 0
        assert r["offset"] == i
        assert r["rid"] == f"r{i}"
        assert r["duplicate"] is False
        assert isinstance(r["id"], str) and UUID_V7.match(r["id"]), f"not a UUIDv7: {r['id']!r}"
    assert len({r["id"] for r in replies}) == 5
    assert broker.high_watermark(topic) == 5
    # a second topic has its own offsets
    other = unique("pub")
    assert ws.publish(other, {"x": 1})["offset"] == 1
    assert ws.publish(topic, {"n": 6})["offset"] == 6


def test_envelope_round_trip(broker):
    """A MESSAGE carries the stored envelope: id, ts (epoch ms), topic, key, partition, offset,
    headers and the payload as the same JSON value, for every JSON payload kind."""
    topic = unique("env")
    payloads = [
        {"n": 1, "nested": {"list": [1, 2.5, "drei", None, True]}, "uni": "ключ 顧客 🚀"},
        [1, "two", {"three": 3}],
        "just a string with \"quotes\" and \\ backslash",
        42,
        -3.25,
        True,
        {},
    ]
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "earliest"})
    pub = broker.ws()
    before = now_ms()
    published = [
        pub.publish(topic, p, key="k-1", headers={"ct": "json", "trace": "abc"}) for p in payloads
    ]
    after = now_ms()
    msgs = sub.recv_messages(len(payloads))
    for p, pubd, m in zip(payloads, published, msgs):
        assert m["type"] == "MESSAGE"
        assert m["topic"] == topic
        assert m["group"] == "g"
        assert m["partition"] == 0
        assert m["offset"] == pubd["offset"]
        assert m["attempt"] == 1
        env = m["envelope"]
        assert env["id"] == pubd["id"]
        assert env["topic"] == topic
        assert env["key"] == "k-1"
        assert env["partition"] == 0
        assert env["offset"] == pubd["offset"]
        assert env["headers"] == {"ct": "json", "trace": "abc"}
        assert env["payload"] == p
        assert type(env["payload"]) is type(p)
        assert isinstance(env["ts"], int) and before - 1000 <= env["ts"] <= after + 1000
    # the same envelopes are readable over HTTP
    stored = broker.read_events(topic, 0, 1, 100)
    assert [e["payload"] for e in stored] == payloads
    assert [e["id"] for e in stored] == [p["id"] for p in published]


def test_duplicate_id_publish(broker):
    """A second PUBLISH with the same id on the same topic stores nothing and answers with the
    first one's partition/offset and duplicate=true; the same id on another topic is new."""
    topic = unique("dup")
    ws = broker.ws()
    ws.publish(topic, {"first": 0})
    first = ws.publish(topic, {"v": 1}, id="order-42", rid="a")
    assert first["offset"] == 2
    assert first["id"] == "order-42"
    assert first["duplicate"] is False
    again = ws.publish(topic, {"v": 2}, id="order-42", rid="b")
    assert again["duplicate"] is True
    assert again["rid"] == "b"
    assert again["id"] == "order-42"
    assert (again["partition"], again["offset"]) == (first["partition"], first["offset"])
    # over HTTP too
    status, body = broker.http("POST", f"/topics/{topic}/events", {"payload": {"v": 3}, "id": "order-42"})
    assert status == 200, body
    assert body["duplicate"] is True and body["offset"] == 2 and body["partition"] == 0
    # nothing new stored; the stored event is the first one
    assert broker.high_watermark(topic) == 2
    events = broker.read_events(topic)
    assert [(e["offset"], e["id"], e["payload"]) for e in events][1] == (2, "order-42", {"v": 1})
    assert len(events) == 2
    # next publish continues at 3
    assert ws.publish(topic, {"v": 4})["offset"] == 3
    # the id is scoped by topic
    other = unique("dup")
    o = ws.publish(other, {"v": 1}, id="order-42")
    assert o["duplicate"] is False and o["offset"] == 1


KEYS = [
    "a",
    "cust-7",
    "order-123456",
    "user:42",
    "ключ-7",  # Cyrillic
    "顧客",  # CJK
    "🚀x",  # a surrogate pair + ASCII
    "é",  # U+00E9, one code unit (two UTF-8 bytes)
    "x" * 300,  # the hash wraps many times
    "Zürich-🙂-東京",
]


def test_key_partition_by_hash(broker):
    """With 7 partitions, every key goes to abs(h) % 7 with the JavaScript 32-bit hash over
    UTF-16 code units, and a key always goes to the same partition."""
    topic = unique("hash")
    cfg = broker.create_topic(topic, partitions=7)
    assert cfg["partitions"] == 7
    expected = {k: partition_for(k, 7) for k in KEYS}
    # the keys must actually spread (so the test can tell a wrong hash from a right one)
    assert len(set(expected.values())) >= 4
    ws = broker.ws()
    for k in KEYS:
        r = ws.publish(topic, {"k": k}, key=k)
        assert r["partition"] == expected[k], (
            f"key {k!r}: h={js_hash(k)} expected partition {expected[k]}, got {r['partition']}"
        )
    for k in KEYS:
        assert ws.publish(topic, {"again": k}, key=k)["partition"] == expected[k]
    # HTTP publish uses the same hash
    for k in KEYS[:5]:
        assert broker.http_publish(topic, {"http": k}, key=k)["partition"] == expected[k]
    # read back: each stored event's key belongs on its partition
    total = 0
    for p in range(7):
        for e in broker.read_all_events(topic, p):
            assert e["partition"] == p
            assert partition_for(e["key"], 7) == p, e
            total += 1
    assert total == 2 * len(KEYS) + 5


def test_key_hash_int32_min(broker):
    """A key whose 32-bit hash is exactly -2^31 (abs overflows in 32-bit arithmetic) goes to
    2147483648 % partitions, as in JavaScript, and the broker keeps working."""
    key = "xfjfz6f"
    assert js_hash(key) == -(2**31)
    topic = unique("hmin")
    broker.create_topic(topic, partitions=7)
    ws = broker.ws()
    r = ws.publish(topic, {"k": key}, key=key)
    assert r["partition"] == 2147483648 % 7
    assert ws.publish(topic, {"after": 1}, key="a")["partition"] == partition_for("a", 7)


def test_no_key_round_robin(broker):
    """Without a key, consecutive publishes go round-robin: 14 publishes on 7 partitions put
    exactly 2 events on each partition."""
    topic = unique("rr")
    broker.create_topic(topic, partitions=7)
    ws = broker.ws()
    parts = [ws.publish(topic, {"i": i})["partition"] for i in range(14)]
    assert sorted(parts) == sorted(list(range(7)) * 2), parts
    for p in range(7):
        assert broker.high_watermark(topic, p) == 2


def test_concurrent_publishers_get_distinct_contiguous_offsets(broker):
    """Four connections pipelining 100 publishes each to one partition get offsets 1..400, each
    exactly once, and every event is stored with the payload its publisher sent."""
    import threading

    topic = unique("conc")
    conns = [broker.ws() for _ in range(4)]
    results: dict[int, list] = {}
    errors = []

    def run(n, ws):
        try:
            results[n] = ws.publish_many(topic, [{"w": n, "i": i} for i in range(100)], timeout=30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, ws)) for n, ws in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    offsets = sorted(r["offset"] for rs in results.values() for r in rs)
    assert offsets == list(range(1, 401))
    # per connection, confirmations come in the order of the publishes
    for rs in results.values():
        assert [r["offset"] for r in rs] == sorted(r["offset"] for r in rs)
    stored = {e["offset"]: e["payload"] for e in broker.read_all_events(topic)}
    for n, rs in results.items():
        for i, r in enumerate(rs):
            assert stored[r["offset"]] == {"w": n, "i": i}


def test_large_payload_round_trip(broker):
    """A ~600 KB payload (under the default 1 MiB frame limit) is stored and delivered intact."""
    topic = unique("large")
    blob = "".join(chr(0x41 + (i * 7) % 26) for i in range(600_000))
    sub = broker.ws()
    sub.subscribe(topic, "g")
    r = broker.ws().publish(topic, {"blob": blob, "tail": "ü🚀"})
    m = sub.recv_type("MESSAGE")
    assert m["offset"] == r["offset"] == 1
    assert m["envelope"]["payload"] == {"blob": blob, "tail": "ü🚀"}
    assert broker.read_events(topic)[0]["payload"]["blob"] == blob
