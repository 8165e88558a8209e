"""BSON value helpers: MongoDB equality keys, shell rendering, dotted paths, numbers."""

from __future__ import annotations

import datetime
import re
import uuid

import bson
from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.max_key import MaxKey
from bson.min_key import MinKey

from .errors import CommandError

MISSING = object()


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
    """Value at a dotted path through sub-documents only, or MISSING."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
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
    if v is MISSING:
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
