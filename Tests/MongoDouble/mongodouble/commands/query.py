"""Reads: find, count, distinct, aggregate, getMore, killCursors."""

from __future__ import annotations

import copy
import time

from bson import Int64
from mongomock import aggregate as mm_aggregate

from ..catalog import check_coll_name
from ..cursors import take_batch
from ..errors import CommandError
from ..pipelines import DbShim, normalize_pipeline
from ..values import as_int, canon, id_first, is_true, path_leaves
from .changestreams import get_more_change_stream, open_change_stream


def h_find(srv, ctx):
    name = ctx.coll_name()
    b = ctx.body
    filt = ctx.filter(b.get("filter") or {})
    sort = b.get("sort")
    if sort is not None and not isinstance(sort, dict):
        raise CommandError(14, "Expected field sort to be of type object")
    skip = as_int(b.get("skip", 0), "skip")
    limit = as_int(b.get("limit", 0), "limit")
    if skip < 0:
        raise CommandError(51024, "BSON field 'skip' value must be >= 0, actual value '%d'"
                           % skip)
    single = is_true(b.get("singleBatch", False))
    if limit < 0:
        limit, single = -limit, True
    batch_size = ctx.batch_size(b)
    coll = srv.get_coll(ctx.db, name)
    docs = srv.query(coll, filt, sort, skip, limit, b.get("projection")) if coll else []
    if limit and batch_size is None:
        batch_size = limit
    return srv.cursor_reply("%s.%s" % (ctx.db, name), docs, batch_size, single,
                            no_timeout=is_true(b.get("noCursorTimeout", False)))


def h_count(srv, ctx):
    name = ctx.coll_name()
    b = ctx.body
    coll = srv.get_coll(ctx.db, name)
    q = ctx.filter(b.get("query") or {})
    n = len(srv.query(coll, q)) if coll else 0
    skip = as_int(b.get("skip", 0) or 0, "skip")
    limit = abs(as_int(b.get("limit", 0) or 0, "limit"))
    n = max(0, n - skip)
    if limit:
        n = min(n, limit)
    return {"n": n}


def h_distinct(srv, ctx):
    name = ctx.coll_name()
    key = ctx.body.get("key")
    if not isinstance(key, str):
        raise CommandError(14, "BSON field 'distinct.key' is the wrong type")
    coll = srv.get_coll(ctx.db, name)
    seen = {}
    for d in srv.query(coll, ctx.filter(ctx.body.get("query") or {})) if coll else []:
        for leaf in path_leaves(d, key.split(".")):
            for v in (leaf if isinstance(leaf, list) else [leaf]):
                seen.setdefault(canon(v), v)
    return {"values": list(seen.values())}


