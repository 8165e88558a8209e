"""Tests of the MongoDB wire-protocol test double (mongo_double.py).

Each test talks to a real subprocess of the double over TCP with pymongo (and one
with the libmongoc C client, c_smoke.c).  Run:

    python3 -m pip install -r Tests/MongoDouble/requirements.txt
    python3 -m pytest -q Tests/MongoDouble
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import bson
import pytest
from bson import Int64, ObjectId, Timestamp
from pymongo import MongoClient, ReturnDocument, monitoring
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import DoubleProcess  # noqa: E402


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    d = DoubleProcess(log_path=tmp_path_factory.mktemp("double") / "double.log").start()
    yield d
    assert d.stop() == 0


@pytest.fixture
def client(double):
    c = double.client()
    yield c
    c.close()


@pytest.fixture
def db(client, request):
    name = "t_" + request.node.name[:40].replace("[", "_").replace("]", "_")
    client.drop_database(name)
    return client[name]


class CommandLog(monitoring.CommandListener):
    def __init__(self):
        self.names = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def next_change(stream, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        change = stream.try_next()
        if change is not None:
            return change
    raise AssertionError("no change event within %.1fs" % timeout)


def fail_point(client, mode, **data):
    return client.admin.command({"configureFailPoint": "failCommand", "mode": mode,
                                 "data": data})


# ---------------------------------------------------------------------------
# Handshake and basic commands
# ---------------------------------------------------------------------------


def test_handshake_replica_set_primary(double, client):
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["setName"] == "rs0"
    assert hello["hosts"] == ["127.0.0.1:%d" % double.port]
    assert hello["me"] == hello["primary"] == "127.0.0.1:%d" % double.port
    assert hello["maxWireVersion"] == 17 and hello["minWireVersion"] == 0
    assert hello["logicalSessionTimeoutMinutes"] == 30
    assert isinstance(hello["topologyVersion"]["processId"], ObjectId)
    assert isinstance(hello["operationTime"], Timestamp)
    assert "compression" not in hello
    legacy = client.admin.command("isMaster")
    assert legacy["ismaster"] is True and "isWritablePrimary" not in legacy
    assert client.primary == ("127.0.0.1", double.port)
    assert client.topology_description.topology_type_name == "ReplicaSetWithPrimary"
    assert client.admin.command("ping")["ok"] == 1.0
    info = client.server_info()
    assert info["version"].startswith("6.0") and info["versionArray"][0] == 6


def test_awaitable_hello_is_held(double, client):
    first = client.admin.command("hello")
    t0 = time.monotonic()
    again = client.admin.command({"hello": 1, "topologyVersion": first["topologyVersion"],
                                  "maxAwaitTimeMS": 300})
    assert time.monotonic() - t0 >= 0.25
    assert again["topologyVersion"] == first["topologyVersion"]
    # A stale topologyVersion is answered at once.
    stale = {"processId": ObjectId(), "counter": Int64(0)}
    t0 = time.monotonic()
    client.admin.command({"hello": 1, "topologyVersion": stale, "maxAwaitTimeMS": 5000})
    assert time.monotonic() - t0 < 2.5


def test_unknown_command_is_59(client):
    with pytest.raises(OperationFailure) as info:
        client.admin.command("noSuchThing")
    assert info.value.code == 59
    assert info.value.details["codeName"] == "CommandNotFound"
    assert info.value.details["errmsg"] == "no such command: 'noSuchThing'"
    assert info.value.details["ok"] == 0


def test_server_status_build_info_and_parameters(client):
    status = client.admin.command("serverStatus")
    assert status["process"] == "mongod" and status["connections"]["current"] >= 1
    fcv = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
    assert fcv["featureCompatibilityVersion"]["version"] == "6.0"
    assert client.admin.command("buildInfo")["maxBsonObjectSize"] == 16 * 1024 * 1024


# ---------------------------------------------------------------------------
# CRUD
# ---------------------------------------------------------------------------


def test_insert_find_update_upsert_delete(db):
    coll = db.items
    res = coll.insert_many([{"n": i, "kind": "odd" if i % 2 else "even"} for i in range(10)])
    assert len(res.inserted_ids) == 10
    assert coll.count_documents({}) == 10
    assert coll.count_documents({"kind": "odd"}) == 5
    assert coll.estimated_document_count() == 10
    assert [d["n"] for d in coll.find({"n": {"$gte": 7}}).sort("n", -1)] == [9, 8, 7]
    assert list(coll.find({"n": 3}, {"_id": 0, "kind": 1})) == [{"kind": "odd"}]
    assert [d["n"] for d in coll.find({}, skip=2, limit=3).sort("n", 1)] == [2, 3, 4]

    r = coll.update_one({"n": 1}, {"$set": {"tag": "x"}, "$inc": {"n": 100}})
    assert (r.matched_count, r.modified_count) == (1, 1)
    assert coll.find_one({"tag": "x"})["n"] == 101
    r = coll.update_many({"kind": "even"}, {"$set": {"even": True}})
    assert (r.matched_count, r.modified_count) == (5, 5)
    r = coll.update_many({"kind": "even"}, {"$set": {"even": True}})
    assert (r.matched_count, r.modified_count) == (5, 0)  # no-op updates modify nothing

    r = coll.update_one({"name": "new"}, {"$set": {"v": 1}, "$setOnInsert": {"created": 1}},
                        upsert=True)
    assert r.upserted_id is not None and r.matched_count == 0
    doc = coll.find_one({"name": "new"})
    assert doc == {"_id": r.upserted_id, "name": "new", "v": 1, "created": 1}
    r = coll.update_one({"name": "new"}, {"$set": {"v": 2}, "$setOnInsert": {"created": 9}},
                        upsert=True)
    assert r.upserted_id is None and coll.find_one({"name": "new"})["created"] == 1

    r = coll.replace_one({"name": "new"}, {"name": "new", "replaced": True})
    assert r.modified_count == 1
    assert coll.find_one({"name": "new"}) == {"_id": doc["_id"], "name": "new", "replaced": True}
    r = coll.replace_one({"_id": "fixed"}, {"x": 1}, upsert=True)
    assert r.upserted_id == "fixed" and coll.find_one({"_id": "fixed"}) == {"_id": "fixed", "x": 1}

    assert coll.delete_one({"kind": "odd"}).deleted_count == 1
    assert coll.delete_many({"kind": "odd"}).deleted_count == 4
    assert coll.delete_many({"kind": "nope"}).deleted_count == 0
    assert coll.count_documents({"kind": "odd"}) == 0
    assert sorted(coll.distinct("kind")) == ["even"]


def test_find_and_modify_inc_counter(db):
    counters = db.counters
    values = []
    for _ in range(3):
        doc = counters.find_one_and_update(
            {"_id": "orders:0"}, {"$inc": {"nextOffset": Int64(5)}}, upsert=True,
            return_document=ReturnDocument.AFTER)
        values.append(doc["nextOffset"])
        assert isinstance(doc["nextOffset"], Int64)  # 64-bit stays 64-bit
    assert values == [5, 10, 15]
    before = counters.find_one_and_update({"_id": "orders:0"}, {"$inc": {"nextOffset": 1}})
    assert before["nextOffset"] == 15
    assert counters.find_one_and_update({"_id": "missing"}, {"$inc": {"x": 1}}) is None
    projected = counters.find_one_and_update(
        {"_id": "orders:0"}, {"$max": {"hi": 7}}, projection={"_id": 0, "hi": 1},
        return_document=ReturnDocument.AFTER)
    assert projected == {"hi": 7}
    # Sort picks which document is modified; update pipelines work too.
    db.jobs.insert_many([{"p": 2, "s": "new"}, {"p": 9, "s": "new"}, {"p": 5, "s": "new"}])
    top = db.jobs.find_one_and_update({"s": "new"}, [{"$set": {"s": "taken", "was": "$s"}}],
                                      sort=[("p", -1)], return_document=ReturnDocument.AFTER)
    assert top["p"] == 9 and top["s"] == "taken" and top["was"] == "new"
    removed = db.jobs.find_one_and_delete({"s": "new"}, sort=[("p", 1)])
    assert removed["p"] == 2 and db.jobs.count_documents({}) == 2


def test_unique_index_duplicate_key(db):
    events = db.events
    name = events.create_index([("topic", 1), ("partition", 1), ("offset", 1)], unique=True)
    assert name == "topic_1_partition_1_offset_1"
    events.create_index([("topic", 1), ("id", 1)], unique=True)
    events.create_index([("topic", 1), ("partition", 1), ("ts", 1)])
    names = {ix["name"]: ix for ix in events.list_indexes()}
    assert set(names) == {"_id_", "topic_1_partition_1_offset_1", "topic_1_id_1",
                          "topic_1_partition_1_ts_1"}
    assert names["topic_1_id_1"]["unique"] is True

    events.insert_one({"topic": "orders", "partition": 0, "offset": 1, "id": "a"})
    with pytest.raises(DuplicateKeyError) as info:
        events.insert_one({"topic": "orders", "partition": 0, "offset": 1, "id": "b"})
    err = info.value
    assert err.code == 11000
    assert err.details["errmsg"] == (
        "E11000 duplicate key error collection: %s.events index: "
        "topic_1_partition_1_offset_1 dup key: { topic: \"orders\", partition: 0, "
        "offset: 1 }" % db.name)
    assert err.details["keyValue"] == {"topic": "orders", "partition": 0, "offset": 1}
    assert err.details["keyPattern"] == {"topic": 1, "partition": 1, "offset": 1}

    # Unordered batch: every good document lands, each bad one has its index.
    with pytest.raises(BulkWriteError) as info:
        events.insert_many([
            {"topic": "orders", "partition": 0, "offset": 2, "id": "c"},
            {"topic": "orders", "partition": 0, "offset": 3, "id": "a"},
            {"topic": "orders", "partition": 0, "offset": 4, "id": "d"},
        ], ordered=False)
    details = info.value.details
    assert details["nInserted"] == 2
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000)]
    # Ordered batch stops at the first error.
    with pytest.raises(BulkWriteError) as info:
        events.insert_many([
            {"topic": "orders", "partition": 0, "offset": 5, "id": "e"},
            {"topic": "orders", "partition": 0, "offset": 5, "id": "f"},
            {"topic": "orders", "partition": 0, "offset": 6, "id": "g"},
        ])
    assert info.value.details["nInserted"] == 1
    assert info.value.details["writeErrors"][0]["index"] == 1
    assert events.count_documents({}) == 4

    # Updates and upserts are checked too; _id is always unique.
    with pytest.raises(DuplicateKeyError):
        events.update_one({"id": "c"}, {"$set": {"offset": 1}})
    with pytest.raises(DuplicateKeyError):
        events.update_one({"id": "zz"}, {"$set": {"topic": "orders", "partition": 0,
                                                  "offset": 1}}, upsert=True)
    with pytest.raises(BulkWriteError) as info:
        db.other.insert_many([{"_id": 1}, {"_id": 1}])
    assert "index: _id_ dup key: { _id: 1 }" in info.value.details["writeErrors"][0]["errmsg"]
    with pytest.raises(OperationFailure) as info:
        events.find_one_and_update({"id": "c"}, {"$set": {"offset": 1}})
    assert info.value.code == 11000 and info.value.details["codeName"] == "DuplicateKey"

    # A unique index cannot be built over duplicates; dropping indexes works.
    db.dups.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure) as info:
        db.dups.create_index("k", unique=True)
    assert info.value.code == 11000
    events.drop_index("topic_1_id_1")
    events.insert_one({"topic": "orders", "partition": 0, "offset": 9, "id": "a"})
    with pytest.raises(OperationFailure) as info:
        events.drop_index("nope")
    assert info.value.code == 27


def test_sparse_and_partial_unique_indexes(db):
    db.s.create_index("email", unique=True, sparse=True)
    db.s.insert_many([{"a": 1}, {"a": 2}, {"email": "x"}])
    with pytest.raises(DuplicateKeyError):
        db.s.insert_one({"email": "x"})
    db.p.create_index("k", unique=True, partialFilterExpression={"live": True})
    db.p.insert_many([{"k": 1, "live": False}, {"k": 1, "live": False}, {"k": 1, "live": True}])
    with pytest.raises(DuplicateKeyError):
        db.p.insert_one({"k": 1, "live": True})
    db.m.create_index("m", unique=True)
    db.m.insert_one({"m": None})
    with pytest.raises(DuplicateKeyError):
        db.m.insert_one({"other": 1})  # missing counts as null


def test_cursor_batching_with_get_more(double, db):
    db.many.insert_many([{"i": i} for i in range(250)])
    listener = CommandLog()
    c = double.client(event_listeners=[listener])
    coll = c[db.name].many
    got = [d["i"] for d in coll.find({}, batch_size=40).sort("i", 1)]
    assert got == list(range(250))
    assert listener.names.count("getMore") == 6
    # An abandoned cursor is killed.
    cursor = coll.find({}, batch_size=10)
    next(cursor)
    cursor.close()
    assert "killCursors" in listener.names
    # limit and singleBatch
    assert len(list(coll.find({}, limit=15, batch_size=4))) == 15
    reply = c[db.name].command({"find": "many", "batchSize": 5, "singleBatch": True})
    assert reply["cursor"]["id"] == 0 and len(reply["cursor"]["firstBatch"]) == 5
    # aggregate cursors batch too
    res = list(coll.aggregate([{"$match": {"i": {"$lt": 150}}}, {"$sort": {"i": -1}},
                               {"$skip": 5}, {"$limit": 120}, {"$project": {"_id": 0, "i": 1}}],
                              batchSize=50))
    assert [d["i"] for d in res] == list(range(144, 24, -1))
    with pytest.raises(OperationFailure) as info:
        c[db.name].command({"getMore": Int64(12345), "collection": "many"})
    assert info.value.code == 43
    c.close()


def test_aggregate_group_count_and_list_commands(client, db):
    db.agg.insert_many([{"t": "a", "v": 1}, {"t": "b", "v": 2}, {"t": "a", "v": 3}])
    groups = list(db.agg.aggregate([{"$group": {"_id": "$t", "total": {"$sum": "$v"}}},
                                    {"$sort": {"_id": 1}}]))
    assert groups == [{"_id": "a", "total": 4}, {"_id": "b", "total": 2}]
    assert list(db.agg.aggregate([{"$match": {"t": "a"}}, {"$count": "n"}])) == [{"n": 2}]
    assert db.agg.count_documents({"v": {"$gt": 1}}) == 2
    db.create_collection("made")
    with pytest.raises(OperationFailure) as info:
        db.command({"create": "made"})
    assert info.value.code == 48
    assert set(db.list_collection_names()) == {"agg", "made"}
    assert db.name in client.list_database_names()
    db.drop_collection("made")
    assert db.list_collection_names() == ["agg"]
    with pytest.raises(OperationFailure) as info:
        db.command("drop", "made")
    assert info.value.code == 26


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _ms_floor(t):
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def test_now_and_cluster_time_in_update_pipelines(db):
    """$$NOW is the server's clock, one value for the whole statement; $add of a date and
    milliseconds is a date; $$CLUSTER_TIME is a Timestamp. Only in pipeline updates: an
    operator update stores the string, and $literal keeps it."""
    coll = db.leases
    coll.insert_many([{"_id": i, "ttl": 5000} for i in range(3)])
    before = _ms_floor(_utcnow())
    coll.update_many({}, [{"$set": {"x": {"$add": ["$$NOW", 10000]}, "t": "$$NOW",
                                    "c": "$$CLUSTER_TIME", "y": {"$add": [1000, "$$NOW", 500]},
                                    "z": {"$add": ["$$NOW", "$ttl"]},
                                    "n": {"$add": ["$$NOW", "$missing"]},
                                    "lit": {"$literal": "$$NOW"}}}])
    after = _utcnow()
    docs = list(coll.find().sort("_id", 1))
    now = docs[0]["t"]
    assert isinstance(now, datetime.datetime) and before <= now <= after
    for d in docs:
        assert d["t"] == now  # one $$NOW for every document of the statement
        assert d["x"] == now + datetime.timedelta(seconds=10)
        assert d["y"] == now + datetime.timedelta(milliseconds=1500)
        assert d["z"] == now + datetime.timedelta(seconds=5)
        assert d["n"] is None
        assert d["lit"] == "$$NOW"
        assert isinstance(d["c"], Timestamp) and d["c"].time >= int(before.timestamp()) - 1

    coll.update_one({"_id": 9}, [{"$set": {"expiresAt": {"$add": ["$$NOW", 10000]}}}],
                    upsert=True)
    assert coll.find_one({"_id": 9})["expiresAt"] >= before + datetime.timedelta(seconds=10)
    coll.update_one({"_id": 0}, {"$set": {"s": "$$NOW"}})
    assert coll.find_one({"_id": 0})["s"] == "$$NOW"


def test_now_in_find_and_modify_lease(db):
    """A lease taken with the database's clock: an expired lease is taken over through
    findAndModify with $expr on $$NOW and a pipeline update; a live one is not."""
    coll = db.leases
    now = _utcnow()
    coll.insert_many([
        {"_id": "expired", "owner": "other", "expiresAt": now - datetime.timedelta(seconds=5)},
        {"_id": "live", "owner": "other", "expiresAt": now + datetime.timedelta(seconds=60)}])

    def take(lease):
        return coll.find_one_and_update(
            {"_id": lease, "$or": [{"owner": "me"}, {"$expr": {"$lt": ["$expiresAt", "$$NOW"]}}]},
            [{"$set": {"owner": "me", "expiresAt": {"$add": ["$$NOW", 30000]},
                       "epoch": {"$add": [{"$ifNull": ["$epoch", 0]}, 1]}}}],
            return_document=ReturnDocument.AFTER)

    got = take("expired")
    assert got["owner"] == "me" and got["epoch"] == 1
    assert got["expiresAt"] >= _ms_floor(now) + datetime.timedelta(seconds=30)
    assert take("live") is None
    assert coll.find_one({"_id": "live"})["owner"] == "other"
    assert take("expired")["epoch"] == 2  # still ours


def test_now_in_aggregate_and_find_expr(db):
    coll = db.events
    now = _utcnow()
    coll.insert_many([{"_id": 1, "at": now - datetime.timedelta(hours=1)},
                      {"_id": 2, "at": now + datetime.timedelta(hours=1)},
                      {"_id": 3, "at": "$$NOW"}])
    out = list(coll.aggregate([
        {"$match": {"_id": {"$ne": 3}, "$expr": {"$lte": ["$at", "$$NOW"]}}},
        {"$project": {"now": "$$NOW", "soon": {"$add": ["$$NOW", 1000]},
                      "ago": {"$subtract": ["$$NOW", "$at"]}, "ct": "$$CLUSTER_TIME"}}]))
    assert [d["_id"] for d in out] == [1]
    assert out[0]["soon"] == out[0]["now"] + datetime.timedelta(seconds=1)
    assert 3_590_000 < out[0]["ago"] < 3_700_000
    assert isinstance(out[0]["ct"], Timestamp)
    later = {"_id": {"$ne": 3}, "$expr": {"$gt": ["$at", "$$NOW"]}}
    assert [d["_id"] for d in coll.find(later)] == [2]
    assert coll.count_documents(later) == 1
    assert coll.delete_many({"$or": [{"_id": 0}, later]}).deleted_count == 1
    # Outside $expr, "$$NOW" in a filter is a plain string.
    assert [d["_id"] for d in coll.find({"at": "$$NOW"})] == [3]
    assert [d["_id"] for d in coll.aggregate([{"$match": {"at": "$$NOW"}}])] == [3]
    # One date at most in an $add (mongod's error 16612).
    with pytest.raises(OperationFailure) as info:
        list(coll.aggregate([{"$project": {"x": {"$add": ["$$NOW", "$$NOW"]}}}]))
    assert info.value.code == 16612


def test_mul_keeps_int64_and_applies_positionally(db):
    coll = db.mul
    coll.insert_one({"_id": 1, "a": Int64(3), "b": 2, "arr": [{"x": 2}, {"x": 5}]})
    coll.update_one({"_id": 1, "arr.x": 5},
                    {"$set": {"s": 1}, "$mul": {"a": 2, "b": 1.5, "missing": 4, "arr.$.x": 10}})
    doc = coll.find_one()
    assert doc == {"_id": 1, "a": 6, "b": 3.0, "arr": [{"x": 2}, {"x": 50}], "s": 1, "missing": 0}
    assert isinstance(doc["a"], Int64)


# ---------------------------------------------------------------------------
# Change streams
# ---------------------------------------------------------------------------


def test_change_stream_match_from_second_client(double, db):
    other = double.client()
    try:
        pipeline = [{"$match": {"operationType": "insert", "fullDocument.topic": "orders"}}]
        with db.events.watch(pipeline, max_await_time_ms=200) as stream:
            assert stream.try_next() is None  # empty batch, stream alive
            assert stream.alive and stream.resume_token is not None  # postBatchResumeToken
            other[db.name].events.insert_one({"topic": "other", "offset": 1})
            other[db.name].events.insert_one({"topic": "orders", "offset": 1, "payload": {"a": 1}})
            change = next_change(stream)
            assert change["operationType"] == "insert"
            assert change["fullDocument"]["topic"] == "orders"
            assert change["fullDocument"]["payload"] == {"a": 1}
            assert change["ns"] == {"db": db.name, "coll": "events"}
            assert change["documentKey"] == {"_id": change["fullDocument"]["_id"]}
            assert isinstance(change["clusterTime"], Timestamp)
            assert isinstance(change["wallTime"], datetime.datetime)
            assert set(change["_id"]) == {"_data"}
            assert stream.try_next() is None  # the other topic was filtered out
    finally:
        other.close()


def test_change_stream_wakes_waiting_get_more(double, db):
    other = double.client()
    try:
        with db.events.watch(max_await_time_ms=5000) as stream:
            timer = threading.Timer(0.3, lambda: other[db.name].events.insert_one({"x": 1}))
            timer.start()
            t0 = time.monotonic()
            change = stream.try_next()  # one getMore that waits for the insert
            waited = time.monotonic() - t0
            timer.join()
            assert change is not None and change["fullDocument"]["x"] == 1
            assert waited < 4.5  # woken by the insert, not by maxTimeMS
    finally:
        other.close()


def test_change_stream_update_replace_delete_events(db):
    coll = db.docs
    with coll.watch(full_document="updateLookup", max_await_time_ms=100) as stream:
        coll.insert_one({"_id": 1, "a": 1, "b": {"c": 1}, "gone": True})
        coll.update_one({"_id": 1}, {"$set": {"a": 2, "b.c": 5}, "$unset": {"gone": ""}})
        coll.replace_one({"_id": 1}, {"z": 1})
        coll.delete_one({"_id": 1})
        kinds = [next_change(stream) for _ in range(4)]
    assert [k["operationType"] for k in kinds] == ["insert", "update", "replace", "delete"]
    upd = kinds[1]
    assert upd["updateDescription"]["updatedFields"] == {"a": 2, "b.c": 5}
    assert upd["updateDescription"]["removedFields"] == ["gone"]
    assert upd["fullDocument"] is None  # updateLookup happens at read time: deleted by now
    assert kinds[2]["fullDocument"] == {"_id": 1, "z": 1}
    assert kinds[3]["documentKey"] == {"_id": 1} and "fullDocument" not in kinds[3]
    tokens = [k["_id"]["_data"] for k in kinds]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4


def test_change_stream_resume_after_start_after_and_operation_time(db):
    coll = db.events
    with coll.watch(max_await_time_ms=100) as stream:
        coll.insert_one({"n": 1})
        first = next_change(stream)
        coll.insert_many([{"n": 2}, {"n": 3}])
        next_change(stream)
    for option in ("resume_after", "start_after"):
        with coll.watch(max_await_time_ms=100, **{option: first["_id"]}) as resumed:
            assert [next_change(resumed)["fullDocument"]["n"] for _ in range(2)] == [2, 3]
            assert resumed.try_next() is None
    with coll.watch(start_at_operation_time=first["clusterTime"],
                    max_await_time_ms=100) as at:
        assert [next_change(at)["fullDocument"]["n"] for _ in range(3)] == [1, 2, 3]
    # Resuming from a postBatchResumeToken (no event) also works.
    with coll.watch(max_await_time_ms=100) as stream:
        assert stream.try_next() is None
        pbrt = stream.resume_token
    coll.insert_one({"n": 4})
    with coll.watch(resume_after=pbrt, max_await_time_ms=100) as resumed:
        assert next_change(resumed)["fullDocument"]["n"] == 4


def test_change_stream_pipeline_with_now(db):
    """$$NOW in a change stream's stages is evaluated when the events are read."""
    pipeline = [{"$match": {"$expr": {"$lte": ["$wallTime", "$$NOW"]}}},
                {"$addFields": {"seenAt": "$$NOW"}}]
    with db.cs_now.watch(pipeline, max_await_time_ms=100) as stream:
        time.sleep(0.05)
        db.cs_now.insert_one({"x": 1})
        change = next_change(stream)
    assert change["fullDocument"]["x"] == 1
    assert isinstance(change["seenAt"], datetime.datetime)
    assert change["seenAt"] >= change["wallTime"]


