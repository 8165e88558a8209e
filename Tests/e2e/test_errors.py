"""Bad input: every kind of bad frame gets ERROR bad_request (rid echoed) and the connection
keeps working; floods close with 1008; oversize frames close with 1009 and store nothing."""

import json
import os

import pytest
import websockets.exceptions

from support.names import unique

T = "errs.valid-topic"  # a valid topic name used inside bad frames


def _bad_frames():
    """(id, raw text, rid expected in the ERROR or None, topic that must stay empty or None)"""
    obj = lambda d: json.dumps(d)  # noqa: E731
    return [
        ("not-json", "{this is not json", None, None),
        ("empty-text", "", None, None),
        ("json-array", "[1,2]", None, None),
        ("json-string", '"x"', None, None),
        ("json-number", "42", None, None),
        ("json-null", "null", None, None),
        ("unknown-type", obj({"type": "FROBNICATE", "topic": T, "rid": "r-unknown"}), "r-unknown", None),
        ("missing-type", obj({"topic": T, "payload": {}, "rid": "r-notype"}), "r-notype", None),
        ("type-not-string", obj({"type": 7, "rid": "r-type7"}), "r-type7", None),
        ("publish-no-topic", obj({"type": "PUBLISH", "payload": {"a": 1}, "rid": "r-nt"}), "r-nt", None),
        ("publish-no-payload", obj({"type": "PUBLISH", "topic": "errs.nopayload", "rid": "r-np"}), "r-np", "errs.nopayload"),
        ("publish-topic-space", obj({"type": "PUBLISH", "topic": "bad topic!", "payload": 1, "rid": "r-bt"}), "r-bt", None),
        ("publish-topic-201", obj({"type": "PUBLISH", "topic": "a" * 201, "payload": 1, "rid": "r-long"}), "r-long", None),
        ("publish-topic-empty", obj({"type": "PUBLISH", "topic": "", "payload": 1, "rid": "r-empty"}), "r-empty", None),
        ("publish-topic-slash", obj({"type": "PUBLISH", "topic": "a/b", "payload": 1, "rid": "r-slash"}), "r-slash", None),
        ("publish-topic-not-string", obj({"type": "PUBLISH", "topic": 5, "payload": 1, "rid": "r-t5"}), "r-t5", None),
        ("publish-headers-int-value", obj({"type": "PUBLISH", "topic": "errs.h1", "payload": 1, "headers": {"a": 1}, "rid": "r-h1"}), "r-h1", "errs.h1"),
        ("publish-headers-list", obj({"type": "PUBLISH", "topic": "errs.h2", "payload": 1, "headers": ["a", "b"], "rid": "r-h2"}), "r-h2", "errs.h2"),
        ("publish-headers-nested", obj({"type": "PUBLISH", "topic": "errs.h3", "payload": 1, "headers": {"a": {"b": "c"}}, "rid": "r-h3"}), "r-h3", "errs.h3"),
        ("publish-key-not-string", obj({"type": "PUBLISH", "topic": "errs.k", "payload": 1, "key": 12, "rid": "r-k"}), "r-k", "errs.k"),
        ("subscribe-no-topic", obj({"type": "SUBSCRIBE", "group": "g", "rid": "r-snt"}), "r-snt", None),
        ("subscribe-bad-topic", obj({"type": "SUBSCRIBE", "topic": "bad topic!", "group": "g", "rid": "r-sbt"}), "r-sbt", None),
        ("subscribe-negative-inflight", obj({"type": "SUBSCRIBE", "topic": T, "group": "g", "max_inflight": -1, "rid": "r-neg"}), "r-neg", None),
        ("subscribe-from-offset-no-value", obj({"type": "SUBSCRIBE", "topic": T, "group": "g", "from": {"kind": "offset"}, "rid": "r-fo"}), "r-fo", None),
        ("subscribe-from-unknown-kind", obj({"type": "SUBSCRIBE", "topic": T, "group": "g", "from": {"kind": "nope"}, "rid": "r-fk"}), "r-fk", None),
        ("subscribe-from-timestamp-no-value", obj({"type": "SUBSCRIBE", "topic": T, "group": "g", "from": {"kind": "timestamp"}, "rid": "r-ft"}), "r-ft", None),
        ("ack-offset-string", obj({"type": "ACK", "topic": T, "partition": 0, "group": "g", "offset": "x", "rid": "r-ack"}), "r-ack", None),
        ("ack-offset-fraction", obj({"type": "ACK", "topic": T, "partition": 0, "group": "g", "offset": 1.5, "rid": "r-ackf"}), "r-ackf", None),
        ("ack-no-offset", obj({"type": "ACK", "topic": T, "partition": 0, "group": "g", "rid": "r-ackn"}), "r-ackn", None),
        ("nack-offset-string", obj({"type": "NACK", "topic": T, "partition": 0, "group": "g", "offset": "7", "rid": "r-nack"}), "r-nack", None),
        ("flow-credits-string", obj({"type": "FLOW", "topic": T, "group": "g", "credits": "many", "rid": "r-flow"}), "r-flow", None),
    ]


