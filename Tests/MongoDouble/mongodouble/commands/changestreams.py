"""Opening a change stream (aggregate with $changeStream)."""

from __future__ import annotations

import asyncio
import time

from bson import Int64, Timestamp

from ..catalog import check_coll_name
from ..changelog import parse_token, tsi_of
from ..changestreams import ChangeCursor
from ..constants import (CHANGE_STREAM_STAGES, DEFAULT_FIRST_BATCH, ErrorStageNotPermitted,
                         INTERNAL_DBS)
from ..errors import CommandError
from ..pipelines import normalize_pipeline
from ..values import as_int, is_true


def open_change_stream(srv, ctx, target, pipeline, batch_size):
    opts = pipeline[0]["$changeStream"]
    if not isinstance(opts, dict):
        raise CommandError(14, "the $changeStream stage must be an object")
    allowed = {"fullDocument", "fullDocumentBeforeChange", "resumeAfter", "startAfter",
               "startAtOperationTime", "allChangesForCluster", "showExpandedEvents",
               "allowToRunOnConfigDB", "allowToRunOnSystemNS"}
    for k in opts:
        if k not in allowed:
            raise CommandError(40415, "BSON field '$changeStream.%s' is an unknown field." % k)
    stages = pipeline[1:]
    for st in stages:
        if not isinstance(st, dict) or len(st) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain "
                                      "exactly one field.")
        sname = next(iter(st))
        if sname not in CHANGE_STREAM_STAGES:
            raise CommandError(ErrorStageNotPermitted, "%s is not permitted in a $changeStream "
                                                      "pipeline" % sname)
    stages = normalize_pipeline(stages)
    if isinstance(target, str):
        check_coll_name(target)
        scope, coll, ns = "coll", target, "%s.%s" % (ctx.db, target)
    elif target == 1 and not isinstance(target, bool):
        coll = None
        if is_true(opts.get("allChangesForCluster", False)):
            if ctx.db != "admin":
                raise CommandError(73, "$changeStream may only be opened on the 'admin' "
                                       "database if {allChangesForCluster: true}")
            scope, ns = "cluster", "admin.$cmd.aggregate"
        else:
            if ctx.db in INTERNAL_DBS:
                raise CommandError(73, "$changeStream may not be opened on the internal %s "
                                       "database" % ctx.db)
            scope, ns = "db", "%s.$cmd.aggregate" % ctx.db
    else:
        raise CommandError(73, "Invalid {aggregate: ...} value: %r" % (target,))
    full_doc = opts.get("fullDocument", "default")
    if full_doc not in ("default", "updateLookup", "whenAvailable", "required"):
        raise CommandError(2, "'%s' is not a valid value for fullDocument" % (full_doc,))
    full_before = opts.get("fullDocumentBeforeChange", "off")
    if full_before not in ("off", "whenAvailable", "required"):
        raise CommandError(2, "'%s' is not a valid value for fullDocumentBeforeChange"
                           % (full_before,))
    given = [k for k in ("resumeAfter", "startAfter", "startAtOperationTime") if k in opts]
    if len(given) > 1:
        raise CommandError(50865, "Only one type of resume option is allowed, but multiple "
                                  "were found.")
    cid = srv.new_cursor_id()
    cur = ChangeCursor(cid, ns, ctx.db, coll, scope, srv.clock.last, full_doc, full_before,
                       stages)
    log_ = srv.changes
    lost = CommandError(286, "Resume of change stream was not possible, as the resume point "
                             "may no longer be in the oplog.")
    if given and given[0] in ("resumeAfter", "startAfter"):
        tsi, inv, history_id = parse_token(opts[given[0]])
        if history_id is not None and history_id != log_.history_id:
            raise lost
        if inv and given[0] == "resumeAfter":
            raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' "
                                    "is not allowed from an invalidate notification.")
        if tsi < log_.floor:
            raise lost
        cur.pos = tsi
        if not inv:
            ev = log_.find(tsi)
            if ev is not None and srv.visible(cur, ev) and srv.invalidates(cur, ev):
                cur.pending_invalidate = ev
    elif given:
        ts = opts["startAtOperationTime"]
        if not isinstance(ts, Timestamp):
            raise CommandError(14, "startAtOperationTime must be a Timestamp")
        tsi = tsi_of(ts)
        if tsi < log_.floor:
            raise lost
        cur.pos = max(0, tsi - 1)
    batch = srv.scan(cur, DEFAULT_FIRST_BATCH if batch_size is None else batch_size)
    out_id = 0
    if not cur.invalidated:
        srv.cursors[cid] = cur
        out_id = cid
    return {"cursor": {"firstBatch": batch, "postBatchResumeToken": srv.pbrt(cur),
                       "id": Int64(out_id), "ns": ns}}


async def get_more_change_stream(srv, ctx, cur):
    """getMore on a change stream: waits up to maxTimeMS (1 s if none) for events; on
    timeout an empty batch, and the cursor stays open."""
    b = ctx.body
    cid = cur.id
    batch_size = ctx.batch_size(b) or None
    max_ms = b.get("maxTimeMS")
    wait_s = as_int(max_ms, "maxTimeMS") / 1000.0 if max_ms is not None else 1.0
    if wait_s <= 0:
        wait_s = 1.0
    deadline = time.monotonic() + wait_s
    while True:
        if cur.killed:
            raise CommandError(237, "cursor id %d was killed" % cid)
        waiter = srv.changes.waiter()
        try:
            batch = srv.scan(cur, batch_size)
        except CommandError:
            srv.cursors.pop(cid, None)
            raise
        if batch or cur.invalidated:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or srv.stopping.is_set():
            break
        try:
            await asyncio.wait_for(waiter.wait(), remaining)
        except asyncio.TimeoutError:
            pass
    out_id = cid
    if cur.invalidated:
        srv.cursors.pop(cid, None)
        out_id = 0
    return {"cursor": {"nextBatch": batch, "postBatchResumeToken": srv.pbrt(cur),
                       "id": Int64(out_id), "ns": cur.ns}}
