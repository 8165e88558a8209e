"""The change history that change streams read: resume tokens, the cluster clock, events."""

from __future__ import annotations

import asyncio
import bisect
import re
import time

from bson import Int64, ObjectId, Timestamp

from .errors import CommandError
from .values import bson_equal, utcnow

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