def test_database_level_stream_and_drop_invalidates(db):
    with db.watch(max_await_time_ms=100) as dbstream, \
            db.gone.watch(max_await_time_ms=100) as collstream:
        db.gone.insert_one({"x": 1})
        db.other.insert_one({"y": 1})
        db.drop_collection("gone")
        assert next_change(collstream)["operationType"] == "insert"
        assert next_change(collstream)["operationType"] == "drop"
        inval = next_change(collstream)
        assert inval["operationType"] == "invalidate"
        assert not collstream.alive
        seen = [next_change(dbstream) for _ in range(3)]
        assert [(c["operationType"], c["ns"].get("coll")) for c in seen] == [
            ("insert", "gone"), ("insert", "other"), ("drop", "gone")]
    with db.gone.watch(start_after=inval["_id"], max_await_time_ms=100) as again:
        db.gone.insert_one({"x": 2})
        assert next_change(again)["fullDocument"]["x"] == 2
    with pytest.raises(OperationFailure) as info:
        db.gone.watch(resume_after=inval["_id"])
    assert info.value.code == 260


def test_change_stream_history_lost_286(tmp_path):
    d = DoubleProcess(history=5, log_path=tmp_path / "double.log").start()
    try:
        c = d.client()
        coll = c.hist.events
        with coll.watch(max_await_time_ms=100) as stream:
            coll.insert_one({"n": 0})
            old_token = next_change(stream)["_id"]
            coll.insert_many([{"n": i} for i in range(1, 4)])
            recent = [next_change(stream)["_id"] for _ in range(3)]
        coll.insert_many([{"n": i} for i in range(4, 8)])
        with pytest.raises(OperationFailure) as info:
            with coll.watch(resume_after=old_token) as s:
                s.try_next()
        assert info.value.code == 286
        assert info.value.details["codeName"] == "ChangeStreamHistoryLost"
        with pytest.raises(OperationFailure) as info:
            coll.watch(start_at_operation_time=Timestamp(1, 1))
        assert info.value.code == 286
        # Still within the last five events: fine.
        with coll.watch(resume_after=recent[-1], max_await_time_ms=100) as s:
            assert next_change(s)["fullDocument"]["n"] == 4
        # A live cursor that falls more than five events behind fails on getMore.
        with coll.watch(max_await_time_ms=100) as stream:
            assert stream.try_next() is None
            coll.insert_many([{"n": i} for i in range(10)])
            with pytest.raises(OperationFailure) as info:
                stream.try_next()
            assert info.value.code == 286
        c.close()
    finally:
        assert d.stop() == 0


