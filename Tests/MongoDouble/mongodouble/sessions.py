"""Logical sessions, transactions, retryable writes and the failCommand fail point."""

from __future__ import annotations

import copy
import random
import time

from .constants import WRITE_COMMANDS
from .errors import CommandError
from .values import as_int, canon, is_true


class Txn:
    def __init__(self, number):
        self.number = number
        self.undo = []
        self.events = []
        self.state = "active"


class Session:
    def __init__(self):
        self.last_used = time.monotonic()
        self.txn = None
        self.committed = set()
        self.retry_number = None
        self.retry_reply = None


class WriteCtx:
    """Where a write's side effects go: straight to the change log, or to a txn."""

    def __init__(self, server, txn=None):
        self.server = server
        self.txn = txn
        self.published = False

    def event(self, ev):
        if self.txn is not None:
            self.txn.events.append(ev)
        else:
            self.server.changes.append(ev)
            self.published = True

    def undo(self, coll, k, old):
        if self.txn is not None:
            self.txn.undo.append((coll, k, old))


class FailPoint:
    def __init__(self):
        self.mode = "off"
        self.remaining = 0
        self.probability = 1.0
        self.data = {}
        self.entered = 0

    def configure(self, mode, data):
        previous = self.entered
        if mode == "off":
            self.mode = "off"
        elif mode == "alwaysOn":
            self.mode = "alwaysOn"
        elif isinstance(mode, dict) and "times" in mode:
            self.mode = "times"
            self.remaining = as_int(mode["times"], "times")
            if self.remaining <= 0:
                self.mode = "off"
        elif isinstance(mode, dict) and "skip" in mode:
            self.mode = "skip"
            self.remaining = as_int(mode["skip"], "skip")
        elif isinstance(mode, dict) and "activationProbability" in mode:
            self.mode = "random"
            self.probability = float(mode["activationProbability"])
        else:
            raise CommandError(2, "'mode' must be one of 'off', 'alwaysOn', "
                                  "{times: n}, {skip: n} or {activationProbability: p}")
        if data is not None:
            if not isinstance(data, dict):
                raise CommandError(14, "'data' must be an object")
            self.data = data
        self.entered = 0
        return previous

    def check(self, cmd_name, conn):
        if self.mode == "off":
            return None
        names = self.data.get("failCommands") or []
        if cmd_name not in names:
            return None
        app = self.data.get("appName")
        if app is not None and conn.app_name != app:
            return None
        if self.mode == "skip":
            if self.remaining > 0:
                self.remaining -= 1
                return None
        elif self.mode == "times":
            self.remaining -= 1
            if self.remaining <= 0:
                self.mode = "off"
        elif self.mode == "random":
            if random.random() >= self.probability:
                return None
        self.entered += 1
        return self.data


class TransactionMixin:
    """Ending transactions: undo on abort, publish their change events on commit."""

    def abort_txn(self, txn):
        for coll, k, old in reversed(txn.undo):
            if old is None:
                coll.remove(k)
            else:
                coll.set(k, old)
        txn.undo.clear()
        txn.events.clear()
        txn.state = "aborted"
        self.dirty = True

    def commit_txn(self, txn):
        for ev in txn.events:
            self.changes.append(ev)
        if txn.events:
            self.changes.notify()
        txn.undo.clear()
        txn.events.clear()
        txn.state = "committed"


def prepare_session(srv, ctx):
    b = ctx.body
    lsid = b.get("lsid")
    in_txn = "autocommit" in b
    if not isinstance(lsid, dict) or "id" not in lsid:
        if in_txn:
            raise CommandError(50768, "Transaction requires a session (lsid)")
        return
    key = canon(lsid["id"])
    sess = srv.sessions.get(key)
    if sess is None:
        sess = srv.sessions[key] = Session()
    sess.last_used = time.monotonic()
    ctx.session = sess
    tn = b.get("txnNumber")
    if in_txn:
        if tn is None:
            raise CommandError(50768, "txnNumber is required for a transaction")
        tn = int(tn)
        ctx.txn_number = tn
        if ctx.name in ("commitTransaction", "abortTransaction"):
            return
        if is_true(b.get("startTransaction", False)):
            if sess.txn is not None and sess.txn.number >= tn and sess.txn.number != tn:
                raise CommandError(225, "Cannot start transaction %d on session because a "
                                        "newer transaction %d has already started."
                                   % (tn, sess.txn.number))
            if sess.txn is not None and sess.txn.state == "active":
                srv.abort_txn(sess.txn)
            sess.txn = Txn(tn)
        elif sess.txn is None or sess.txn.number != tn or sess.txn.state != "active":
            raise CommandError(251, "Given transaction number %d does not match any "
                                    "in-progress transactions." % tn,
                               labels=["TransientTransactionError"])
        ctx.txn = sess.txn
    elif tn is not None and ctx.name in WRITE_COMMANDS:
        tn = int(tn)
        if sess.retry_number == tn and sess.retry_reply is not None:
            ctx.cached = copy.deepcopy(sess.retry_reply)
        ctx.retry = (sess, tn)
