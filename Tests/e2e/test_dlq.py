"""The DLQ HTTP API (SPEC §14): `GET /topics/{t}/dlq?group=&limit=` lists dead letters with
their `x-original-*` headers, `POST /topics/{t}/dlq/redrive` sends them back to the topic under
derived ids (a second redrive stores nothing), `POST /topics/{t}/dlq/purge` deletes them; with
authentication on, listing needs subscribe permission on `TOPIC.DLQ` and the changes need admin."""

from __future__ import annotations

from support.auth import Credentials, HTTPAs
from support.names import unique
from support.waits import wait_for


def dead_letter(broker, topic: str, group: str, payloads: list, reason: str) -> None:
    """Each payload published, delivered to `group` (a new group, from latest) and NACKed once
    (maxAttempts 1): a dead letter each."""
    ws = broker.ws()
    ws.subscribe(topic, group=group, from_={"kind": "latest"})
    for i, payload in enumerate(payloads):
        ws.publish(topic, payload, key=f"{group}-{i}", headers={"ct": "json"})
    for message in ws.recv_messages(len(payloads), timeout=10):
        ws.nack(message, reason=reason)
    ws.barrier()
    ws.close()


def dlq(broker, topic: str, query: str = "") -> list[dict]:
    status, body = broker.http("GET", f"/topics/{topic}/dlq{query}")
    assert status == 200, (status, body)
    assert body["topic"] == topic, body
    return body["deadLetters"]


def test_list_filter_redrive_twice_and_purge(broker):
    topic = unique("dlq")
    broker.create_topic(topic, maxAttempts=1)
    dead_letter(broker, topic, "billing", [{"i": 0}, {"i": 1}], "no money")
    dead_letter(broker, topic, "shipping", [{"i": 2}], "no truck")
    wait_for(lambda: len(dlq(broker, topic)) == 3, 10, message="three dead letters")

    listed = dlq(broker, topic)
    assert [d["offset"] for d in listed] == [1, 2, 3]
    assert sorted(d["payload"]["i"] for d in listed) == [0, 1, 2]
    for d in listed:
        h = d["headers"]
        assert h["x-original-topic"] == topic and h["x-attempts"] == "1" and h["ct"] == "json", h
        assert h["x-last-reason"] == {"billing": "no money", "shipping": "no truck"}[h["x-original-group"]], h
    assert sorted(d["payload"]["i"] for d in dlq(broker, topic, "?group=billing")) == [0, 1]
    assert [d["payload"]["i"] for d in dlq(broker, topic, "?group=shipping")] == [2]
    assert dlq(broker, topic, "?group=nobody") == []
    assert dlq(broker, topic, "?limit=2") == listed[:2]
    for bad in ("?limit=0", "?limit=x", "?group=bad%20name"):
        status, body = broker.http("GET", f"/topics/{topic}/dlq{bad}")
        assert status == 400 and body["error"]["code"] == "bad_request", (bad, status, body)

    status, body = broker.http("POST", f"/topics/{topic}/dlq/redrive?group=billing", {})
    assert status == 200 and body["redriven"] == 2 and body["duplicates"] == 0, body
    assert all(r["published"]["topic"] == topic for r in body["results"]), body
    back = broker.read_events(topic, from_=4)
    assert sorted(e["payload"]["i"] for e in back) == [0, 1]
    assert all(e["headers"] == {"ct": "json"} and e["key"].startswith("billing-") for e in back), back

    status, body = broker.http("POST", f"/topics/{topic}/dlq/redrive", {})
    assert status == 200 and body["redriven"] == 1 and body["duplicates"] == 2, body
    assert broker.high_watermark(topic) == 6, "the second redrive stored only shipping's dead letter"

    status, body = broker.http("POST", f"/topics/{topic}/dlq/purge", {})
    assert status == 200 and body == {"topic": topic, "purged": 3}, body
    assert dlq(broker, topic) == []
    status, body = broker.http("POST", f"/topics/{topic}/dlq/redrive", {})
    assert status == 200 and body["redriven"] == 0 and body["results"] == [], body


def test_unknown_topic_and_topic_without_dead_letters(broker):
    topic = unique("dlq")
    broker.http_publish(topic, 1)
    assert dlq(broker, topic) == []
    assert broker.http("POST", f"/topics/{topic}/dlq/purge", {})[1] == {"topic": topic, "purged": 0}
    missing = unique("nosuch")
    for method, path in (("GET", f"/topics/{missing}/dlq"), ("POST", f"/topics/{missing}/dlq/redrive"),
                         ("POST", f"/topics/{missing}/dlq/purge")):
        status, body = broker.http(method, path, {} if method == "POST" else None)
        assert status == 404 and body["error"]["code"] == "not_found", (path, status, body)


def test_with_authentication_changes_need_admin(make_broker, tmp_path):
    creds = Credentials("token", tmp_path / "creds")
    creds.add("admin", publish=[">"], subscribe=[">"], admin=True)
    creds.add("ops", subscribe=["orders.>"])
    creds.add("app", subscribe=["orders.created"])
    b = make_broker(**creds.env())
    admin, ops, app = (HTTPAs(b, creds.tokens[n]) for n in ("admin", "ops", "app"))
    topic = "orders.created"
    admin.create_topic(topic, maxAttempts=1)
    admin.publish(topic, {"i": 0})
    status, _ = admin.http("GET", f"/topics/{topic}/dlq")
    assert status == 200

    # Listing reads TOPIC.DLQ: `orders.>` covers orders.created.DLQ, `orders.created` does not.
    assert ops.http("GET", f"/topics/{topic}/dlq")[0] == 200
    status, body = app.http("GET", f"/topics/{topic}/dlq")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    for action in ("redrive", "purge"):
        status, body = ops.http("POST", f"/topics/{topic}/dlq/{action}", {})
        assert status == 403 and body["error"]["code"] == "forbidden", (action, body)
        status, body = HTTPAs(b, None).http("POST", f"/topics/{topic}/dlq/{action}", {})
        assert status == 401, (action, body)
        assert admin.http("POST", f"/topics/{topic}/dlq/{action}", {})[0] == 200
