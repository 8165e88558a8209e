"""Errors with mongod's shape, and the exceptions that close a connection."""

from __future__ import annotations

import bson
from pymongo.errors import OperationFailure as _PyOperationFailure
from pymongo.errors import PyMongoError as _PyMongoError

from .constants import CODE_NAMES


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


class ProtocolError(Exception):
    pass
