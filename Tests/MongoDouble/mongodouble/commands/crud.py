"""Writes: insert, update, delete, findAndModify."""

from __future__ import annotations

import logging
import traceback

from ..errors import CommandError, translate_exception
from ..updates import SCRATCH
from ..values import as_int, canon, is_true

log = logging.getLogger("mongo_double")


def _stmt_error(exc):
    ce = translate_exception(exc)
    if ce is None:
        log.error("internal error in a write statement:\n%s", traceback.format_exc())
        ce = CommandError(1, "internal error in the test double: %r" % (exc,))
    return ce


def h_insert(srv, ctx):
    name = ctx.coll_name()
    docs = ctx.body.get("documents")
    if not isinstance(docs, list):
        raise CommandError(40414, "BSON field 'insert.documents' is missing but a required "
                                  "field")
    ordered = is_true(ctx.body.get("ordered", True))
    coll = srv.ensure_coll(ctx.db, name)
    wctx = srv.write_ctx(ctx.txn)
    n = 0
    errors = []
    try:
        for i, doc in enumerate(docs):
            try:
                srv.insert_doc(coll, doc, wctx)
                n += 1
            except Exception as exc:  # noqa: BLE001 - becomes a writeError
                errors.append(_stmt_error(exc).write_error(i))
                if ordered:
                    break
    finally:
        srv.after_write(wctx)
    res = {"n": n}
    if errors:
        res["writeErrors"] = errors
    return res


def h_update(srv, ctx):
    name = ctx.coll_name()
    updates = ctx.body.get("updates")
    if not isinstance(updates, list):
        raise CommandError(40414, "BSON field 'update.updates' is missing but a required "
                                  "field")
    ordered = is_true(ctx.body.get("ordered", True))
    wctx = srv.write_ctx(ctx.txn)
    n = modified = 0
    upserted = []
    errors = []
    try:
        for i, stmt in enumerate(updates):
            try:
                if not isinstance(stmt, dict):
                    raise CommandError(14, "update statement must be an object")
                q = ctx.filter(stmt.get("q") or {})
                u = stmt.get("u")
                if not isinstance(u, (dict, list)):
                    raise CommandError(40414, "BSON field 'update.updates.u' is missing but "
                                              "a required field")
                if isinstance(u, list):
                    u = ctx.pipeline(u)
                multi = is_true(stmt.get("multi", False))
                upsert = is_true(stmt.get("upsert", False))
                af = stmt.get("arrayFilters")
                replacement = isinstance(u, dict) and (not u or not next(iter(u)).startswith("$"))
                if multi and replacement:
                    raise CommandError(9, "multi update is not supported for "
                                          "replacement-style update")
                coll = srv.get_coll(ctx.db, name)
                matches = srv.query(coll, q, limit=0 if multi else 1) if coll else []
                if matches:
                    for d in matches:
                        k = canon(d["_id"])
                        if k not in coll.docs:
                            continue
                        n += 1
                        if srv.update_one_doc(coll, k, q, u, wctx, af)[2]:
                            modified += 1
                elif upsert:
                    coll = srv.ensure_coll(ctx.db, name)
                    doc = srv.upsert_doc(coll, q, u, wctx, af)
                    n += 1
                    upserted.append({"index": i, "_id": doc["_id"]})
            except Exception as exc:  # noqa: BLE001 - becomes a writeError
                errors.append(_stmt_error(exc).write_error(i))
                if ordered:
                    break
    finally:
        srv.after_write(wctx)
    res = {"n": n, "nModified": modified}
    if upserted:
        res["upserted"] = upserted
    if errors:
        res["writeErrors"] = errors
    return res


def h_delete(srv, ctx):
    name = ctx.coll_name()
    deletes = ctx.body.get("deletes")
    if not isinstance(deletes, list):
        raise CommandError(40414, "BSON field 'delete.deletes' is missing but a required "
                                  "field")
    ordered = is_true(ctx.body.get("ordered", True))
    wctx = srv.write_ctx(ctx.txn)
    n = 0
    errors = []
    try:
        for i, stmt in enumerate(deletes):
            try:
                if not isinstance(stmt, dict) or "q" not in stmt or "limit" not in stmt:
                    raise CommandError(40414, "BSON field 'delete.deletes.q' and "
                                              "'delete.deletes.limit' are required")
                limit = as_int(stmt["limit"], "limit")
                if limit not in (0, 1):
                    raise CommandError(9, "The limit field in delete objects must be 0 or 1. "
                                          "Got %d" % limit)
                coll = srv.get_coll(ctx.db, name)
                if coll is None:
                    continue
                for d in srv.query(coll, ctx.filter(stmt["q"] or {}), limit=limit):
                    if srv.delete_stored(coll, canon(d["_id"]), wctx) is not None:
                        n += 1
            except Exception as exc:  # noqa: BLE001 - becomes a writeError
                errors.append(_stmt_error(exc).write_error(i))
                if ordered:
                    break
    finally:
        srv.after_write(wctx)
    res = {"n": n}
    if errors:
        res["writeErrors"] = errors
    return res


def h_find_and_modify(srv, ctx):
    name = ctx.coll_name()
    b = ctx.body
    q = ctx.filter(b.get("query") or {})
    sort = b.get("sort")
    remove = is_true(b.get("remove", False))
    u = b.get("update")
    new = is_true(b.get("new", False))
    fields = b.get("fields")
    upsert = is_true(b.get("upsert", False))
    af = b.get("arrayFilters")
    if remove and u is not None:
        raise CommandError(9, "Cannot specify both an update and remove=true")
    if not remove and u is None:
        raise CommandError(9, "Either an update or remove=true must be specified")
    if remove and new:
        raise CommandError(9, "Cannot specify both new=true and remove=true; 'remove' always "
                              "returns the deleted document")
    if remove and upsert:
        raise CommandError(9, "Cannot specify both upsert=true and remove=true ")
    if u is not None and not isinstance(u, (dict, list)):
        raise CommandError(14, "Update argument must be either an object or an array")
    if isinstance(u, list):
        u = ctx.pipeline(u)
    coll = srv.get_coll(ctx.db, name)
    match = srv.query(coll, q, sort=sort, limit=1) if coll else []
    wctx = srv.write_ctx(ctx.txn)
    try:
        if remove:
            if match:
                value = srv.delete_stored(coll, canon(match[0]["_id"]), wctx)
                leo = {"n": 1}
            else:
                value, leo = None, {"n": 0}
        elif match:
            old, newdoc, _ = srv.update_one_doc(coll, canon(match[0]["_id"]), q, u, wctx, af)
            value = newdoc if new else old
            leo = {"n": 1, "updatedExisting": True}
        elif upsert:
            coll = srv.ensure_coll(ctx.db, name)
            doc = srv.upsert_doc(coll, q, u, wctx, af)
            value = doc if new else None
            leo = {"n": 1, "updatedExisting": False, "upserted": doc["_id"]}
        else:
            value, leo = None, {"n": 0, "updatedExisting": False}
    finally:
        srv.after_write(wctx)
    if value is not None and fields:
        value = SCRATCH._copy_only_fields(value, dict(fields), dict)
    return {"lastErrorObject": leo, "value": value}
