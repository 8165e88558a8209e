"""Update semantics: operators, replacements and pipelines applied to one document."""

from __future__ import annotations

import copy

import mongomock
from bson import Int64, ObjectId
from mongomock import aggregate as mm_aggregate

from .constants import UPDATE_OPERATORS
from .errors import CommandError
from .pipelines import normalize_pipeline
from .values import MISSING, canon, get_path, id_first, set_path, shell_repr


def _mul_updater(doc, field_name, value):
    """``$mul``, which mongomock 4.3 lacks (a missing field becomes 0); applied through
    mongomock's field traversal by ``apply_update``."""
    if isinstance(doc, dict):
        doc[field_name] = doc.get(field_name, 0) * value
    elif isinstance(doc, list):
        idx = int(field_name)
        doc[idx] = doc[idx] * value

# A scratch mongomock collection: its update/projection helpers are applied to
# our documents; it never stores anything.
SCRATCH = mongomock.MongoClient()["__mongo_double__"]["__scratch__"]


def apply_update(old, q, u, upsert_insert=False, array_filters=None):
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
        if "$mul" not in u:
            SCRATCH._apply_update_document(new, q or {}, u, upsert_insert)
        else:  # the operators before $mul, $mul, the ones after: in the update's order
            ops = list(u)
            at = ops.index("$mul")
            before = {k: u[k] for k in ops[:at]}
            after = {k: u[k] for k in ops[at + 1:]}
            if before:
                SCRATCH._apply_update_document(new, q or {}, before, upsert_insert)
            SCRATCH._update_document_fields_with_positional_awareness(
                new, u["$mul"], q or {}, _mul_updater, None)
            if after:
                SCRATCH._apply_update_document(new, q or {}, after, upsert_insert)
        fix_numeric_types(old, new, u)
    if "_id" in old and ("_id" not in new or canon(new["_id"]) != canon(old["_id"])):
        raise CommandError(66, "Performing an update on the path '_id' would modify "
                               "the immutable field '_id'")
    return id_first(new)

def upsert_seed(q, u):
    """The document an upsert starts from: the query's equality fields."""
    _id = q.get("_id", MISSING) if q else MISSING
    if isinstance(_id, dict) and any(k.startswith("$") for k in _id):
        _id = _id.get("$eq", MISSING) if list(_id) == ["$eq"] else MISSING
    if _id is MISSING and isinstance(u, dict) and u and not next(iter(u)).startswith("$"):
        _id = u.get("_id", MISSING)
    if _id is MISSING and isinstance(u, dict):
        for op in ("$set", "$setOnInsert"):
            if isinstance(u.get(op), dict) and "_id" in u[op]:
                _id = u[op]["_id"]
    if isinstance(u, dict) and (not u or not next(iter(u)).startswith("$")):
        seed = {}  # replacement upserts do not keep the query's fields
    else:
        seed = dict(q or {})
        seed.pop("_id", None)
        seed = SCRATCH._expand_dots(seed)
        seed, _ = SCRATCH._discard_operators(seed)
        seed = dict(seed)
    if _id is MISSING:
        _id = ObjectId()
    return {"_id": _id, **seed}


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