BAD = _bad_frames()


@pytest.mark.parametrize("raw,rid,untouched", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_frame_gets_error_and_connection_survives(shared, raw, rid, untouched):
    """The bad frame is answered with ERROR bad_request (rid echoed when the frame had one),
    nothing is stored, and a following PUBLISH on the same connection works."""
    ws = shared.ws()
    ws.send_raw(raw)
    err = ws.recv(timeout=5)
    assert err.get("type") == "ERROR", f"expected ERROR for {raw[:120]!r}, got {err}"
    assert err["code"] == "bad_request", err
    assert isinstance(err.get("message"), str) and err["message"], err
    if rid is None:
        assert err.get("rid") is None, err
    else:
        assert err.get("rid") == rid, err
    ws.expect_nothing(0.1)
    topic = unique("after-bad")
    r = ws.publish(topic, {"ok": True}, rid="after")
    assert (r["offset"], r["rid"]) == (1, "after")
    if untouched is not None:
        assert shared.high_watermark(untouched) in (None, 0)


def test_valid_topic_name_edges(shared):
    """Topic names of 1 and exactly 200 characters from letters, digits and ._- are valid."""
    ws = shared.ws()
    longest = "q" * 199 + "Z"
    assert len(longest) == 200
    for topic in ("x", "A-b_c.9", longest):
        r = ws.publish(topic, {"ok": 1})
        assert r["topic"] == topic


def test_ack_for_unknown_subscription_is_harmless(shared):
    """ACK/NACK for offsets that were never delivered do not break the connection (an ERROR
    reply is tolerated, the spec is silent)."""
    ws = shared.ws()
    ws.send({"type": "ACK", "topic": unique("nosub"), "partition": 0, "group": "g", "offset": 99})
    ws.send({"type": "NACK", "topic": unique("nosub"), "partition": 0, "group": "g", "offset": 99})
    topic = unique("after-ack")
    ws.send({"type": "PUBLISH", "topic": topic, "payload": 1, "rid": "p"})
    for _ in range(3):
        f = ws.recv()
        if f["type"] == "PUBLISHED":
            assert f["rid"] == "p" and f["offset"] == 1
            break
        assert f["type"] == "ERROR", f
    else:
        raise AssertionError("no PUBLISHED after the ACK/NACK")


def test_bad_frame_flood_closes_with_1008(make_broker):
    """With BUS_MAX_BAD_FRAMES=5, five bad frames get five ERRORs; the sixth within 10 s closes
    the connection with 1008. Other connections are unaffected."""
    broker = make_broker(BUS_MAX_BAD_FRAMES="5")
    bystander = broker.ws()
    ws = broker.ws()
    for i in range(5):
        ws.send_raw(json.dumps({"type": "NOPE", "rid": f"bad-{i}"}))
    errs = [ws.recv_type("ERROR") for _ in range(5)]
    assert [e["rid"] for e in errs] == [f"bad-{i}" for i in range(5)]
    ws.send_raw("not json at all")
    code, frames = ws.wait_closed(timeout=5)
    assert code == 1008, f"close code {code}, frames before close: {frames}"
    assert all(f.get("type") == "ERROR" for f in frames), frames
    topic = unique("flood")
    assert bystander.publish(topic, {"still": "fine"})["offset"] == 1


def test_oversize_frame_closes_with_1009_and_stores_nothing(make_broker):
    """With BUS_MAX_FRAME_BYTES=4096, a PUBLISH frame of ~8000 bytes closes the connection with
    1009 and nothing is stored; a frame under the limit still works."""
    broker = make_broker(BUS_MAX_FRAME_BYTES="4096")
    ok_topic, big_topic = unique("small"), unique("big")
    ws = broker.ws()
    small = {"type": "PUBLISH", "topic": ok_topic, "payload": {"blob": "s" * 3000}, "rid": "small"}
    assert len(json.dumps(small)) < 4096
    ws.send(small)
    r = ws.recv_type("PUBLISHED")
    assert r["offset"] == 1

    blob = os.urandom(4000).hex()[:7900]  # incompressible
    big = {"type": "PUBLISH", "topic": big_topic, "payload": {"blob": blob}, "rid": "big"}
    raw = json.dumps(big)
    assert 7900 < len(raw) < 8200
    ws.send_raw(raw)
    code, frames = ws.wait_closed(timeout=5)
    assert code == 1009, f"close code {code}, frames: {frames}"
    assert not any(f.get("type") == "PUBLISHED" for f in frames), frames

    status, body = broker.http("GET", f"/topics/{big_topic}/events?partition=0&from=1&limit=10")
    assert status == 404 or (status == 200 and body["events"] == []), (status, body)
    assert broker.high_watermark(big_topic) in (None, 0)
    # the broker is fine and the earlier event is intact
    assert broker.ws().publish(ok_topic, {"after": 1})["offset"] == 2
    assert broker.read_events(ok_topic)[0]["payload"] == {"blob": "s" * 3000}


def test_http_body_over_limit_is_413(make_broker):
    """With BUS_MAX_FRAME_BYTES=4096, an HTTP publish with an ~8000-byte body is refused with
    413 too_large and nothing is stored."""
    broker = make_broker(BUS_MAX_FRAME_BYTES="4096")
    topic = unique("big-http")
    status, body = broker.http("POST", f"/topics/{topic}/events", {"payload": {"blob": "z" * 8000}})
    assert status == 413, (status, body)
    assert body["error"]["code"] == "too_large", body
    assert isinstance(body["error"]["message"], str)
    assert broker.high_watermark(topic) in (None, 0)
    status, body = broker.http("POST", f"/topics/{topic}/events", {"payload": {"blob": "z" * 100}})
    assert status == 200 and body["offset"] == 1, body


@pytest.mark.parametrize(
    "method,path,body,status,code",
    [
        ("POST", "/topics/{t}/events", {"key": "k"}, 400, "bad_request"),  # no payload
        ("POST", "/topics/{t}/events", b"{not json", 400, "bad_request"),
        ("POST", "/topics/{t}/events", {"payload": 1, "headers": {"a": 1}}, 400, "bad_request"),
        ("POST", "/topics/bad%20topic!/events", {"payload": 1}, 400, "bad_request"),
        ("GET", "/topics/{t}", None, 404, "not_found"),
        ("POST", "/topics", {"partitions": 2}, 400, "bad_request"),  # no topic
        ("POST", "/topics", {"topic": "bad topic!", "partitions": 2}, 400, "bad_request"),
        ("POST", "/topics", {"topic": "{t}", "partitions": 0}, 400, "bad_request"),
    ],
    ids=[
        "publish-no-payload", "publish-not-json", "publish-bad-headers", "publish-bad-topic",
        "unknown-topic", "config-no-topic", "config-bad-topic", "config-zero-partitions",
    ],
)
def test_http_errors(shared, method, path, body, status, code):
    """HTTP errors use the status code and {"error":{"code","message"}}."""
    topic = unique("herr")
    path = path.replace("{t}", topic)
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("{t}", topic))
    got_status, got = shared.http(method, path, body)
    assert got_status == status, (got_status, got)
    assert got["error"]["code"] == code, got
    assert isinstance(got["error"]["message"], str) and got["error"]["message"], got
    assert shared.high_watermark(topic) in (None, 0)


