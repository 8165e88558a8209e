"""Running one command: fail points, sessions, retries, error replies and labels."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import traceback

from bson import Int64

from .commands.context import Ctx
from .constants import (RESUMABLE_CHANGE_STREAM_CODES, RETRYABLE_WRITE_CODES, STATE_CHANGE_CODES,
                        WRITE_COMMANDS)
from .errors import CloseConnection, CommandError, translate_exception
from .sessions import prepare_session
from .values import as_int, is_true

log = logging.getLogger("mongo_double")


def _auto_labels(srv, ctx, code):
    labels = []
    b = ctx.body
    if code in RETRYABLE_WRITE_CODES and (
            (ctx.name in WRITE_COMMANDS and "txnNumber" in b and "autocommit" not in b)
            or ctx.name in ("commitTransaction", "abortTransaction")):
        labels.append("RetryableWriteError")
    if code in RESUMABLE_CHANGE_STREAM_CODES:
        is_cs = False
        if ctx.name == "aggregate":
            p = b.get("pipeline")
            is_cs = bool(p) and isinstance(p[0], dict) and "$changeStream" in p[0]
        elif ctx.name == "getMore":
            try:
                cur = srv.cursors.get(int(b.get("getMore")))
            except (TypeError, ValueError):
                cur = None
            is_cs = cur is not None and cur.kind == "change"
        if is_cs:
            labels.append("ResumableChangeStreamError")
    if "autocommit" in b and code in RETRYABLE_WRITE_CODES | {112}:
        labels.append("TransientTransactionError")
    return labels


async def run_command(srv, conn, body, db):
    """Run one command; returns the reply document (raises CloseConnection)."""
    if not isinstance(body, dict) or not body:
        return finish_reply(srv, CommandError(59, "no such command: ''").to_doc())
    name = next(iter(body))
    if not isinstance(db, str):
        err = CommandError(40571, "OP_MSG requests require a $db argument")
        return finish_reply(srv, err.to_doc())
    ctx = Ctx(srv, conn, name, body, db)
    started = time.monotonic()
    fp_data = None
    try:
        if name != "configureFailPoint":
            fp_data = srv.failpoints["failCommand"].check(name, conn)
        if fp_data:
            if is_true(fp_data.get("blockConnection", False)):
                await asyncio.sleep(as_int(fp_data.get("blockTimeMS", 0), "blockTimeMS") / 1000)
            if is_true(fp_data.get("closeConnection", False)):
                log.info("conn%d %s: failCommand closes the connection", conn.id, name)
                raise CloseConnection()
            if "errorCode" in fp_data:
                labels = fp_data.get("errorLabels")
                raise CommandError(as_int(fp_data["errorCode"], "errorCode"),
                                   "Failing command via 'failCommand' failpoint",
                                   labels=list(labels) if isinstance(labels, list) else None)
        handler = srv.handlers.get(name)
        if handler is None:
            raise CommandError(59, "no such command: '%s'" % name)
        prepare_session(srv, ctx)
        if ctx.cached is not None:
            reply = ctx.cached
        else:
            res = handler(srv, ctx)
            if asyncio.iscoroutine(res):
                res = await res
            reply = dict(res)
            reply["ok"] = 1.0
            if ctx.retry is not None:
                ctx.retry[0].retry_number = ctx.retry[1]
                ctx.retry[0].retry_reply = copy.deepcopy(reply)
        if fp_data and "writeConcernError" in fp_data:
            reply["writeConcernError"] = fp_data["writeConcernError"]
    except (CloseConnection, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
        ce = translate_exception(exc)
        if ce is None:
            log.error("conn%d %s failed with an internal error:\n%s", conn.id, name,
                      traceback.format_exc())
            ce = CommandError(1, "internal error in the test double: %r" % (exc,))
        reply = ce.to_doc()
        labels = ce.labels if ce.labels is not None else _auto_labels(srv, ctx, ce.code)
        if labels:
            reply["errorLabels"] = labels
        if ce.code in STATE_CHANGE_CODES:
            reply["topologyVersion"] = {"processId": srv.process_id, "counter": Int64(0)}
        if srv.verbose or not (ce.code == 11000 or (ce.code == 26 and name == "drop")):
            log.warning("conn%d %s on %s failed: %d %s", conn.id, name, db, ce.code,
                        ce.errmsg[:300])
    reply = finish_reply(srv, reply)
    if srv.verbose:
        log.info("conn%d %s %s %.300s -> ok=%s (%.1f ms)", conn.id, db, name,
                 _brief(body), reply.get("ok"), (time.monotonic() - started) * 1000)
    return reply


def finish_reply(srv, reply):
    reply["$clusterTime"] = srv.cluster_time_doc()
    reply["operationTime"] = srv.clock.timestamp()
    return reply


def _brief(body):
    out = {}
    for k, v in body.items():
        if k in ("lsid", "$clusterTime", "$db", "client", "$readPreference"):
            continue
        if isinstance(v, list) and len(v) > 3:
            v = "[%d items]" % len(v)
        out[k] = v
    return repr(out)
