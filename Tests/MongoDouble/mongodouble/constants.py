"""Wire-protocol and server constants, error code names and command sets."""

from __future__ import annotations

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


GENERIC_ARGS = {
    "$db", "lsid", "$clusterTime", "txnNumber", "autocommit", "startTransaction",
    "writeConcern", "readConcern", "$readPreference", "apiVersion", "apiStrict",
    "apiDeprecationErrors", "comment", "maxTimeMS", "$audit", "$client", "$configServerState",
    "$queryOptions",
}
STATE_CHANGE_CODES = {91, 189, 10107, 11600, 11602, 13435, 13436}


ErrorStageNotPermitted = 31324  # mongod's code for a stage not allowed after $changeStream