def test_topic_partitions_cannot_shrink(shared):
    """POST /topics may grow partitions (1 -> 4) but shrinking (4 -> 2) is 400 and changes
    nothing."""
    topic = unique("shrink")
    shared.ws().publish(topic, {"i": 1})
    cfg = shared.create_topic(topic, partitions=4)
    assert cfg["topic"] == topic and cfg["partitions"] == 4
    status, body = shared.http("POST", "/topics", {"topic": topic, "partitions": 2})
    assert status == 400, (status, body)
    assert body["error"]["code"] == "bad_request"
    status, body = shared.http("GET", f"/topics/{topic}")
    assert status == 200
    assert body["config"]["partitions"] == 4
    assert [p["partition"] for p in body["partitions"]] == [0, 1, 2, 3]
    assert body["partitions"][0]["highWatermark"] == 1


def test_http_errors_on_existing_topic(shared):
    """Bad query parameters and a bad reset body on an existing topic are 400 bad_request, and
    the stored event is untouched."""
    topic = unique("herr2")
    shared.http_publish(topic, {"i": 1})
    for method, path, body in [
        ("GET", f"/topics/{topic}/events?partition=0&from=abc&limit=10", None),
        ("GET", f"/topics/{topic}/events?partition=x&from=1&limit=10", None),
        ("POST", f"/groups/g/topics/{topic}/reset", {"from": {"kind": "nope"}}),
        ("POST", f"/groups/g/topics/{topic}/reset", {"from": {"kind": "offset"}}),
    ]:
        status, got = shared.http(method, path, body)
        assert status == 400, (method, path, status, got)
        assert got["error"]["code"] == "bad_request", (path, got)
    assert [e["payload"] for e in shared.read_events(topic)] == [{"i": 1}]