# ---------------------------------------------------------------------------
# Fail points
# ---------------------------------------------------------------------------


def test_fail_command_error_code_times_one(client, db):
    assert fail_point(client, {"times": 1}, failCommands=["insert"], errorCode=2)["count"] == 0
    with pytest.raises(OperationFailure) as info:
        db.fp.insert_one({"a": 1})
    assert info.value.code == 2
    assert info.value.details["errmsg"] == "Failing command via 'failCommand' failpoint"
    db.fp.insert_one({"a": 2})  # the fail point fired once and turned itself off
    assert [d["a"] for d in db.fp.find()] == [2]
    # A retryable error on a retryable write is retried by the driver, once.
    fail_point(client, {"times": 1}, failCommands=["insert"], errorCode=91)
    db.fp.insert_one({"a": 3})
    assert db.fp.count_documents({"a": 3}) == 1
    # alwaysOn, then off; other commands are untouched.
    fail_point(client, "alwaysOn", failCommands=["find"], errorCode=96)
    try:
        with pytest.raises(OperationFailure) as info:
            db.fp.find_one()
        assert info.value.code == 96 and info.value.details["codeName"] == "OperationFailed"
        assert db.fp.count_documents({}) == 2  # aggregate is not listed
    finally:
        fail_point(client, "off")
    assert db.fp.find_one() is not None


