"""Query cursors (find, aggregate, listCollections, listIndexes) and their batches."""

from __future__ import annotations

import random
import time

import bson
from bson import Int64

from .constants import BATCH_BYTES, DEFAULT_FIRST_BATCH


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


class CursorMixin:
    """The server's open cursors."""

    def new_cursor_id(self):
        while True:
            cid = random.getrandbits(62) + 1
            if cid not in self.cursors:
                return cid

    def cursor_reply(self, ns, docs, batch_size, single_batch, no_timeout=False):
        n = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
        batch = take_batch(docs, 0, n) if n > 0 else []
        cid = 0
        if len(batch) < len(docs) and not single_batch:
            cid = self.new_cursor_id()
            self.cursors[cid] = QueryCursor(cid, ns, docs, len(batch), no_timeout)
        return {"cursor": {"firstBatch": batch, "id": Int64(cid), "ns": ns}}
