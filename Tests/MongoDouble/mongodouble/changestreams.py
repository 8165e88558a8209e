"""Change stream cursors: which events they see, how events render, reading a batch."""

from __future__ import annotations

import copy
import time

import bson
from mongomock import aggregate as mm_aggregate
from mongomock import filtering as mm_filtering

from .changelog import make_token, ts_of
from .constants import BATCH_BYTES, INTERNAL_DBS
from .errors import CommandError
from .pipelines import DbShim, mentions_system_variables, resolve_pipeline, system_variables
from .values import canon


class ChangeCursor:
    kind = "change"

    def __init__(self, cid, ns, db, coll, scope, pos, full_doc, full_before, stages):
        self.id = cid
        self.ns = ns
        self.db = db
        self.coll = coll
        self.scope = scope
        self.pos = pos
        self.full_doc = full_doc
        self.full_before = full_before
        self.stages = stages
        self.match_only = all(next(iter(s)) == "$match" for s in stages)
        self.uses_variables = mentions_system_variables(stages)  # resolved per batch
        self.pending_invalidate = None
        self.invalidated = False
        self.busy = False
        self.killed = False
        self.no_timeout = False
        self.last_used = time.monotonic()


class ChangeStreamMixin:
    """Reading the change log through change stream cursors."""

    def visible(self, cur, ev):
        if cur.scope == "coll":
            return ev.db == cur.db and ev.coll == cur.coll and ev.op != "dropDatabase"
        if cur.scope == "db":
            return ev.db == cur.db and not (ev.coll or "").startswith("system.")
        return ev.db not in INTERNAL_DBS

    @staticmethod
    def invalidates(cur, ev):
        if cur.scope == "coll":
            return ev.op in ("drop", "rename")
        if cur.scope == "db":
            return ev.op == "dropDatabase"
        return False

    def render(self, cur, ev):
        doc = {"_id": make_token(ev.tsi, False, self.changes.history_id),
               "operationType": ev.op,
               "clusterTime": ts_of(ev.tsi), "wallTime": ev.wall}
        if ev.op in ("insert", "replace"):
            doc["fullDocument"] = ev.post
        elif ev.op == "update":
            if cur.full_doc == "updateLookup":
                coll = self.get_coll(ev.db, ev.coll)
                doc["fullDocument"] = coll.docs.get(canon(ev.key["_id"])) if coll else None
            elif cur.full_doc in ("whenAvailable", "required"):
                doc["fullDocument"] = ev.post
        if ev.op == "dropDatabase":
            doc["ns"] = {"db": ev.db}
        else:
            doc["ns"] = {"db": ev.db, "coll": ev.coll}
        if ev.to is not None:
            doc["to"] = ev.to
        if ev.key is not None:
            doc["documentKey"] = ev.key
        if ev.op == "update":
            doc["updateDescription"] = ev.desc
        if cur.full_before in ("whenAvailable", "required") and ev.op in (
                "update", "replace", "delete"):
            doc["fullDocumentBeforeChange"] = ev.pre
        return doc

    def invalidate_doc(self, tsi, wall):
        return {"_id": make_token(tsi, True, self.changes.history_id),
                "operationType": "invalidate",
                "clusterTime": ts_of(tsi), "wallTime": wall}

    def apply_stages(self, cur, doc, stages):
        if not stages:
            return doc
        if cur.match_only:
            for stage in stages:
                if not mm_filtering.filter_applies(stage["$match"], doc):
                    return None
            return doc
        out = list(mm_aggregate.process_pipeline([copy.deepcopy(doc)], DbShim(self, cur.db),
                                                 stages, None))
        if not out:
            return None
        if out[0].get("_id") != doc["_id"]:
            raise CommandError(280, "Encountered an event whose _id field, which contains "
                                    "the resume token, was modified by the pipeline. "
                                    "Modifying the _id field of an event makes it "
                                    "impossible to resume the stream from that point. "
                                    "Only transformations that retain the unmodified _id "
                                    "field are allowed.")
        return out[0]

    def scan(self, cur, batch_size):
        """Collect the events after the cursor's position (no waiting)."""
        log_ = self.changes
        if cur.pos < log_.floor:
            raise CommandError(286, "Executor error during getMore :: caused by :: "
                                    "Resume of change stream was not possible, as the "
                                    "resume point may no longer be in the oplog.")
        out = []
        if batch_size == 0:
            return out
        size = 0
        if cur.pending_invalidate is not None:
            ev = cur.pending_invalidate
            cur.pending_invalidate = None
            out.append(self.invalidate_doc(ev.tsi, ev.wall))
            cur.invalidated = True
            return out
        stages = cur.stages
        if cur.uses_variables:
            stages = resolve_pipeline(stages, system_variables(self))
        events = log_.events
        i = log_.index_after(cur.pos)
        end = len(events)
        while i < end:
            if batch_size is not None and len(out) >= batch_size:
                break
            ev = events[i]
            i += 1
            cur.pos = ev.tsi
            if not self.visible(cur, ev):
                continue
            doc = self.apply_stages(cur, self.render(cur, ev), stages)
            if doc is not None:
                out.append(doc)
                size += len(bson.encode(doc))
            if self.invalidates(cur, ev):
                out.append(self.invalidate_doc(ev.tsi, ev.wall))
                cur.invalidated = True
                break
            if size >= BATCH_BYTES:
                break
        if i >= end and not cur.invalidated and (batch_size is None or len(out) < batch_size):
            cur.pos = max(cur.pos, self.clock.last)
        return out

    def pbrt(self, cur):
        return make_token(cur.pos, cur.invalidated, self.changes.history_id)