def test_fail_command_close_connection_on_get_more(double, client, db):
    db.fc.insert_many([{"i": i} for i in range(10)])
    fail_point(client, {"times": 1}, failCommands=["getMore"], closeConnection=True)
    cursor = db.fc.find({}, batch_size=3)
    got = [next(cursor)["i"] for _ in range(3)]
    with pytest.raises(ConnectionFailure):
        for doc in cursor:
            got.append(doc["i"])
    assert got == [0, 1, 2]
    assert len(list(db.fc.find({}, batch_size=3))) == 10  # off again
    # A change stream resumes by itself after the connection is closed.
    with db.fc.watch(max_await_time_ms=100) as stream:
        assert stream.try_next() is None
        fail_point(client, {"times": 1}, failCommands=["getMore"], closeConnection=True)
        db.fc.insert_one({"i": 99})
        assert next_change(stream)["fullDocument"]["i"] == 99


def test_fail_command_block_connection_and_app_name(double, client, db):
    fail_point(client, {"times": 1}, failCommands=["ping"], blockConnection=True,
               blockTimeMS=300)
    t0 = time.monotonic()
    client.admin.command("ping")
    assert time.monotonic() - t0 >= 0.25
    named = double.client(appname="victim")
    try:
        fail_point(client, {"times": 1}, failCommands=["ping"], errorCode=2, appName="victim")
        client.admin.command("ping")  # another app: unaffected
        with pytest.raises(OperationFailure):
            named.admin.command("ping")
    finally:
        named.close()
        fail_point(client, "off")


