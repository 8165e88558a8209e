#!/usr/bin/env python3
"""MongoDB wire-protocol test double for StreamBroker's tests.

A stand-in for ``mongod`` (no MongoDB server can be installed on the build and CI
machines, see SPEC.md section 10).  It speaks the real wire protocol (OP_QUERY
handshake, OP_MSG with kind-0 bodies and kind-1 document sequences) so that the
real libmongoc C client and pymongo talk to it unchanged.  It presents itself as
the primary of a one-member replica set ``rs0`` running MongoDB 6.0
(maxWireVersion 17).

Semantics are borrowed, not reimplemented: pymongo's ``bson`` encodes and decodes,
mongomock evaluates query filters, sorts, projections, update operators and
aggregation stages.  What the double adds on top: a catalog of databases and
collections, unique indexes with MongoDB's real E11000 errors, cursors with
getMore/killCursors, change streams with resume tokens and a bounded history
(error 286 when a token is too old), the ``failCommand`` fail point, simple
transactions (applied at once, undone on abort, their change events published on
commit), retryable-write de-duplication, TTL indexes, and persistence across a
clean stop and start (``--data``).

Run:  python3 mongo_double.py --port 27017 [--host 127.0.0.1] [--data FILE]
                              [--history N] [--verbose]
It is ready when the port accepts connections; it also prints
``mongo_double listening on HOST:PORT`` to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import datetime
import itertools
import logging
import os
import random
import re
import signal
import struct
import sys
import time
import traceback
import uuid

import bson
from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.max_key import MaxKey
from bson.min_key import MinKey
from pymongo.errors import OperationFailure as _PyOperationFailure
from pymongo.errors import PyMongoError as _PyMongoError

import mongomock
from mongomock import aggregate as mm_aggregate
from mongomock import collection as mm_collection
from mongomock import filtering as mm_filtering

log = logging.getLogger("mongo_double")

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

OP_REPLY = 1
OP_UPDATE = 2001
OP_INSERT = 2002
OP_QUERY = 2004
OP_GET_MORE = 2005
OP_DELETE = 2006
OP_KILL_CURSORS = 2007
OP_COMPRESSED = 2012
OP_MSG = 2013

MSG_CHECKSUM_PRESENT = 1 << 0
MSG_MORE_TO_COME = 1 << 1
MSG_EXHAUST_ALLOWED = 1 << 16

MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH_SIZE = 100_000
MAX_WIRE_VERSION = 17  # MongoDB 6.0
SERVER_VERSION = "6.0.0"
BATCH_BYTES = MAX_BSON_OBJECT_SIZE - 64 * 1024  # room for the reply envelope
DEFAULT_FIRST_BATCH = 101
CURSOR_TIMEOUT_S = 600.0
SESSION_TIMEOUT_MINUTES = 30

CODE_NAMES = {
    1: "InternalError",
    2: "BadValue",
    4: "NoSuchKey",
    6: "HostUnreachable",
    7: "HostNotFound",
    9: "FailedToParse",
    11: "UserNotFound",
    13: "Unauthorized",
    14: "TypeMismatch",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    59: "CommandNotFound",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    96: "OperationFailed",
    112: "WriteConflict",
    115: "CommandNotSupported",
    133: "FailedToSatisfyReadPreference",
    189: "PrimarySteppedDown",
    234: "RetryChangeStream",
    237: "CursorKilled",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    292: "CursorInUse",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    40324: "Location40324",
}

# Errors after which a driver may retry a write ("RetryableWriteError" label).
RETRYABLE_WRITE_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
# Errors on a change stream's getMore that the driver resumes from.
RESUMABLE_CHANGE_STREAM_CODES = RETRYABLE_WRITE_CODES | {63, 133, 150, 234, 13388}

WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify", "findandmodify"}
CHANGE_STREAM_STAGES = {
    "$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot",
    "$replaceWith", "$redact",
}
UPDATE_OPERATORS = {
    "$set", "$unset", "$inc", "$mul", "$max", "$min", "$rename", "$setOnInsert",
    "$currentDate", "$addToSet", "$pull", "$pullAll", "$push", "$pop",
}
INTERNAL_DBS = ("admin", "config", "local")


def _mul_updater(doc, field_name, value):
    """``$mul``, which mongomock 4.3 lacks (a missing field becomes 0)."""
    if isinstance(doc, dict):
        doc[field_name] = doc.get(field_name, 0) * value
    elif isinstance(doc, list):
        idx = int(field_name)
        doc[idx] = doc[idx] * value


mm_collection._updaters.setdefault("$mul", _mul_updater)

# A scratch mongomock collection: its update/projection helpers are applied to
# our documents; it never stores anything.
_SCRATCH = mongomock.MongoClient()["__mongo_double__"]["__scratch__"]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class CommandError(Exception):
    """A command failure with MongoDB's error shape."""

    def __init__(self, code, errmsg, extra=None, labels=None):
        super().__init__(errmsg)
        self.code = int(code)
        self.errmsg = errmsg
        self.extra = extra or {}
        self.labels = labels

    def to_doc(self):
        doc = {"ok": 0.0, "errmsg": self.errmsg, "code": self.code}
        name = CODE_NAMES.get(self.code)
        if name:
            doc["codeName"] = name
        doc.update(self.extra)
        return doc

    def write_error(self, index):
        doc = {"index": index, "code": self.code}
        doc.update(self.extra)
        doc["errmsg"] = self.errmsg
        return doc


class CloseConnection(Exception):
    """Close the client's socket without replying (failCommand closeConnection)."""


def translate_exception(exc):
    """Map an exception raised by mongomock or our own code to a CommandError."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, _PyOperationFailure):
        code = exc.code if isinstance(exc.code, int) and exc.code else 2
        msg = exc.details.get("errmsg") if isinstance(exc.details, dict) else None
        return CommandError(code, msg or str(exc))
    if isinstance(exc, NotImplementedError):
        return CommandError(2, "not supported by the MongoDB test double: %s" % exc)
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError, AttributeError,
                        _PyMongoError, bson.errors.BSONError)):
        return CommandError(2, "%s: %s" % (type(exc).__name__, exc))
    return None


# ---------------------------------------------------------------------------
# Value helpers
# ---------------------------------------------------------------------------

_MISSING = object()


def canon(v):
    """A hashable key such that MongoDB-equal values (1, 1.0, Int64(1)) collide."""
    t = type(v)
    if t is str:
        return ("s", v)
    if t is bool:
        return ("b", v)
    if t is int or t is Int64:
        return ("n", int(v))
    if t is float:
        if v != v:
            return ("nan",)
        if v.is_integer():
            return ("n", int(v))
        return ("n", v)
    if v is None:
        return ("null",)
    if t is ObjectId:
        return ("o", v.binary)
    if isinstance(v, dict):
        return ("d", tuple((k, canon(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return ("a", tuple(canon(x) for x in v))
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return ("t", v)
    if isinstance(v, Binary):
        return ("B", v.subtype, bytes(v))
    if isinstance(v, bytes):
        return ("B", 0, v)
    if isinstance(v, uuid.UUID):
        return ("B", 4, v.bytes)
    if t is Decimal128:
        d = v.to_decimal()
        if d.is_nan():
            return ("nan",)
        if d.is_finite() and d == d.to_integral_value():
            return ("n", int(d))
        return ("n", float(d))
    if t is Timestamp:
        return ("T", v.time, v.inc)
    if isinstance(v, Regex):
        return ("r", v.pattern, v.flags)
    if isinstance(v, re.Pattern):
        return ("r", v.pattern, v.flags)
    if isinstance(v, MinKey):
        return ("min",)
    if isinstance(v, MaxKey):
        return ("max",)
    return ("x", type(v).__name__, repr(v))


def bson_equal(a, b):
    """Type-exact equality (1 and 1.0 differ), as a stored document sees it."""
    if a is b:
        return True
    try:
        return bson.encode({"v": a}) == bson.encode({"v": b})
    except Exception:  # pragma: no cover - unencodable values
        return a == b


def shell_repr(v):
    """Render a value the way mongod prints it in E11000 messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, Int64)):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(v, ObjectId):
        return "ObjectId('%s')" % v
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return "new Date(%d)" % int(v.timestamp() * 1000)
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ %s }" % ", ".join("%s: %s" % (k, shell_repr(x)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[ %s ]" % ", ".join(shell_repr(x) for x in v) if v else "[]"
    if isinstance(v, Timestamp):
        return "Timestamp(%d, %d)" % (v.time, v.inc)
    if isinstance(v, Decimal128):
        return 'NumberDecimal("%s")' % v
    if isinstance(v, Binary) and v.subtype == 4 and len(v) == 16:
        return "UUID(\"%s\")" % uuid.UUID(bytes=bytes(v))
    return str(v)


