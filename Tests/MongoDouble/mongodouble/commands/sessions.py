"""Session and transaction commands."""

from __future__ import annotations

import uuid

from bson import Binary

from ..constants import SESSION_TIMEOUT_MINUTES
from ..errors import CommandError
from ..values import canon


def h_start_session(srv, ctx):
    return {"id": {"id": Binary(uuid.uuid4().bytes, 4)},
            "timeoutMinutes": SESSION_TIMEOUT_MINUTES}


def h_end_sessions(srv, ctx):
    ids = ctx.body.get(ctx.name)
    if isinstance(ids, list):
        for lsid in ids:
            if isinstance(lsid, dict) and "id" in lsid:
                sess = srv.sessions.pop(canon(lsid["id"]), None)
                if sess is not None and sess.txn is not None and sess.txn.state == "active":
                    srv.abort_txn(sess.txn)
    return {}


def h_refresh_sessions(srv, ctx):
    return {}


def h_kill_all_sessions(srv, ctx):
    for sess in srv.sessions.values():
        if sess.txn is not None and sess.txn.state == "active":
            srv.abort_txn(sess.txn)
    srv.sessions.clear()
    return {}


def h_commit_transaction(srv, ctx):
    ctx.require_admin()
    sess, tn = ctx.session, ctx.txn_number
    txn = sess.txn if sess is not None else None
    if txn is None or tn is None or txn.number != tn:
        raise CommandError(251, "Transaction with txnNumber %s is not in progress" % tn,
                           labels=["TransientTransactionError"])
    if txn.state == "aborted":
        raise CommandError(251, "Transaction %d has been aborted." % tn,
                           labels=["TransientTransactionError"])
    if txn.state == "active":
        srv.commit_txn(txn)
    return {}


def h_abort_transaction(srv, ctx):
    ctx.require_admin()
    sess, tn = ctx.session, ctx.txn_number
    txn = sess.txn if sess is not None else None
    if txn is None or tn is None or txn.number != tn or txn.state == "aborted":
        raise CommandError(251, "Transaction with txnNumber %s is not in progress" % tn)
    if txn.state == "committed":
        raise CommandError(256, "Transaction %d has been committed." % tn)
    srv.abort_txn(txn)
    return {}