def h_aggregate(srv, ctx):
    b = ctx.body
    target = b.get("aggregate")
    pipeline = b.get("pipeline")
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    if is_true(b.get("explain", False)):
        raise CommandError(2, "explain is not supported by the test double")
    if "cursor" not in b:
        raise CommandError(9, "The 'cursor' option is required, except for aggregate with the "
                              "explain argument")
    batch_size = ctx.batch_size(b.get("cursor"))
    if pipeline and isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]:
        return open_change_stream(srv, ctx, target, pipeline, batch_size)
    for stage in pipeline:
        if isinstance(stage, dict) and "$changeStream" in stage:
            raise CommandError(40602, "$changeStream is only valid as the first stage in a "
                                      "pipeline")
    pipeline = ctx.pipeline(pipeline)
    out_stage = None
    if pipeline and isinstance(pipeline[-1], dict) and "$out" in pipeline[-1]:
        out_stage = pipeline[-1]["$out"]
        pipeline = pipeline[:-1]
    if any(isinstance(s, dict) and "$merge" in s for s in pipeline):
        raise CommandError(2, "$merge is not supported by the test double")
    if isinstance(target, str):
        check_coll_name(target)
        coll = srv.get_coll(ctx.db, target)
        ns = "%s.%s" % (ctx.db, target)
        stages = normalize_pipeline(pipeline)
        if stages and "$match" in stages[0]:
            docs = srv.query(coll, stages[0]["$match"]) if coll else []
            stages = stages[1:]
        else:
            docs = list(coll.docs.values()) if coll else []
    elif target == 1 and not isinstance(target, bool):
        ns = "%s.$cmd.aggregate" % ctx.db
        if pipeline and isinstance(pipeline[0], dict) and "$documents" in pipeline[0]:
            docs = pipeline[0]["$documents"]
            if not isinstance(docs, list):
                raise CommandError(14, "$documents must be an array of objects")
            stages = normalize_pipeline(pipeline[1:])
        else:
            raise CommandError(73, "{aggregate: 1} is not valid for this pipeline; a collection "
                                   "is required.")
    else:
        raise CommandError(73, "Invalid {aggregate: ...} value: %r" % (target,))
    docs = [copy.deepcopy(d) for d in docs]
    result = [id_first(d) if isinstance(d, dict) else d for d in
              mm_aggregate.process_pipeline(docs, DbShim(srv, ctx.db), stages, None)]
    if out_stage is not None:
        if isinstance(out_stage, dict):
            odb, oname = out_stage.get("db", ctx.db), out_stage.get("coll")
        else:
            odb, oname = ctx.db, out_stage
        wctx = srv.write_ctx(None)
        try:
            old = srv.get_coll(odb, oname)
            specs = [s for n, s in old.indexes.items() if n != "_id_"] if old else []
            if old is not None:
                srv.drop_coll(odb, oname, wctx)
            dest = srv.ensure_coll(odb, oname)
            for spec in specs:
                dest.add_index(spec)
            for d in result:
                srv.insert_doc(dest, d, wctx)
        finally:
            srv.after_write(wctx)
        result = []
    return srv.cursor_reply(ns, result, batch_size, False)


async def h_get_more(srv, ctx):
    b = ctx.body
    raw = b.get("getMore")
    if isinstance(raw, bool) or not isinstance(raw, (int, Int64)):
        raise CommandError(14, "Field 'getMore' must be of BSON type long")
    cid = int(raw)
    coll_name = b.get("collection")
    if not isinstance(coll_name, str):
        raise CommandError(40414, "BSON field 'getMore.collection' is missing but a required "
                                  "field")
    cur = srv.cursors.get(cid)
    if cur is None:
        raise CommandError(43, "cursor id %d not found" % cid)
    if cur.ns.split(".", 1)[0] != ctx.db:
        raise CommandError(13, "Requested getMore on namespace '%s.%s', but cursor belongs to "
                               "a different namespace %s" % (ctx.db, coll_name, cur.ns))
    if cur.busy:
        raise CommandError(292, "cursor id %d is already in use" % cid)
    batch_size = ctx.batch_size(b) or None
    cur.busy = True
    cur.last_used = time.monotonic()
    try:
        if cur.kind == "query":
            batch = take_batch(cur.docs, cur.pos, batch_size or 0)
            cur.pos += len(batch)
            out_id = cid
            if cur.pos >= len(cur.docs):
                srv.cursors.pop(cid, None)
                out_id = 0
            return {"cursor": {"nextBatch": batch, "id": Int64(out_id), "ns": cur.ns}}
        return await get_more_change_stream(srv, ctx, cur)
    finally:
        cur.busy = False
        cur.last_used = time.monotonic()


def h_kill_cursors(srv, ctx):
    ids = ctx.body.get("cursors")
    if not isinstance(ids, list):
        raise CommandError(40414, "BSON field 'killCursors.cursors' is missing but a required "
                                  "field")
    killed, missing = [], []
    for raw in ids:
        cur = srv.cursors.pop(int(raw), None)
        if cur is None:
            missing.append(Int64(int(raw)))
        else:
            cur.killed = True
            killed.append(Int64(int(raw)))
    if killed:
        srv.changes.notify()  # wake a getMore waiting on a killed cursor
    return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
            "cursorsUnknown": []}