def path_leaves(cur, parts, i=0, out=None):
    """Values at a dotted path, descending through arrays like an index does."""
    if out is None:
        out = []
    if i == len(parts):
        out.append(cur)
        return out
    part = parts[i]
    if isinstance(cur, dict):
        if part in cur:
            path_leaves(cur[part], parts, i + 1, out)
    elif isinstance(cur, list):
        if part.isdigit() and int(part) < len(cur):
            path_leaves(cur[int(part)], parts, i + 1, out)
        for elem in cur:
            if isinstance(elem, dict):
                path_leaves(elem, parts, i, out)
    return out


def get_path(doc, path):
    """Value at a dotted path through sub-documents only, or _MISSING."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def set_path(doc, path, value):
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return
    last = parts[-1]
    if isinstance(cur, dict):
        cur[last] = value
    elif isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        cur[int(last)] = value


def id_first(doc):
    """mongod always stores _id as the first field."""
    if doc and next(iter(doc)) != "_id" and "_id" in doc:
        new = {"_id": doc["_id"]}
        for k, v in doc.items():
            if k != "_id":
                new[k] = v
        return new
    return doc


def as_int(v, name="value"):
    if isinstance(v, bool) or not isinstance(v, (int, float, Int64, Decimal128)):
        raise CommandError(14, "Field '%s' should be a number" % name)
    return int(v.to_decimal()) if isinstance(v, Decimal128) else int(v)


def is_true(v):
    if isinstance(v, Decimal128):
        return v.to_decimal() != 0
    return bool(v)


def utcnow():
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def equality_values(v):
    """Values a filter term compares for equality, or None if it is not one."""
    if v is _MISSING:
        return None
    if isinstance(v, (Regex, re.Pattern)):
        return None
    if isinstance(v, dict):
        keys = list(v)
        if keys and all(k.startswith("$") for k in keys):
            if keys == ["$eq"]:
                return equality_values(v["$eq"])
            if keys == ["$in"] and isinstance(v["$in"], list):
                vals = v["$in"]
                if any(isinstance(x, (Regex, re.Pattern)) for x in vals):
                    return None
                return vals
            return None
        if any(k.startswith("$") for k in keys):
            return None
    return [v]


# ---------------------------------------------------------------------------
# Resume tokens and the cluster clock
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"^82([0-9A-Fa-f]{16})(0[01])([0-9a-f]{24})?$")


def tsi_of(ts):
    return (ts.time << 32) | ts.inc


def ts_of(tsi):
    return Timestamp(tsi >> 32, tsi & 0xFFFFFFFF)


def make_token(tsi, invalidate=False, history_id=""):
    """Resume token: hex of the event's cluster time (so tokens sort by time), an
    invalidate flag, and the id of the history that issued it (a restart without
    --data starts a new history, in which older tokens are lost)."""
    return {"_data": "82%016X%s%s" % (tsi, "01" if invalidate else "00", history_id)}


def parse_token(tok):
    """(cluster time, invalidate flag, history id or None) of a resume token."""
    if not isinstance(tok, dict) or not isinstance(tok.get("_data"), str):
        raise CommandError(260, "Invalid resume token: expected a document with a "
                                "'_data' string, got %r" % (tok,))
    m = _TOKEN_RE.match(tok["_data"])
    if not m:
        raise CommandError(260, "Invalid resume token: %r was not issued by this "
                                "test double" % (tok["_data"],))
    return int(m.group(1), 16), m.group(2) == "01", m.group(3)


class Clock:
    """The cluster time: Timestamp(seconds, increment), one tick per change event."""

    def __init__(self, last=0):
        self.last = last

    def tick(self):
        now = int(time.time())
        if now > (self.last >> 32):
            self.last = (now << 32) | 1
        else:
            self.last += 1
        return self.last

    def timestamp(self):
        return ts_of(self.last)


# ---------------------------------------------------------------------------
# Collections and indexes
# ---------------------------------------------------------------------------


def index_name_for(key):
    return "_".join("%s_%s" % (k, v if not isinstance(v, float) or not v.is_integer()
                               else int(v)) for k, v in key.items())


def _norm_key_spec(key):
    return tuple((k, canon(v)) for k, v in key.items())


def unique_keys(spec, doc):
    """{canonical key tuple: raw value tuple} of a document in a unique index."""
    pfe = spec.get("partialFilterExpression")
    if pfe is not None and not mm_filtering.filter_applies(pfe, doc):
        return {}
    per_field = []
    present = False
    for field in spec["key"]:
        leaves = path_leaves(doc, field.split("."))
        vals = []
        for leaf in leaves:
            if isinstance(leaf, list):
                vals.extend(leaf if leaf else [None])
            else:
                vals.append(leaf)
        if vals:
            present = True
        else:
            vals = [None]
        per_field.append(vals)
    if spec.get("sparse") and not present:
        return {}
    out = {}
    for combo in itertools.islice(itertools.product(*per_field), 10000):
        out.setdefault(tuple(canon(v) for v in combo), combo)
    return out


def field_keys(doc, field):
    """Keys of a document in a first-field lookup map, or None if irregular."""
    cur = doc
    for part in field.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                return [("null",)]
            cur = cur[part]
        else:
            return None
    if isinstance(cur, list):
        keys = [canon(cur)]
        for elem in cur:
            if isinstance(elem, (list, dict)):
                return None
            keys.append(canon(elem))
        return keys
    return [canon(cur)]


class FieldMap:
    __slots__ = ("refs", "map", "irregular")

    def __init__(self):
        self.refs = 0
        self.map = {}
        self.irregular = set()


class Coll:
    """One collection: documents by canonical _id, index specs and lookup maps."""

    def __init__(self, db, name, options=None, uid=None):
        self.db = db
        self.name = name
        self.options = options or {}
        self.uuid = uid or uuid.uuid4()
        self.docs = {}
        self.seqno = {}
        self._next = 0
        self.indexes = {"_id_": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
        self.uniq = {}
        self.fmaps = {}

    @property
    def ns(self):
        return "%s.%s" % (self.db, self.name)

    # -- lookup maps -------------------------------------------------------
    def _fm_index(self, fm, field, k, doc):
        keys = field_keys(doc, field)
        if keys is None:
            fm.irregular.add(k)
            return
        for key in keys:
            fm.map.setdefault(key, set()).add(k)

    def _fm_unindex(self, fm, field, k, doc):
        fm.irregular.discard(k)
        keys = field_keys(doc, field)
        for key in keys or ():
            s = fm.map.get(key)
            if s is not None:
                s.discard(k)
                if not s:
                    del fm.map[key]

    def _index(self, k, doc):
        for name, m in self.uniq.items():
            for key in unique_keys(self.indexes[name], doc):
                m[key] = k
        for field, fm in self.fmaps.items():
            self._fm_index(fm, field, k, doc)

    def _unindex(self, k, doc):
        for name, m in self.uniq.items():
            for key in unique_keys(self.indexes[name], doc):
                if m.get(key) == k:
                    del m[key]
        for field, fm in self.fmaps.items():
            self._fm_unindex(fm, field, k, doc)

    def add_index(self, spec):
        name = spec["name"]
        if spec.get("unique") and name != "_id_":
            m = {}
            for k, doc in self.docs.items():
                for key, raw in unique_keys(spec, doc).items():
                    other = m.get(key)
                    if other is not None and other != k:
                        raise self.dup_error(spec, raw)
                    m[key] = k
            self.uniq[name] = m
        self.indexes[name] = spec
        first = next(iter(spec["key"]))
        if first != "_id":
            fm = self.fmaps.get(first)
            if fm is None:
                fm = self.fmaps[first] = FieldMap()
                for k, doc in self.docs.items():
                    self._fm_index(fm, first, k, doc)
            fm.refs += 1

    def remove_index(self, name):
        spec = self.indexes.pop(name)
        self.uniq.pop(name, None)
        first = next(iter(spec["key"]))
        fm = self.fmaps.get(first)
        if fm is not None:
            fm.refs -= 1
            if fm.refs <= 0:
                del self.fmaps[first]
        return spec

    # -- documents -----------------------------------------------------------
    def set(self, k, doc):
        old = self.docs.get(k)
        if old is not None:
            self._unindex(k, old)
        else:
            self.seqno[k] = self._next
            self._next += 1
        self.docs[k] = doc
        self._index(k, doc)

    def remove(self, k):
        old = self.docs.pop(k, None)
        if old is not None:
            self._unindex(k, old)
            del self.seqno[k]
        return old

    def dup_error(self, spec, raw):
        fields = list(spec["key"])
        key_value = {f: v for f, v in zip(fields, raw)}
        msg = "E11000 duplicate key error collection: %s index: %s dup key: %s" % (
            self.ns, spec["name"], shell_repr(key_value))
        return CommandError(11000, msg, {"keyPattern": dict(spec["key"]),
                                         "keyValue": key_value})

    def check_unique(self, doc, k):
        """Raise E11000 if ``doc`` (to be stored under ``k``) breaks a unique index."""
        for name, m in self.uniq.items():
            spec = self.indexes[name]
            for key, raw in unique_keys(spec, doc).items():
                holder = m.get(key)
                if holder is not None and holder != k:
                    raise self.dup_error(spec, raw)

    def candidates(self, filt):
        """Documents that may match ``filt`` (a superset), in natural order."""
        if not filt:
            return list(self.docs.values())
        ids = equality_values(filt.get("_id", _MISSING))
        if ids is not None:
            ks = {canon(v) for v in ids}
            found = [k for k in ks if k in self.docs]
            found.sort(key=self.seqno.__getitem__)
            return [self.docs[k] for k in found]
        best = None
        for name, m in self.uniq.items():
            spec = self.indexes[name]
            if spec.get("sparse") or spec.get("partialFilterExpression") is not None:
                continue  # documents outside the index would be missed
            fields = list(spec["key"])
            vals = [equality_values(filt.get(f, _MISSING)) for f in fields]
            if all(v is not None and len(v) == 1 and not isinstance(v[0], (list, dict))
                   for v in vals):
                k = m.get(tuple(canon(v[0]) for v in vals))
                best = set() if k is None else {k}
                break
        if best is None:
            for field, fm in self.fmaps.items():
                vals = equality_values(filt.get(field, _MISSING))
                if vals is None:
                    continue
                ks = set(fm.irregular)
                for v in vals:
                    ks |= fm.map.get(canon(v), set())
                    if isinstance(v, list):  # {a: [..]} also matches arrays containing it
                        ks = None
                        break
                if ks is None:
                    continue
                if best is None or len(ks) < len(best):
                    best = ks
        if best is None:
            return list(self.docs.values())
        found = sorted(best, key=self.seqno.__getitem__)
        return [self.docs[k] for k in found]


# ---------------------------------------------------------------------------
# Change events
# ---------------------------------------------------------------------------


class Event:
    __slots__ = ("tsi", "wall", "op", "db", "coll", "key", "post", "pre", "desc", "to")

    def __init__(self, op, db, coll=None, key=None, post=None, pre=None, desc=None, to=None):
        self.tsi = 0
        self.wall = None
        self.op = op
        self.db = db
        self.coll = coll
        self.key = key
        self.post = post
        self.pre = pre
        self.desc = desc
        self.to = to

    def to_record(self):
        rec = {"tsi": Int64(self.tsi), "wall": self.wall, "op": self.op, "db": self.db}
        for name in ("coll", "key", "post", "pre", "desc", "to"):
            v = getattr(self, name)
            if v is not None:
                rec[name] = v
        return rec

    @classmethod
    def from_record(cls, rec):
        ev = cls(rec["op"], rec["db"], rec.get("coll"), rec.get("key"), rec.get("post"),
                 rec.get("pre"), rec.get("desc"), rec.get("to"))
        ev.tsi = int(rec["tsi"])
        ev.wall = rec.get("wall")
        return ev


class ChangeLog:
    """The oplog-like history of change events that change streams read."""

    def __init__(self, clock, history):
        self.clock = clock
        self.history = max(1, history)
        self.events = []
        self.start = 0
        self.floor = clock.last  # tokens older than this are lost
        self.history_id = str(ObjectId())  # tokens of another history are lost
        self._wake = asyncio.Event()

    def __len__(self):
        return len(self.events) - self.start

    def append(self, ev):
        ev.tsi = self.clock.tick()
        ev.wall = utcnow()
        self.events.append(ev)
        excess = len(self.events) - self.start - self.history
        if excess > 0:
            self.start += excess
            self.floor = self.events[self.start - 1].tsi
            if self.start > 4096 and self.start * 2 > len(self.events):
                del self.events[: self.start]
                self.start = 0

    def notify(self):
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def waiter(self):
        return self._wake

    def index_after(self, tsi):
        return bisect.bisect_right(self.events, tsi, lo=self.start,
                                   key=lambda e: e.tsi)

    def find(self, tsi):
        i = bisect.bisect_left(self.events, tsi, lo=self.start, key=lambda e: e.tsi)
        if i < len(self.events) and self.events[i].tsi == tsi:
            return self.events[i]
        return None

    def retained(self):
        return self.events[self.start:]


def update_description(old, new):
    updated = {}
    removed = []

    def walk(a, b, prefix):
        for k, v in b.items():
            path = prefix + k
            if k not in a:
                updated[path] = v
            elif isinstance(v, dict) and isinstance(a[k], dict) and v and a[k]:
                walk(a[k], v, path + ".")
            elif not bson_equal(a[k], v):
                updated[path] = v
        for k in a:
            if k not in b:
                removed.append(prefix + k)

    walk(old, new, "")
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": []}


# ---------------------------------------------------------------------------
# Cursors
# ---------------------------------------------------------------------------


class QueryCursor:
    kind = "query"

    def __init__(self, cid, ns, docs, pos, no_timeout=False):
        self.id = cid
        self.ns = ns
        self.docs = docs
        self.pos = pos
        self.busy = False
        self.killed = False
        self.no_timeout = no_timeout
        self.last_used = time.monotonic()


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
        self.pending_invalidate = None
        self.invalidated = False
        self.busy = False
        self.killed = False
        self.no_timeout = False
        self.last_used = time.monotonic()


# ---------------------------------------------------------------------------
# Sessions, transactions, fail points
# ---------------------------------------------------------------------------


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


class Conn:
    def __init__(self, cid, peer, writer):
        self.id = cid
        self.peer = peer
        self.writer = writer
        self.app_name = None
        self.driver = None


class DbShim:
    """Lets mongomock's $lookup read our collections."""

    def __init__(self, server, db):
        self.server = server
        self.db = db

    def get_collection(self, name):
        server, db = self.server, self.db

        class _Reader:
            def find(self, filt=None, *args, **kwargs):
                coll = server.get_coll(db, name)
                if coll is None:
                    return []
                return [copy.deepcopy(d) for d in server.query(coll, filt or {})]

        return _Reader()

    __getitem__ = get_collection


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class MongoDouble:
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
        self.handlers = self._handler_table()
        if data_path and os.path.exists(data_path):
            self.load(data_path)

    # -- catalog -----------------------------------------------------------
    @property
    def me(self):
        return "%s:%d" % (self.advertise or
                          (self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"),
                          self.port)

    def get_coll(self, db, name):
        colls = self.dbs.get(db)
        return colls.get(name) if colls else None

    def ensure_coll(self, db, name, options=None):
        check_db_name(db)
        check_coll_name(name)
        colls = self.dbs.setdefault(db, {})
        coll = colls.get(name)
        if coll is None:
            coll = colls[name] = Coll(db, name, options)
            self.dirty = True
        return coll

    # -- reads -------------------------------------------------------------
    def query(self, coll, filt, sort=None, skip=0, limit=0, projection=None):
        if filt is None:
            filt = {}
        if not isinstance(filt, dict):
            raise CommandError(14, "filter must be an object")
        docs = coll.candidates(filt) if coll is not None else []
        if filt:
            apply = mm_filtering.filter_applies
            docs = [d for d in docs if apply(filt, d)]
        if sort:
            for key, direction in reversed(list(sort.items())):
                if key == "$natural":
                    if direction < 0:
                        docs.reverse()
                    continue
                if isinstance(direction, dict):
                    raise CommandError(2, "$meta sort is not supported by the test double")
                docs.sort(key=lambda x, key=key: mm_filtering.resolve_sort_key(key, x),
                          reverse=direction < 0)
        if skip:
            docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        if projection:
            docs = [_SCRATCH._copy_only_fields(d, dict(projection), dict) for d in docs]
        return docs

    # -- writes ------------------------------------------------------------
    def insert_doc(self, coll, doc, ctx):
        if not isinstance(doc, dict):
            raise CommandError(14, "document must be an object")
        if "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        else:
            doc = id_first(doc)
        _id = doc["_id"]
        if isinstance(_id, (list, Regex, re.Pattern)):
            raise CommandError(2, "can't use an array for _id" if isinstance(_id, list)
                               else "can't use a regex for _id")
        k = canon(_id)
        if k in coll.docs:
            raise coll.dup_error(coll.indexes["_id_"], (_id,))
        coll.check_unique(doc, k)
        coll.set(k, doc)
        ctx.undo(coll, k, None)
        ctx.event(Event("insert", coll.db, coll.name, {"_id": _id}, post=doc))
        self.dirty = True
        return doc

    def replace_stored(self, coll, k, old, new, ctx, op):
        coll.check_unique(new, k)
        coll.set(k, new)
        ctx.undo(coll, k, old)
        desc = update_description(old, new) if op == "update" else None
        ctx.event(Event(op, coll.db, coll.name, {"_id": new["_id"]}, post=new, pre=old,
                        desc=desc))
        self.dirty = True

    def delete_stored(self, coll, k, ctx):
        old = coll.remove(k)
        if old is not None:
            ctx.undo(coll, k, old)
            ctx.event(Event("delete", coll.db, coll.name, {"_id": old["_id"]}, pre=old))
            self.dirty = True
        return old

    def apply_update(self, old, q, u, upsert_insert=False, array_filters=None):
        """The document ``old`` becomes after update ``u`` (operators, pipeline or
        replacement); ``old`` itself is left untouched."""
        if array_filters:
            raise CommandError(2, "arrayFilters are not supported by the test double")
        if isinstance(u, list):
            doc = copy.deepcopy(old)
            stages = normalize_pipeline(u, update=True)
            out = list(mm_aggregate.process_pipeline([doc], None, stages, None))
            if len(out) != 1 or not isinstance(out[0], dict):
                raise CommandError(2, "update pipeline must produce one document")
            new = out[0]
            if "_id" in old and "_id" not in new:
                new = {"_id": old["_id"], **new}
        elif not u or not next(iter(u)).startswith("$"):
            for key in u:
                if key.startswith("$"):
                    raise CommandError(52, "The dollar ($) prefixed field '%s' in '%s' is "
                                           "not allowed in the context of an update's "
                                           "replacement document." % (key, key))
            new = {"_id": old["_id"]} if "_id" in old else {}
            for key, v in u.items():
                if key == "_id":
                    continue
                new[key] = copy.deepcopy(v)
            if "_id" in u and "_id" in old and canon(u["_id"]) != canon(old["_id"]):
                raise CommandError(66, "After applying the update, the (immutable) field "
                                       "'_id' was found to have been altered to _id: %s"
                                       % shell_repr(u["_id"]))
            if "_id" in u and "_id" not in old:
                new = {"_id": u["_id"], **new}
        else:
            for key in u:
                if key not in UPDATE_OPERATORS:
                    raise CommandError(9, "Unknown modifier: %s. Expected a valid update "
                                          "modifier or pipeline-style update specified "
                                          "as an array" % key)
                if not isinstance(u[key], dict):
                    raise CommandError(9, "Modifiers operate on fields but we found type "
                                          "%s instead. For example: {$mod: {<field>: "
                                          "...}} not {%s: %r}"
                                       % (type(u[key]).__name__, key, u[key]))
            new = copy.deepcopy(old)
            _SCRATCH._apply_update_document(new, q or {}, u, upsert_insert)
            fix_numeric_types(old, new, u)
        if "_id" in old and ("_id" not in new or canon(new["_id"]) != canon(old["_id"])):
            raise CommandError(66, "Performing an update on the path '_id' would modify "
                                   "the immutable field '_id'")
        return id_first(new)

    def upsert_seed(self, q, u):
        """The document an upsert starts from: the query's equality fields."""
        _id = q.get("_id", _MISSING) if q else _MISSING
        if isinstance(_id, dict) and any(k.startswith("$") for k in _id):
            _id = _id.get("$eq", _MISSING) if list(_id) == ["$eq"] else _MISSING
        if _id is _MISSING and isinstance(u, dict) and u and not next(iter(u)).startswith("$"):
            _id = u.get("_id", _MISSING)
        if _id is _MISSING and isinstance(u, dict):
            for op in ("$set", "$setOnInsert"):
                if isinstance(u.get(op), dict) and "_id" in u[op]:
                    _id = u[op]["_id"]
        if isinstance(u, dict) and (not u or not next(iter(u)).startswith("$")):
            seed = {}  # replacement upserts do not keep the query's fields
        else:
            seed = dict(q or {})
            seed.pop("_id", None)
            seed = _SCRATCH._expand_dots(seed)
            seed, _ = _SCRATCH._discard_operators(seed)
            seed = dict(seed)
        if _id is _MISSING:
            _id = ObjectId()
        return {"_id": _id, **seed}

    def update_one_doc(self, coll, k, q, u, ctx, array_filters=None):
        """Apply ``u`` to the stored document ``k``; returns (old, new, modified)."""
        old = coll.docs[k]
        new = self.apply_update(old, q, u, False, array_filters)
        if bson.encode(new) == bson.encode(old):
            return old, old, False
        op = "update" if isinstance(u, list) or (u and next(iter(u)).startswith("$")) \
            else "replace"
        self.replace_stored(coll, k, old, new, ctx, op)
        return old, new, True

    def upsert_doc(self, coll, q, u, ctx, array_filters=None):
        seed = self.upsert_seed(q, u)
        new = self.apply_update(seed, q, u, True, array_filters)
        return self.insert_doc(coll, new, ctx)

    def write_ctx(self, txn):
        return WriteCtx(self, txn)

    def after_write(self, ctx):
        if ctx.published:
            self.changes.notify()

    def drop_coll(self, db, name, ctx):
        colls = self.dbs.get(db)
        if not colls or name not in colls:
            return False
        coll = colls.pop(name)
        if not colls:
            del self.dbs[db]
        ctx.event(Event("drop", db, name))
        self.dirty = True
        return coll

    # -- change streams ----------------------------------------------------
    def new_cursor_id(self):
        while True:
            cid = random.getrandbits(62) + 1
            if cid not in self.cursors:
                return cid

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

    def apply_stages(self, cur, doc):
        if not cur.stages:
            return doc
        if cur.match_only:
            for stage in cur.stages:
                if not mm_filtering.filter_applies(stage["$match"], doc):
                    return None
            return doc
        out = list(mm_aggregate.process_pipeline([copy.deepcopy(doc)], DbShim(self, cur.db),
                                                 cur.stages, None))
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
            doc = self.apply_stages(cur, self.render(cur, ev))
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

    def cursor_reply(self, ns, docs, batch_size, single_batch, no_timeout=False):
        n = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
        batch = take_batch(docs, 0, n) if n > 0 else []
        cid = 0
        if len(batch) < len(docs) and not single_batch:
            cid = self.new_cursor_id()
            self.cursors[cid] = QueryCursor(cid, ns, docs, len(batch), no_timeout)
        return {"cursor": {"firstBatch": batch, "id": Int64(cid), "ns": ns}}

    # -- persistence ---------------------------------------------------------
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

    async def saver(self):
        while True:
            await asyncio.sleep(self.save_interval)
            if self.dirty and self.data_path:
                try:
                    self.dump(self.data_path)
                except Exception:
                    log.error("periodic save failed:\n%s", traceback.format_exc())

    # -- transactions ----------------------------------------------------------
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

    # Command handlers are attached below (see _handler_table).


def fix_numeric_types(old, new, u):
    """mongomock's $inc/$mul turn Int64 into plain int; mongod keeps 64-bit results."""
    for op in ("$inc", "$mul"):
        spec = u.get(op)
        if not isinstance(spec, dict):
            continue
        for path, operand in spec.items():
            if "$" in path:
                continue
            value = get_path(new, path)
            if type(value) is not int:
                continue
            before = get_path(old, path)
            if isinstance(before, Int64) or isinstance(operand, Int64) \
                    or not -2 ** 31 <= value < 2 ** 31:
                set_path(new, path, Int64(value))


def normalize_pipeline(pipeline, update=False):
    """Rewrite stages mongomock lacks into ones it has."""
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' must be an array")
    out = []
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain "
                                      "exactly one field.")
        name, spec = next(iter(stage.items()))
        if update and name not in ("$addFields", "$set", "$project", "$unset",
                                   "$replaceRoot", "$replaceWith"):
            raise CommandError(72, "%s is not allowed to be used within an update" % name)
        if name == "$unset":
            fields = [spec] if isinstance(spec, str) else list(spec)
            out.append({"$project": {f: 0 for f in fields}})
        elif name == "$replaceWith":
            out.append({"$replaceRoot": {"newRoot": spec}})
        elif name == "$sortByCount":
            out.append({"$group": {"_id": spec, "count": {"$sum": 1}}})
            out.append({"$sort": {"count": -1}})
        elif name not in mm_aggregate._PIPELINE_HANDLERS:
            raise CommandError(40324, "Unrecognized pipeline stage name: '%s'" % name)
        else:
            out.append(stage)
    return out