# ---------------------------------------------------------------------------
# Transactions, TTL, persistence
# ---------------------------------------------------------------------------


def test_transactions_commit_and_abort(client, db):
    db.create_collection("tx")
    with db.tx.watch(max_await_time_ms=100) as stream:
        with client.start_session() as s:
            s.start_transaction()
            db.tx.insert_one({"v": "aborted"}, session=s)
            s.abort_transaction()
            s.start_transaction()
            db.tx.insert_one({"v": "committed"}, session=s)
            assert stream.try_next() is None  # not visible to streams before commit
            s.commit_transaction()
        change = next_change(stream)
        assert change["fullDocument"]["v"] == "committed"
    assert [d["v"] for d in db.tx.find()] == ["committed"]


def test_ttl_index_expires_documents(tmp_path):
    d = DoubleProcess("--ttl-interval", "0.2", log_path=tmp_path / "double.log").start()
    try:
        c = d.client()
        coll = c.ttl.members
        coll.create_index("heartbeatAt", expireAfterSeconds=1)
        now = datetime.datetime.now(datetime.timezone.utc)
        coll.insert_many([{"_id": "old", "heartbeatAt": now - datetime.timedelta(seconds=30)},
                          {"_id": "new", "heartbeatAt": now + datetime.timedelta(hours=1)}])
        deadline = time.monotonic() + 10
        while coll.find_one({"_id": "old"}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [x["_id"] for x in coll.find()] == ["new"]
        c.close()
    finally:
        assert d.stop() == 0


def test_data_persists_across_sigterm_restart(tmp_path):
    data = str(tmp_path / "double.bson")
    d = DoubleProcess(data=data, log_path=tmp_path / "double.log").start()
    c = d.client()
    c.bus.events.create_index([("topic", 1), ("offset", 1)], unique=True)
    c.bus.events.insert_many([{"topic": "t", "offset": i, "when": datetime.datetime(2024, 1, 2),
                               "big": Int64(1 << 40)} for i in range(1, 4)])
    c.bus.counters.insert_one({"_id": "t:0", "nextOffset": Int64(3)})
    with c.bus.events.watch(max_await_time_ms=100) as stream:
        c.bus.events.insert_one({"topic": "t", "offset": 4})
        token = next_change(stream)["_id"]
    c.bus.events.insert_one({"topic": "t", "offset": 5})
    c.close()
    port = d.port
    assert d.stop(signal.SIGTERM) == 0
    assert os.path.getsize(data) > 0

    d.start()  # same port, same --data
    assert d.port == port
    try:
        c = d.client()
        docs = list(c.bus.events.find({}, {"_id": 0}).sort("offset", 1))
        assert [x["offset"] for x in docs] == [1, 2, 3, 4, 5]
        assert docs[0]["when"] == datetime.datetime(2024, 1, 2)
        assert isinstance(docs[0]["big"], Int64)
        assert isinstance(c.bus.counters.find_one()["nextOffset"], Int64)
        with pytest.raises(DuplicateKeyError):
            c.bus.events.insert_one({"topic": "t", "offset": 1})
        # The change history survives too: resume from a token of the first run.
        with c.bus.events.watch(resume_after=token, max_await_time_ms=100) as s:
            assert next_change(s)["fullDocument"]["offset"] == 5
        c.close()
    finally:
        assert d.stop(signal.SIGINT) == 0


def test_restart_without_data_loses_history(tmp_path):
    d = DoubleProcess(log_path=tmp_path / "double.log").start()
    c = d.client()
    with c.x.y.watch(max_await_time_ms=100) as stream:
        c.x.y.insert_one({"a": 1})
        token = next_change(stream)["_id"]
    c.close()
    d.restart()
    try:
        c = d.client()
        with pytest.raises(OperationFailure) as info:
            c.x.y.watch(resume_after=token)
        assert info.value.code == 286
        c.close()
    finally:
        assert d.stop() == 0


def test_harness_given_port_kill_and_context_manager(tmp_path):
    """DoubleProcess: the port picked by port=0 is kept by a restart after SIGKILL; a given
    port is used as is; the context manager stops the process."""
    with DoubleProcess(log_path=tmp_path / "a.log") as d:
        port = d.port
        assert port > 0 and d.running
        c = d.client()
        assert c.admin.command("ping")["ok"] == 1.0
        c.close()
        assert d.kill() == -signal.SIGKILL
        d.start()
        assert d.port == port and "listening on 127.0.0.1:%d" % port in d.log()
    assert not d.running and d.returncode == 0
    with DoubleProcess("--verbose", port=port, log_path=tmp_path / "b.log") as d2:
        assert d2.port == port and "--verbose" in d2.args
        c = d2.client()
        assert c.admin.command("ping")["ok"] == 1.0
        c.close()


def test_sigterm_stops_cleanly_even_if_inherited_blocked(tmp_path):
    """A parent may start the double with SIGTERM blocked (the mask survives exec); SIGTERM
    still stops it cleanly (exit 0, --data saved) instead of being ignored."""
    data = tmp_path / "d.bson"
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        d = DoubleProcess(data=data, log_path=tmp_path / "d.log").start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert d.stop(signal.SIGTERM, timeout=10) == 0
    assert data.stat().st_size > 0 and "stopped" in d.log()


# ---------------------------------------------------------------------------
# Wire protocol details and the C driver
# ---------------------------------------------------------------------------


def _crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _recv_message(sock):
    header = b""
    while len(header) < 16:
        chunk = sock.recv(16 - len(header))
        assert chunk, "connection closed"
        header += chunk
    length, _, response_to, opcode = struct.unpack("<iiii", header)
    body = b""
    while len(body) < length - 16:
        chunk = sock.recv(length - 16 - len(body))
        assert chunk, "connection closed"
        body += chunk
    return response_to, opcode, body


def test_raw_op_query_handshake_and_op_msg_sequences(double):
    with socket.create_connection(("127.0.0.1", double.port), timeout=5) as sock:
        query = bson.encode({"isMaster": 1, "helloOk": True, "client": {
            "application": {"name": "raw"}, "driver": {"name": "raw", "version": "0"}}})
        body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
        sock.sendall(struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body)
        response_to, opcode, payload = _recv_message(sock)
        assert (response_to, opcode) == (7, 1)
        flags, cursor_id, start, n = struct.unpack("<iqii", payload[:20])
        reply = bson.decode(payload[20:])
        assert n == 1 and cursor_id == 0
        assert reply["ismaster"] is True and reply["helloOk"] is True
        assert reply["setName"] == "rs0"

        # OP_MSG: kind-0 body + kind-1 "documents" sequence, with a CRC-32C checksum.
        docs = b"".join(bson.encode({"_id": i, "raw": True}) for i in range(3))
        seq = b"documents\x00" + docs
        sections = (b"\x00" + bson.encode({"insert": "rawcoll", "$db": "rawdb"}) +
                    b"\x01" + struct.pack("<i", 4 + len(seq)) + seq)
        msg_body = struct.pack("<I", 1) + sections
        header = struct.pack("<iiii", 16 + len(msg_body) + 4, 8, 0, 2013)
        checksum = struct.pack("<I", _crc32c(header + msg_body))
        sock.sendall(header + msg_body + checksum)
        response_to, opcode, payload = _recv_message(sock)
        assert (response_to, opcode) == (8, 2013)
        assert payload[4] == 0
        reply = bson.decode(payload[5:])
        assert reply["ok"] == 1.0 and reply["n"] == 3

        # moreToCome (w:0): no reply; the next command still answers.
        body2 = struct.pack("<I", 2) + b"\x00" + bson.encode(
            {"insert": "rawcoll", "documents": [{"_id": 10}], "$db": "rawdb",
             "writeConcern": {"w": 0}})
        sock.sendall(struct.pack("<iiii", 16 + len(body2), 9, 0, 2013) + body2)
        body3 = struct.pack("<I", 0) + b"\x00" + bson.encode({"count": "rawcoll", "$db": "rawdb"})
        sock.sendall(struct.pack("<iiii", 16 + len(body3), 10, 0, 2013) + body3)
        response_to, opcode, payload = _recv_message(sock)
        assert response_to == 10 and bson.decode(payload[5:])["n"] == 4


def test_many_clients_share_one_double(double, db):
    clients = [double.client(maxPoolSize=4) for _ in range(4)]
    try:
        with db.shared.watch(max_await_time_ms=100) as stream:
            def work(k):
                coll = clients[k][db.name].shared
                for i in range(25):
                    coll.insert_one({"k": k, "i": i})
            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seen = [next_change(stream) for _ in range(100)]
        assert len({(c["fullDocument"]["k"], c["fullDocument"]["i"]) for c in seen}) == 100
    finally:
        for c in clients:
            c.close()


def test_libmongoc_c_client(double, tmp_path):
    """The real libmongoc (Debian libmongoc-dev) against the double: see c_smoke.c."""
    if shutil.which("pkg-config") is None or shutil.which("cc") is None:
        pytest.skip("pkg-config or cc missing (apt-get install libmongoc-dev pkg-config)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmongoc-1.0"],
                           capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.skip("libmongoc-1.0 not installed (apt-get install libmongoc-dev libbson-dev)")
    exe = str(tmp_path / "c_smoke")
    build = subprocess.run(["cc", "-Wall", "-o", exe, os.path.join(HERE, "c_smoke.c")]
                           + flags.stdout.split(), capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([exe, double.url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "c_smoke: OK" in run.stdout
