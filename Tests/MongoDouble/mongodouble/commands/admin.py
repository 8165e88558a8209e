"""Handshake, server and admin commands: hello, buildInfo, serverStatus, fail points, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from bson import Int64

from ..changelog import ts_of
from ..constants import (CURSOR_TIMEOUT_S, GENERIC_ARGS, MAX_BSON_OBJECT_SIZE, SERVER_VERSION,
                         SESSION_TIMEOUT_MINUTES)
from ..errors import CloseConnection, CommandError
from ..values import as_int, utcnow

log = logging.getLogger("mongo_double")


def h_ping(srv, ctx):
    return {}


async def h_hello(srv, ctx):
    b = ctx.body
    client = b.get("client")
    if isinstance(client, dict) and ctx.conn.app_name is None:
        app = client.get("application")
        if isinstance(app, dict) and isinstance(app.get("name"), str):
            ctx.conn.app_name = app["name"]
        drv = client.get("driver")
        if isinstance(drv, dict):
            ctx.conn.driver = "%s %s" % (drv.get("name"), drv.get("version"))
    tv = b.get("topologyVersion")
    max_await = b.get("maxAwaitTimeMS")
    if isinstance(tv, dict) and max_await is not None:
        wait_ms = as_int(max_await, "maxAwaitTimeMS")
        if tv.get("processId") == srv.process_id and tv.get("counter") == 0 and wait_ms > 0:
            # Awaitable hello: nothing ever changes in a one-member set, so the
            # reply is held for maxAwaitTimeMS, as mongod does.
            try:
                await asyncio.wait_for(srv.stopping.wait(), wait_ms / 1000.0)
            except asyncio.TimeoutError:
                pass
    return srv.hello_doc(ctx.conn, "hello" if ctx.name == "hello" else "isMaster", b)


def h_build_info(srv, ctx):
    return {"version": SERVER_VERSION, "gitVersion": "mongo-double",
            "versionArray": [6, 0, 0, 0], "bits": 64, "debug": False,
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE, "storageEngines": ["mongo-double"],
            "javascriptEngine": "none", "modules": [], "allocator": "system",
            "openssl": {"running": "disabled"}, "sysInfo": "deprecated",
            "buildEnvironment": {}}


def h_whatsmyuri(srv, ctx):
    return {"you": ctx.conn.peer}


def h_server_status(srv, ctx):
    up = time.monotonic() - srv.started
    return {"host": srv.me, "version": SERVER_VERSION, "process": "mongod",
            "pid": Int64(os.getpid()), "uptime": float(int(up)),
            "uptimeMillis": Int64(int(up * 1000)), "uptimeEstimate": Int64(int(up)),
            "localTime": utcnow(),
            "connections": {"current": len(srv.conns), "available": 1_000_000,
                            "totalCreated": srv.total_conns},
            "repl": {"setName": "rs0", "isWritablePrimary": True, "hosts": [srv.me],
                     "primary": srv.me, "me": srv.me},
            "storageEngine": {"name": "mongo-double"},
            "mongoDouble": {"cursors": len(srv.cursors), "changeEvents": len(srv.changes),
                            "historyLimit": srv.changes.history,
                            "historyFloor": ts_of(srv.changes.floor)}}


def h_get_parameter(srv, ctx):
    known = {"featureCompatibilityVersion": {"version": "6.0"},
             "cursorTimeoutMillis": Int64(int(CURSOR_TIMEOUT_S * 1000)),
             "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
             "maxBSONObjectSize": MAX_BSON_OBJECT_SIZE}
    want_all = ctx.body.get("getParameter") == "*"
    out = {}
    for k in (known if want_all else [k for k in ctx.body if k != "getParameter"
                                       and k not in GENERIC_ARGS]):
        if k in known:
            out[k] = known[k]
    if not out:
        raise CommandError(72, "no option found to get")
    return out


def h_get_cmd_line_opts(srv, ctx):
    return {"argv": list(sys.argv), "parsed": {"net": {"port": srv.port}}}


def h_get_log(srv, ctx):
    if ctx.body.get("getLog") == "*":
        return {"names": ["global", "startupWarnings"]}
    return {"totalLinesWritten": 0, "log": []}


def h_connection_status(srv, ctx):
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}


def h_repl_set_get_status(srv, ctx):
    now = utcnow()
    op_time = {"ts": srv.clock.timestamp(), "t": Int64(1)}
    return {"set": "rs0", "date": now, "myState": 1, "term": Int64(1),
            "heartbeatIntervalMillis": Int64(2000),
            "optimes": {"lastCommittedOpTime": op_time, "appliedOpTime": op_time,
                        "durableOpTime": op_time},
            "members": [{"_id": 0, "name": srv.me, "health": 1.0, "state": 1,
                         "stateStr": "PRIMARY", "uptime": int(time.monotonic() - srv.started),
                         "optime": op_time, "optimeDate": now, "self": True,
                         "electionId": srv.election_id}]}


def h_configure_fail_point(srv, ctx):
    ctx.require_admin()
    name = ctx.body.get("configureFailPoint")
    fp = srv.failpoints.get(name)
    if fp is None:
        raise CommandError(2, "Failpoint %s not found (the test double supports only "
                              "'failCommand')" % (name,))
    if "mode" not in ctx.body:
        raise CommandError(9, "Missing mode argument")
    count = fp.configure(ctx.body["mode"], ctx.body.get("data"))
    log.info("conn%d configureFailPoint %s mode=%r data=%r", ctx.conn.id, name,
             ctx.body["mode"], ctx.body.get("data"))
    return {"count": count}


def h_shutdown(srv, ctx):
    ctx.require_admin()
    log.info("conn%d requested shutdown", ctx.conn.id)
    srv.stopping.set()
    raise CloseConnection()