def take_batch(docs, start, n):
    """docs[start:start+n] (n <= 0: no count limit), capped near 16 MiB."""
    end = len(docs) if n <= 0 else min(len(docs), start + n)
    size = 0
    i = start
    while i < end:
        doc_size = len(bson.encode(docs[i]))
        if i > start and size + doc_size > BATCH_BYTES:
            break
        size += doc_size
        i += 1
    return docs[start:i]


_BAD_DB_CHARS = set('/\\. "$\0')


def check_db_name(db):
    if not isinstance(db, str) or not db or any(c in _BAD_DB_CHARS for c in db) \
            or len(db) >= 64:
        raise CommandError(73, "Invalid database name: '%s'" % (db,))


def check_coll_name(name):
    if not isinstance(name, str) or not name or "\0" in name or \
            ("$" in name and not name.startswith("oplog.$")) or name.startswith("."):
        raise CommandError(73, "Invalid collection name: %s" % (name,))


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

GENERIC_ARGS = {
    "$db", "lsid", "$clusterTime", "txnNumber", "autocommit", "startTransaction",
    "writeConcern", "readConcern", "$readPreference", "apiVersion", "apiStrict",
    "apiDeprecationErrors", "comment", "maxTimeMS", "$audit", "$client", "$configServerState",
    "$queryOptions",
}
STATE_CHANGE_CODES = {91, 189, 10107, 11600, 11602, 13435, 13436}


