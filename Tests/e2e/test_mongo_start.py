"""Starting on MongoDB the way a new user does (SPEC §7, §9): `MONGO_URL` in the forms people
paste, and a broker killed and started again with its default replica id, which takes its own
leases back at once instead of waiting out the lease TTL. MongoDB mode only."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from support.mongo import mongo_client, store_mode
from support.names import unique

pytestmark = pytest.mark.skipif(store_mode() != "mongo", reason="MongoDB store tests")


def _server_prefix() -> str:
    """`mongodb://hosts` of the server under test, without path and options."""
    match = re.match(r"^(mongodb(?:\+srv)?://[^/?]+)", os.environ["MONGO_URL"])
    assert match, os.environ["MONGO_URL"]
    return match.group(1)


def _client():
    return mongo_client()


def _publish_and_consume(broker, topic: str) -> None:
    reply = broker.ws().publish(topic, {"n": 1})
    assert reply["offset"] == 1
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "earliest"})
    msg = sub.recv_type("MESSAGE")
    assert msg["envelope"]["payload"] == {"n": 1}
    sub.ack(msg)
    broker.wait_committed(topic, "g", 1)


def test_trailing_slash_uri_uses_the_default_database(make_broker):
    """`mongodb://host:port/` (nothing after the slash) starts, and with MONGO_DB unset the
    broker uses `bus`."""
    topic = unique("slash")
    broker = make_broker(MONGO_URL=_server_prefix() + "/", MONGO_DB="")
    _publish_and_consume(broker, topic)
    assert _client()["bus"].events.count_documents({"topic": topic}) == 1


def test_database_in_the_uri_path_is_used_when_mongo_db_is_unset(make_broker):
    db = f"bus_e2e_path_{uuid.uuid4().hex[:10]}"
    topic = unique("path")
    broker = make_broker(MONGO_URL=f"{_server_prefix()}/{db}?serverSelectionTimeoutMS=3000", MONGO_DB="")
    _publish_and_consume(broker, topic)
    assert _client()[db].events.count_documents({"topic": topic}) == 1


def test_mongo_db_wins_over_the_uri_path(make_broker):
    path_db = f"bus_e2e_lose_{uuid.uuid4().hex[:10]}"
    env_db = f"bus_e2e_win_{uuid.uuid4().hex[:10]}"
    topic = unique("wins")
    broker = make_broker(MONGO_URL=f"{_server_prefix()}/{path_db}", MONGO_DB=env_db)
    _publish_and_consume(broker, topic)
    client = _client()
    assert client[env_db].events.count_documents({"topic": topic}) == 1
    assert client[path_db].events.count_documents({"topic": topic}) == 0


def test_default_replica_ids_are_stable_per_host_and_port(make_broker):
    a = make_broker()
    b = make_broker()
    ids = []
    for broker in (a, b):
        status, stats = broker.http("GET", "/stats")
        assert status == 200
        assert stats["replica"].endswith(f":{broker.port}"), stats["replica"]
        ids.append(stats["replica"])
    assert ids[0] != ids[1]
    a.kill9()
    a.restart()
    assert a.http("GET", "/stats")[1]["replica"] == ids[0]


def test_restart_after_kill9_resumes_without_waiting_for_the_lease_ttl(make_broker):
    """With the default replica id and the default 10 s lease TTL, a broker killed with SIGKILL
    and started again on the same port takes its own lease back with a raised epoch and
    redelivers the unacked message within a few seconds, far below the TTL."""
    db = f"bus_e2e_restart_{uuid.uuid4().hex[:10]}"
    broker = make_broker(MONGO_DB=db, BUS_LEASE_TTL_MS="10000")
    topic = unique("restart")
    sub = broker.ws()
    sub.subscribe(topic, "g", from_={"kind": "earliest"})
    broker.ws().publish_many(topic, [{"i": 1}, {"i": 2}])
    first, second = sub.recv_messages(2)
    sub.ack(first)
    broker.wait_committed(topic, "g", 1)
    epoch_before = _client()[db].leases.find_one({"_id": f"{topic}:0:g"})["epoch"]

    broker.kill9()
    broker.restart()
    again = broker.ws()
    again.subscribe(topic, "g")
    # The TTL is 10 s: a broker that waited for its old lease to expire would miss this deadline.
    msg = again.recv_type("MESSAGE", timeout=5)
    assert msg["offset"] == 2
    lease = _client()[db].leases.find_one({"_id": f"{topic}:0:g"})
    assert lease["owner"].endswith(f":{broker.port}")
    assert lease["epoch"] > epoch_before
    again.ack(msg)
    broker.wait_committed(topic, "g", 2)
