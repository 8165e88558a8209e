"""The server: its state, hello, and its background jobs (cursor/session reaper, TTL)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import os
import time
import traceback

from bson import Binary, Int64, ObjectId

from .catalog import CatalogMixin
from .changelog import ChangeLog, Clock
from .changestreams import ChangeStreamMixin
from .commands import HANDLERS
from .constants import (CURSOR_TIMEOUT_S, MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE,
                        MAX_WIRE_VERSION, MAX_WRITE_BATCH_SIZE, SESSION_TIMEOUT_MINUTES)
from .cursors import CursorMixin
from .persistence import PersistenceMixin
from .sessions import FailPoint, TransactionMixin
from .values import get_path, is_true, utcnow

log = logging.getLogger("mongo_double")


class Conn:
    def __init__(self, cid, peer, writer):
        self.id = cid
        self.peer = peer
        self.writer = writer
        self.app_name = None
        self.driver = None


class MongoDouble(CatalogMixin, CursorMixin, ChangeStreamMixin, TransactionMixin,
                  PersistenceMixin):
    """The server's state. Its parts are mixins from their modules (catalog, cursors, change
    streams, transactions, persistence); commands are in ``.commands``, dispatch in
    ``.dispatch``, framing in ``.wire``."""

    def __init__(self, host="127.0.0.1", port=27017, data_path=None, history=100_000,
                 verbose=False, ttl_interval=60.0, advertise=None, save_interval=0.0):
        self.host = host
        self.port = port
        self.advertise = advertise
        self.data_path = data_path
        self.verbose = verbose
        self.ttl_interval = ttl_interval
        self.save_interval = save_interval
        self.dbs = {}  # name -> {coll name -> Coll}
        self.clock = Clock()
        self.clock.tick()
        self.changes = ChangeLog(self.clock, history)
        self.cursors = {}
        self.sessions = {}
        self.failpoints = {"failCommand": FailPoint()}
        self.process_id = ObjectId()
        self.election_id = ObjectId("7fffffff0000000000000001")
        self.started = time.monotonic()
        self.conn_ids = itertools.count(1)
        self.conns = {}
        self.tasks = set()
        self.total_conns = 0
        self.stopping = asyncio.Event()
        self.server = None
        self.dirty = False
        self.handlers = HANDLERS
        if data_path and os.path.exists(data_path):
            self.load(data_path)

    @property
    def me(self):
        return "%s:%d" % (self.advertise or
                          (self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"),
                          self.port)

    # -- replies -------------------------------------------------------------
    def cluster_time_doc(self):
        return {"clusterTime": self.clock.timestamp(),
                "signature": {"hash": Binary(b"\x00" * 20, 0), "keyId": Int64(0)}}

    def hello_doc(self, conn, name, body):
        now = utcnow()
        op_time = {"ts": self.clock.timestamp(), "t": Int64(1)}
        doc = {}
        if is_true(body.get("helloOk")) or name == "hello":
            doc["helloOk"] = True
        doc["topologyVersion"] = {"processId": self.process_id, "counter": Int64(0)}
        doc["hosts"] = [self.me]
        doc["setName"] = "rs0"
        doc["setVersion"] = 1
        if name == "hello":
            doc["isWritablePrimary"] = True
        else:
            doc["ismaster"] = True
        doc["secondary"] = False
        doc["primary"] = self.me
        doc["me"] = self.me
        doc["electionId"] = self.election_id
        doc["lastWrite"] = {"opTime": op_time, "lastWriteDate": now,
                            "majorityOpTime": op_time, "majorityWriteDate": now}
        doc["maxBsonObjectSize"] = MAX_BSON_OBJECT_SIZE
        doc["maxMessageSizeBytes"] = MAX_MESSAGE_SIZE
        doc["maxWriteBatchSize"] = MAX_WRITE_BATCH_SIZE
        doc["localTime"] = now
        doc["logicalSessionTimeoutMinutes"] = SESSION_TIMEOUT_MINUTES
        doc["connectionId"] = conn.id
        doc["minWireVersion"] = 0
        doc["maxWireVersion"] = MAX_WIRE_VERSION
        doc["readOnly"] = False
        return doc

    # -- background jobs -------------------------------------------------------
    async def reaper(self):
        while True:
            await asyncio.sleep(30)
            now = time.monotonic()
            for cid, cur in list(self.cursors.items()):
                if not cur.busy and not cur.no_timeout and now - cur.last_used > CURSOR_TIMEOUT_S:
                    del self.cursors[cid]
            for key, sess in list(self.sessions.items()):
                if now - sess.last_used > SESSION_TIMEOUT_MINUTES * 60:
                    if sess.txn is not None and sess.txn.state == "active":
                        self.abort_txn(sess.txn)
                    del self.sessions[key]

    async def ttl_monitor(self):
        while True:
            await asyncio.sleep(self.ttl_interval)
            try:
                self.expire_ttl()
            except Exception:
                log.error("TTL monitor failed:\n%s", traceback.format_exc())

    def expire_ttl(self):
        now = utcnow()
        ctx = self.write_ctx(None)
        for colls in list(self.dbs.values()):
            for coll in list(colls.values()):
                for spec in list(coll.indexes.values()):
                    if "expireAfterSeconds" not in spec or len(spec["key"]) != 1:
                        continue
                    try:
                        expire = float(spec["expireAfterSeconds"])
                    except (TypeError, ValueError):
                        continue
                    field = next(iter(spec["key"]))
                    cutoff = now - datetime.timedelta(seconds=expire)
                    doomed = []
                    for k, doc in coll.docs.items():
                        v = get_path(doc, field)
                        vals = v if isinstance(v, list) else [v]
                        dates = [x.replace(tzinfo=None) if x.tzinfo else x for x in vals
                                 if isinstance(x, datetime.datetime)]
                        if dates and min(dates) <= cutoff:
                            doomed.append(k)
                    for k in doomed:
                        self.delete_stored(coll, k, ctx)
        self.after_write(ctx)
