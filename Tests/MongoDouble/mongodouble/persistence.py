"""--data: the catalog, the change history and the clock saved to and loaded from a file."""

from __future__ import annotations

import asyncio
import logging
import os
import traceback

import bson
from bson import Binary, Int64

from .changelog import Event
from .values import canon

log = logging.getLogger("mongo_double")


class PersistenceMixin:
    """Saving (on a clean stop, or every --save-interval) and loading --data."""

    def dump(self, path):
        tmp = "%s.tmp-%d" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(bson.encode({"t": "meta", "version": 1, "clock": Int64(self.clock.last),
                                 "floor": Int64(self.changes.floor),
                                 "historyId": self.changes.history_id,
                                 "history": self.changes.history}))
            for db, colls in self.dbs.items():
                for name, coll in colls.items():
                    specs = [s for n, s in coll.indexes.items() if n != "_id_"]
                    f.write(bson.encode({"t": "coll", "db": db, "coll": name,
                                         "options": coll.options,
                                         "uuid": Binary.from_uuid(coll.uuid),
                                         "indexes": specs}))
                    for doc in coll.docs.values():
                        f.write(bson.encode({"t": "doc", "db": db, "coll": name, "d": doc}))
            for ev in self.changes.retained():
                f.write(bson.encode({"t": "event", "e": ev.to_record()}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.dirty = False

    def load(self, path):
        floor = self.changes.floor
        with open(path, "rb") as f:
            events = []
            for rec in bson.decode_file_iter(f):
                t = rec.get("t")
                if t == "meta":
                    self.clock.last = max(self.clock.last, int(rec["clock"]))
                    floor = int(rec.get("floor", 0))
                    self.changes.history_id = rec.get("historyId", self.changes.history_id)
                elif t == "coll":
                    coll = self.ensure_coll(rec["db"], rec["coll"], rec.get("options") or {})
                    coll.uuid = rec["uuid"].as_uuid() if isinstance(rec.get("uuid"), Binary) \
                        else coll.uuid
                    pending = rec.get("indexes") or []
                    for spec in pending:
                        coll.add_index(spec)
                elif t == "doc":
                    coll = self.ensure_coll(rec["db"], rec["coll"])
                    doc = rec["d"]
                    coll.set(canon(doc["_id"]), doc)
                elif t == "event":
                    events.append(Event.from_record(rec["e"]))
        self.changes.events = events[-self.changes.history:]
        self.changes.start = 0
        self.changes.floor = floor
        if len(events) > self.changes.history:
            self.changes.floor = events[-self.changes.history - 1].tsi
        self.clock.tick()
        self.dirty = False
        log.info("loaded %d collections and %d change events from %s",
                 sum(len(c) for c in self.dbs.values()), len(self.changes), path)

    async def saver(self):
        while True:
            await asyncio.sleep(self.save_interval)
            if self.dirty and self.data_path:
                try:
                    self.dump(self.data_path)
                except Exception:
                    log.error("periodic save failed:\n%s", traceback.format_exc())
