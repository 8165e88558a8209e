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

This file is only the entry point: the double is the package ``mongodouble`` next to it
(see README.md for its modules).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mongodouble.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