class Ctx:
    def __init__(self, server, conn, name, body, db):
        self.server = server
        self.conn = conn
        self.name = name
        self.body = body
        self.db = db
        self.session = None
        self.txn = None
        self.txn_number = None
        self.retry = None
        self.cached = None

    def coll_name(self):
        v = self.body.get(self.name)
        if not isinstance(v, str):
            raise CommandError(73, "collection name has invalid type %s" % type(v).__name__)
        check_coll_name(v)
        return v

    def require_admin(self):
        if self.db != "admin":
            raise CommandError(13, "%s may only be run against the admin database." % self.name)

    def batch_size(self, container, field="batchSize"):
        v = container.get(field) if isinstance(container, dict) else None
        if v is None:
            return None
        n = as_int(v, field)
        if n < 0:
            raise CommandError(51024, "BSON field 'batchSize' value must be >= 0, actual "
                                      "value '%d'" % n)
        return n


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


def h_list_databases(srv, ctx):
    ctx.require_admin()
    filt = ctx.body.get("filter") or {}
    name_only = is_true(ctx.body.get("nameOnly", False))
    out = []
    total = 0
    for name in sorted(set(srv.dbs) | set(INTERNAL_DBS)):
        colls = srv.dbs.get(name) or {}
        size = 8192 * len(colls) + sum(64 * len(c.docs) for c in colls.values())
        entry = {"name": name, "sizeOnDisk": Int64(size or 8192), "empty": not colls}
        if filt and not mm_filtering.filter_applies(filt, entry):
            continue
        total += size
        out.append({"name": name} if name_only else entry)
    if name_only:
        return {"databases": out}
    return {"databases": out, "totalSize": Int64(total), "totalSizeMb": Int64(total >> 20)}


