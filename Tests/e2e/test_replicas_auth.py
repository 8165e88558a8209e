"""Several replicas with authentication on (SPEC §7 and §12): every replica reads the same
tokens file, so a token works on each and through HAProxy, events carry the publisher's
principal whichever replica stored them, and a token removed from the file is revoked on every
replica that reloads it."""

from __future__ import annotations

import os
import signal

import pytest

from support.auth import Credentials, HTTPAs, assert_error, request, upgrade_status, wait_close, ws_authed
from support.mongo import store_mode
from support.names import unique
from support.replicas import start_replicas
from support.ws import WS

pytestmark = pytest.mark.skipif(store_mode() != "mongo", reason="replicas need the MongoDB store")


def test_replicas_share_the_tokens_file_behind_haproxy(make_broker, make_haproxy, tmp_path):
    creds = Credentials("token", tmp_path / "creds")
    creds.add("admin", publish=[">"], subscribe=[">"], admin=True)
    creds.add("billing", publish=["orders.>"], subscribe=["orders.>"], groups=["billing"])
    _, brokers = start_replicas(make_broker, 2, **creds.env())
    hap = make_haproxy([b.port for b in brokers])
    hap.wait_states({0: "UP", 1: "UP"})
    topic = unique("orders")
    HTTPAs(brokers[0], creds.tokens["admin"]).create_topic(topic, partitions=2)

    # The same token on each replica, refused without it or with a bad one.
    direct = []
    for b in brokers:
        assert upgrade_status(b, "not-a-token") == 401
        assert_error(request(b.ws(), {"type": "PUBLISH", "topic": topic, "payload": 1}), "unauthorized")
        ws = ws_authed(b, creds.tokens["billing"])
        assert request(ws, {"type": "PUBLISH", "topic": topic, "key": b.env_overrides["BUS_REPLICA_ID"],
                            "payload": {"via": b.port}})["type"] == "PUBLISHED"
        direct.append(ws)

    # Through HAProxy: a member of the group gets both events, stamped with the publisher.
    consumer = WS(hap.ws_url, additional_headers={"Authorization": f"Bearer {creds.tokens['billing']}"})
    try:
        reply = request(consumer, {"type": "SUBSCRIBE", "topic": topic, "group": "billing", "from": {"kind": "earliest"}})
        assert reply["type"] == "SUBSCRIBED", reply
        messages = consumer.recv_messages(2, timeout=15)
        assert sorted(m["envelope"]["payload"]["via"] for m in messages) == sorted(b.port for b in brokers)
        assert all(m["envelope"]["headers"]["x-bus-principal"] == "billing" for m in messages), messages
        for m in messages:
            consumer.ack(m)
    finally:
        consumer.close()

    # The token removed from the shared file: each replica that reloads it closes its connections.
    removed = creds.tokens["billing"]
    creds.remove("billing")
    creds.write()
    for b, ws in zip(brokers, direct):
        os.kill(b.proc.pid, signal.SIGHUP)
        code, reason, _ = wait_close(ws, timeout=10)
        assert code == 1008 and "revoked" in (reason or ""), (code, reason)
    assert all(upgrade_status(b, removed) == 401 for b in brokers)