def test_fragmented_message_over_the_limit_closes_and_releases_the_subscription(make_broker):
    """A message sent in fragments, each under BUS_MAX_FRAME_BYTES but together over it, closes
    the connection with 1009; its group membership ends, so its unacked message goes to the
    group's other member (attempt 2) instead of waiting for timeouts on a dead connection."""
    broker = make_broker(BUS_MAX_FRAME_BYTES="4096", BUS_ACK_TIMEOUT_MS="60000")
    topic, group = unique("frag"), "g"
    victim = broker.ws()
    victim.subscribe(topic, group, max_inflight=1)
    broker.ws().publish(topic, {"n": 1})
    assert victim.recv_type("MESSAGE")["offset"] == 1
    other = broker.ws()
    other.subscribe(topic, group, max_inflight=1)
    # Three fragments of 3000 bytes: each frame is fine, the message is not. The broker checks
    # the size as fragment headers arrive, so it may close before the last fragment is sent.
    try:
        victim.conn.send(iter(["x" * 3000, "y" * 3000, "z" * 3000]))
    except websockets.exceptions.ConnectionClosedError:
        pass
    code, _ = victim.wait_closed(timeout=5)
    assert code == 1009, code
    msg = other.recv_type("MESSAGE", timeout=5)
    assert (msg["offset"], msg["attempt"]) == (1, 2)