def coll_info(coll):
    return {"name": coll.name, "type": "collection", "options": coll.options,
            "info": {"readOnly": False, "uuid": Binary.from_uuid(coll.uuid)},
            "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}


def h_list_collections(srv, ctx):
    check_db_name(ctx.db)
    filt = ctx.body.get("filter") or {}
    name_only = is_true(ctx.body.get("nameOnly", False))
    out = []
    for name, coll in sorted((srv.dbs.get(ctx.db) or {}).items()):
        info = coll_info(coll)
        if filt and not mm_filtering.filter_applies(filt, info):
            continue
        out.append({"name": name, "type": "collection"} if name_only else info)
    return srv.cursor_reply("%s.$cmd.listCollections" % ctx.db, out,
                            ctx.batch_size(ctx.body.get("cursor")), False)


def h_db_stats(srv, ctx):
    colls = srv.dbs.get(ctx.db) or {}
    objects = sum(len(c.docs) for c in colls.values())
    return {"db": ctx.db, "collections": len(colls), "views": 0, "objects": objects,
            "avgObjSize": 0.0, "dataSize": float(objects * 64),
            "storageSize": float(objects * 64), "indexes": sum(len(c.indexes)
                                                                for c in colls.values()),
            "indexSize": 0.0, "totalSize": float(objects * 64), "scaleFactor": 1.0}


def h_create(srv, ctx):
    name = ctx.coll_name()
    check_db_name(ctx.db)
    if ctx.body.get("viewOn") is not None:
        raise CommandError(2, "views are not supported by the test double")
    if srv.get_coll(ctx.db, name) is not None:
        raise CommandError(48, "Collection %s.%s already exists." % (ctx.db, name))
    options = {k: v for k, v in ctx.body.items() if k != "create" and k not in GENERIC_ARGS}
    srv.ensure_coll(ctx.db, name, options)
    return {}


def h_drop(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns not found")
    wctx = srv.write_ctx(None)
    srv.drop_coll(ctx.db, name, wctx)
    srv.after_write(wctx)
    return {"nIndexesWas": len(coll.indexes), "ns": coll.ns}


def h_drop_database(srv, ctx):
    check_db_name(ctx.db)
    wctx = srv.write_ctx(None)
    colls = srv.dbs.get(ctx.db)
    if colls:
        for name in list(colls):
            srv.drop_coll(ctx.db, name, wctx)
        wctx.event(Event("dropDatabase", ctx.db))
        srv.dbs.pop(ctx.db, None)
    srv.after_write(wctx)
    return {"dropped": ctx.db}


def h_rename_collection(srv, ctx):
    ctx.require_admin()
    src, dst = ctx.body.get("renameCollection"), ctx.body.get("to")
    if not isinstance(src, str) or not isinstance(dst, str) or "." not in src or "." not in dst:
        raise CommandError(73, "Invalid namespace specified")
    sdb, sname = src.split(".", 1)
    ddb, dname = dst.split(".", 1)
    check_db_name(ddb)
    check_coll_name(dname)
    coll = srv.get_coll(sdb, sname)
    if coll is None:
        raise CommandError(26, "Source collection %s does not exist" % src)
    wctx = srv.write_ctx(None)
    if srv.get_coll(ddb, dname) is not None:
        if not is_true(ctx.body.get("dropTarget", False)):
            raise CommandError(48, "target namespace exists")
        srv.drop_coll(ddb, dname, wctx)
    del srv.dbs[sdb][sname]
    if not srv.dbs[sdb]:
        del srv.dbs[sdb]
    wctx.event(Event("rename", sdb, sname, to={"db": ddb, "coll": dname}))
    coll.db, coll.name = ddb, dname
    srv.dbs.setdefault(ddb, {})[dname] = coll
    srv.dirty = True
    srv.after_write(wctx)
    return {}


def h_coll_mod(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns does not exist")
    out = {}
    for k, v in ctx.body.items():
        if k == "collMod" or k in GENERIC_ARGS:
            continue
        if k == "index":
            spec = None
            for s in coll.indexes.values():
                if s["name"] == v.get("name") or (isinstance(v.get("keyPattern"), dict) and
                                                  _norm_key_spec(s["key"]) ==
                                                  _norm_key_spec(v["keyPattern"])):
                    spec = s
            if spec is None:
                raise CommandError(27, "cannot find index %s for ns %s" % (v, coll.ns))
            if "expireAfterSeconds" in v:
                out["expireAfterSeconds_old"] = spec.get("expireAfterSeconds")
                spec["expireAfterSeconds"] = v["expireAfterSeconds"]
                out["expireAfterSeconds_new"] = v["expireAfterSeconds"]
        else:
            coll.options[k] = v
    srv.dirty = True
    return out


INDEX_OPTION_KEYS = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds",
                     "collation", "hidden")


def _index_options(spec):
    return canon({k: spec[k] for k in INDEX_OPTION_KEYS if k in spec and
                  not (k in ("unique", "sparse", "hidden") and not spec[k])})


def h_create_indexes(srv, ctx):
    name = ctx.coll_name()
    specs = ctx.body.get("indexes")
    if not isinstance(specs, list) or not specs:
        raise CommandError(2, "Must specify at least one index to create")
    existed = srv.get_coll(ctx.db, name) is not None
    coll = srv.ensure_coll(ctx.db, name)
    before = len(coll.indexes)
    created = 0
    for raw in specs:
        if not isinstance(raw, dict):
            raise CommandError(14, "The 'indexes' field must be an array of objects")
        key = raw.get("key")
        if not isinstance(key, dict) or not key:
            raise CommandError(67, "Error in specification %s :: caused by :: The 'key' "
                                   "field must be a non-empty object" % shell_repr(raw))
        iname = raw.get("name") or index_name_for(key)
        spec = {"v": 2, "key": key, "name": iname}
        for k, v in raw.items():
            if k not in ("v", "key", "name", "ns", "background"):
                spec[k] = v
        if iname == "_id_" or _norm_key_spec(key) == (("_id", canon(1)),):
            if iname == "_id_" and _norm_key_spec(key) != (("_id", canon(1)),):
                raise CommandError(67, "The index name '_id_' is reserved for the _id index")
            if spec.get("unique") is False:
                raise CommandError(67, "The field 'unique' is not valid for an _id index "
                                       "specification.")
            continue
        existing = coll.indexes.get(iname)
        if existing is not None:
            if _norm_key_spec(existing["key"]) != _norm_key_spec(key):
                raise CommandError(86, "An existing index has the same name as the requested "
                                       "index. When index names are not specified, they are "
                                       "auto generated and can cause conflicts. Please refer "
                                       "to our documentation. Requested index: %s, existing "
                                       "index: %s" % (shell_repr(spec), shell_repr(existing)))
            if _index_options(existing) != _index_options(spec):
                raise CommandError(85, "An equivalent index already exists with the same name "
                                       "but different options. Requested index: %s, existing "
                                       "index: %s" % (shell_repr(spec), shell_repr(existing)))
            continue
        clash = None
        for other in coll.indexes.values():
            if _norm_key_spec(other["key"]) == _norm_key_spec(key) and \
                    canon(other.get("partialFilterExpression")) == \
                    canon(spec.get("partialFilterExpression")):
                clash = other
        if clash is not None:
            if _index_options(clash) == _index_options(spec):
                raise CommandError(85, "Index already exists with a different name: %s"
                                   % clash["name"])
            raise CommandError(85, "An equivalent index already exists with a different name "
                                   "and options. Requested index: %s, existing index: %s"
                               % (shell_repr(spec), shell_repr(clash)))
        coll.add_index(spec)
        srv.dirty = True
        created += 1
    res = {"numIndexesBefore": before, "numIndexesAfter": len(coll.indexes),
           "createdCollectionAutomatically": not existed}
    if created == 0:
        res["note"] = "all indexes already exist"
    return res


def h_list_indexes(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns does not exist: %s.%s" % (ctx.db, name))
    return srv.cursor_reply(coll.ns, list(coll.indexes.values()),
                            ctx.batch_size(ctx.body.get("cursor")), False)


def h_drop_indexes(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns not found %s.%s" % (ctx.db, name))
    was = len(coll.indexes)
    which = ctx.body.get("index")
    if which == "*":
        names = [n for n in coll.indexes if n != "_id_"]
    elif isinstance(which, str):
        names = [which]
    elif isinstance(which, list):
        names = list(which)
    elif isinstance(which, dict):
        names = [n for n, s in coll.indexes.items()
                 if _norm_key_spec(s["key"]) == _norm_key_spec(which)]
        if not names:
            raise CommandError(27, "can't find index with key: %s" % shell_repr(which))
    else:
        raise CommandError(14, "'index' must be a string, an object or an array of strings")
    for n in names:
        if n == "_id_":
            raise CommandError(72, "cannot drop _id index")
        if n not in coll.indexes:
            raise CommandError(27, "index not found with name [%s]" % n)
    for n in names:
        coll.remove_index(n)
    srv.dirty = True
    return {"nIndexesWas": was}


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
                q = stmt.get("q") or {}
                u = stmt.get("u")
                if not isinstance(u, (dict, list)):
                    raise CommandError(40414, "BSON field 'update.updates.u' is missing but "
                                              "a required field")
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
                for d in srv.query(coll, stmt["q"] or {}, limit=limit):
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
    q = b.get("query") or {}
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
        value = _SCRATCH._copy_only_fields(value, dict(fields), dict)
    return {"lastErrorObject": leo, "value": value}


def h_find(srv, ctx):
    name = ctx.coll_name()
    b = ctx.body
    filt = b.get("filter") or {}
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
    q = b.get("query") or {}
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
    for d in srv.query(coll, ctx.body.get("query") or {}) if coll else []:
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


ErrorStageNotPermitted = 31324  # mongod's code for a stage not allowed after $changeStream


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


def _handler_table(self):
    t = {
        "ping": h_ping,
        "hello": h_hello,
        "isMaster": h_hello,
        "ismaster": h_hello,
        "buildInfo": h_build_info,
        "buildinfo": h_build_info,
        "whatsmyuri": h_whatsmyuri,
        "serverStatus": h_server_status,
        "getParameter": h_get_parameter,
        "getCmdLineOpts": h_get_cmd_line_opts,
        "getLog": h_get_log,
        "connectionStatus": h_connection_status,
        "replSetGetStatus": h_repl_set_get_status,
        "startSession": h_start_session,
        "endSessions": h_end_sessions,
        "killSessions": h_end_sessions,
        "refreshSessions": h_refresh_sessions,
        "killAllSessions": h_kill_all_sessions,
        "commitTransaction": h_commit_transaction,
        "abortTransaction": h_abort_transaction,
        "configureFailPoint": h_configure_fail_point,
        "shutdown": h_shutdown,
        "listDatabases": h_list_databases,
        "listCollections": h_list_collections,
        "dbStats": h_db_stats,
        "create": h_create,
        "drop": h_drop,
        "dropDatabase": h_drop_database,
        "renameCollection": h_rename_collection,
        "collMod": h_coll_mod,
        "createIndexes": h_create_indexes,
        "listIndexes": h_list_indexes,
        "dropIndexes": h_drop_indexes,
        "deleteIndexes": h_drop_indexes,
        "insert": h_insert,
        "update": h_update,
        "delete": h_delete,
        "findAndModify": h_find_and_modify,
        "findandmodify": h_find_and_modify,
        "find": h_find,
        "getMore": h_get_more,
        "killCursors": h_kill_cursors,
        "count": h_count,
        "distinct": h_distinct,
        "aggregate": h_aggregate,
    }
    return t


MongoDouble._handler_table = _handler_table


# ---------------------------------------------------------------------------
# Dispatch and the wire protocol
# ---------------------------------------------------------------------------


def _prepare_session(srv, ctx):
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


async def run_command(self, conn, body, db):
    """Run one command; returns the reply document (raises CloseConnection)."""
    if not isinstance(body, dict) or not body:
        return self.finish_reply(CommandError(59, "no such command: ''").to_doc())
    name = next(iter(body))
    if not isinstance(db, str):
        err = CommandError(40571, "OP_MSG requests require a $db argument")
        return self.finish_reply(err.to_doc())
    ctx = Ctx(self, conn, name, body, db)
    started = time.monotonic()
    fp_data = None
    try:
        if name != "configureFailPoint":
            fp_data = self.failpoints["failCommand"].check(name, conn)
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
        handler = self.handlers.get(name)
        if handler is None:
            raise CommandError(59, "no such command: '%s'" % name)
        _prepare_session(self, ctx)
        if ctx.cached is not None:
            reply = ctx.cached
        else:
            res = handler(self, ctx)
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
        labels = ce.labels if ce.labels is not None else _auto_labels(self, ctx, ce.code)
        if labels:
            reply["errorLabels"] = labels
        if ce.code in STATE_CHANGE_CODES:
            reply["topologyVersion"] = {"processId": self.process_id, "counter": Int64(0)}
        if self.verbose or not (ce.code == 11000 or (ce.code == 26 and name == "drop")):
            log.warning("conn%d %s on %s failed: %d %s", conn.id, name, db, ce.code,
                        ce.errmsg[:300])
    reply = self.finish_reply(reply)
    if self.verbose:
        log.info("conn%d %s %s %.300s -> ok=%s (%.1f ms)", conn.id, db, name,
                 _brief(body), reply.get("ok"), (time.monotonic() - started) * 1000)
    return reply


def finish_reply(self, reply):
    reply["$clusterTime"] = self.cluster_time_doc()
    reply["operationTime"] = self.clock.timestamp()
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


MongoDouble.run_command = run_command
MongoDouble.finish_reply = finish_reply


class ProtocolError(Exception):
    pass


async def handle_client(self, reader, writer):
    peer = writer.get_extra_info("peername")
    peer_s = "%s:%s" % tuple(peer[:2]) if peer else "?"
    conn = Conn(next(self.conn_ids), peer_s, writer)
    self.conns[conn.id] = conn
    self.total_conns += 1
    task = asyncio.current_task()
    self.tasks.add(task)
    log.info("conn%d open from %s (%d open)", conn.id, peer_s, len(self.conns))
    reason = "closed by client"
    try:
        while True:
            try:
                header = await reader.readexactly(16)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    reason = "truncated message header"
                break
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            if length < 16 or length > MAX_MESSAGE_SIZE + 16 * 1024:
                reason = "invalid message length %d" % length
                log.error("conn%d: %s", conn.id, reason)
                break
            payload = await reader.readexactly(length - 16)
            if opcode == OP_MSG:
                await self.on_msg(conn, request_id, payload)
            elif opcode == OP_QUERY:
                await self.on_query(conn, request_id, payload)
            else:
                reason = "unsupported opcode %d" % opcode
                log.error("conn%d: %s", conn.id, reason)
                break
            if self.stopping.is_set():
                reason = "server shutting down"
                break
    except CloseConnection:
        reason = "closed by the server (failCommand/shutdown)"
    except ProtocolError as exc:
        reason = "protocol error: %s" % exc
        log.error("conn%d: %s", conn.id, reason)
    except (ConnectionError, asyncio.IncompleteReadError):
        reason = "connection reset"
    except asyncio.CancelledError:
        reason = "server shutdown"
    except Exception:  # noqa: BLE001
        reason = "internal error"
        log.error("conn%d: internal error:\n%s", conn.id, traceback.format_exc())
    finally:
        self.tasks.discard(task)
        self.conns.pop(conn.id, None)
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        log.info("conn%d closed: %s (app=%s) (%d open)", conn.id, reason, conn.app_name,
                 len(self.conns))


_request_ids = itertools.count(1)


def _encode_reply(reply):
    try:
        return bson.encode(reply)
    except Exception as exc:  # noqa: BLE001
        log.error("cannot encode a reply: %r", exc)
        err = CommandError(10334 if "too large" in str(exc) else 1,
                           "cannot encode the reply: %s" % exc).to_doc()
        return bson.encode(err)


async def on_msg(self, conn, request_id, payload):
    if len(payload) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & MSG_CHECKSUM_PRESENT else 0)
    required = flags & 0xFFFF & ~(MSG_CHECKSUM_PRESENT | MSG_MORE_TO_COME)
    if required:
        raise ProtocolError("unknown required OP_MSG flag bits 0x%x" % required)
    pos = 4
    body = None
    sequences = []
    try:
        while pos < end:
            kind = payload[pos]
            pos += 1
            (size,) = struct.unpack_from("<i", payload, pos)
            if size < 5 or pos + size > end:
                raise ProtocolError("bad OP_MSG section size %d" % size)
            if kind == 0:
                if body is not None:
                    raise ProtocolError("more than one kind-0 section")
                body = bson.decode(payload[pos:pos + size])
            elif kind == 1:
                nul = payload.index(b"\x00", pos + 4, pos + size)
                ident = payload[pos + 4:nul].decode("utf-8")
                docs = bson.decode_all(payload[nul + 1:pos + size])
                sequences.append((ident, docs))
            else:
                raise ProtocolError("unknown OP_MSG section kind %d" % kind)
            pos += size
    except (bson.errors.BSONError, ValueError, struct.error) as exc:
        raise ProtocolError("malformed OP_MSG: %s" % exc) from exc
    if body is None:
        raise ProtocolError("OP_MSG without a kind-0 body section")
    for ident, docs in sequences:
        if ident in body:
            err = CommandError(40413, "Duplicate field %s" % ident).to_doc()
            await self.send_msg(conn, request_id, self.finish_reply(err))
            return
        body[ident] = docs
    reply = await self.run_command(conn, body, body.get("$db"))
    if flags & MSG_MORE_TO_COME:
        return  # unacknowledged write (w:0): no reply
    await self.send_msg(conn, request_id, reply)


async def send_msg(self, conn, response_to, reply):
    data = _encode_reply(reply)
    header = struct.pack("<iiiiIB", 16 + 4 + 1 + len(data), next(_request_ids), response_to,
                         OP_MSG, 0, 0)
    conn.writer.write(header + data)
    await conn.writer.drain()


async def on_query(self, conn, request_id, payload):
    try:
        nul = payload.index(b"\x00", 4)
        ns = payload[4:nul].decode("utf-8")
        pos = nul + 1 + 8  # numberToSkip, numberToReturn
        (size,) = struct.unpack_from("<i", payload, pos)
        query = bson.decode(payload[pos:pos + size])
    except (bson.errors.BSONError, ValueError, struct.error) as exc:
        raise ProtocolError("malformed OP_QUERY: %s" % exc) from exc
    if ns.endswith(".$cmd"):
        db = ns[:-5]
        cmd = query
        if "$query" in cmd and isinstance(cmd["$query"], dict):
            cmd = cmd["$query"]
        elif "query" in cmd and isinstance(cmd["query"], dict) and len(cmd) <= 3 \
                and next(iter(cmd)) == "query":
            cmd = cmd["query"]
        reply = await self.run_command(conn, cmd, db)
        flags = 8  # AwaitCapable
    else:
        reply = {"$err": "OP_QUERY is only supported for commands by the test double "
                         "(namespace %s)" % ns, "code": 352, "ok": 0.0}
        flags = 2  # QueryFailure
    data = _encode_reply(reply)
    header = struct.pack("<iiiiiqii", 16 + 20 + len(data), next(_request_ids), request_id,
                         OP_REPLY, flags, 0, 0, 1)
    conn.writer.write(header + data)
    await conn.writer.drain()


MongoDouble.handle_client = handle_client
MongoDouble.on_msg = on_msg
MongoDouble.send_msg = send_msg
MongoDouble.on_query = on_query


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


async def serve(args):
    srv = MongoDouble(host=args.host, port=args.port, data_path=args.data,
                      history=args.history, verbose=args.verbose,
                      ttl_interval=args.ttl_interval, advertise=args.advertise,
                      save_interval=args.save_interval)
    server = await asyncio.start_server(srv.handle_client, args.host, args.port,
                                        reuse_address=True)
    srv.server = server
    srv.port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, srv.stopping.set)
    # A parent may start us with SIGTERM/SIGINT blocked (the mask survives exec: the Swift
    # test process does this); unblock them so that they stop us cleanly.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    background = [asyncio.create_task(srv.reaper())]
    if args.ttl_interval > 0:
        background.append(asyncio.create_task(srv.ttl_monitor()))
    if args.save_interval > 0 and args.data:
        background.append(asyncio.create_task(srv.saver()))
    log.info("mongo_double listening on %s:%d (replica set rs0, primary %s, maxWireVersion "
             "%d, history %d events%s)", args.host, srv.port, srv.me, MAX_WIRE_VERSION,
             srv.changes.history, ", data %s" % args.data if args.data else "")
    await srv.stopping.wait()
    log.info("stopping")
    server.close()
    for task in list(srv.tasks):
        task.cancel()
    if srv.tasks:
        await asyncio.wait(list(srv.tasks), timeout=5)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if args.data:
        for sess in srv.sessions.values():
            if sess.txn is not None and sess.txn.state == "active":
                srv.abort_txn(sess.txn)
        srv.dump(args.data)
        log.info("saved %d collections and %d change events to %s",
                 sum(len(c) for c in srv.dbs.values()), len(srv.changes), args.data)
    log.info("stopped")


def main(argv=None):
    parser = argparse.ArgumentParser(description="MongoDB wire-protocol test double")
    parser.add_argument("--port", type=int, default=27017,
                        help="TCP port (0 picks a free one; it is logged)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--advertise", default=None,
                        help="host name announced in hello's hosts/me/primary "
                             "(default: --host)")
    parser.add_argument("--data", default=None,
                        help="BSON file: loaded at start, written on a clean stop")
    parser.add_argument("--history", type=int, default=100_000,
                        help="change events retained for resuming change streams "
                             "(older resume tokens get error 286)")
    parser.add_argument("--ttl-interval", type=float, default=60.0,
                        help="seconds between TTL index passes (0 disables)")
    parser.add_argument("--save-interval", type=float, default=0.0,
                        help="also save --data every N seconds when changed (0: only on stop)")
    parser.add_argument("--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s mongo_double %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
