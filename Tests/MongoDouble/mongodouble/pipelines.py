"""Aggregation pipelines: stages mongomock lacks, system variables ($$NOW, $$CLUSTER_TIME)
and date arithmetic in $add, which mongomock lacks, and $lookup reading our collections."""

from __future__ import annotations

import copy
import datetime

from bson import Decimal128, Int64
from mongomock import aggregate as mm_aggregate

from .errors import CommandError
from .values import utcnow


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


# ---------------------------------------------------------------------------------------
# System variables. mongomock knows only $$ROOT/$$CURRENT, so the command resolves $$NOW
# and $$CLUSTER_TIME to values before mongomock sees an expression: once per command, which
# is also mongod's rule ($$NOW is the same for every document a statement touches).
# ---------------------------------------------------------------------------------------

_NO_EXPRESSIONS = {"$sort", "$limit", "$skip", "$count", "$unwind", "$out", "$merge",
                   "$sample", "$unset", "$sortByCount"}


def system_variables(srv):
    """The values of $$NOW (a date, ms precision) and $$CLUSTER_TIME for one command."""
    return {"$$NOW": utcnow(), "$$CLUSTER_TIME": srv.clock.timestamp()}


def mentions_system_variables(obj):
    if isinstance(obj, str):
        return obj.startswith(("$$NOW", "$$CLUSTER_TIME"))
    if isinstance(obj, dict):
        return any(mentions_system_variables(v) for v in obj.values())
    if isinstance(obj, list):
        return any(mentions_system_variables(v) for v in obj)
    return False


def resolve_expression(expr, variables):
    """``expr`` (an aggregation expression) with the system variables replaced by their
    values, and $add of a date folded or rewritten so that mongomock can evaluate it."""
    if isinstance(expr, str):
        return variables.get(expr, expr)
    if isinstance(expr, list):
        return [resolve_expression(x, variables) for x in expr]
    if not isinstance(expr, dict):
        return expr
    if len(expr) == 1 and "$literal" in expr:
        return expr
    out = {k: resolve_expression(v, variables) for k, v in expr.items()}
    if len(out) == 1 and isinstance(out.get("$add"), list):
        return _date_add(out["$add"])
    return out


def resolve_filter(filt, variables):
    """A query filter with the system variables resolved inside its $expr terms (anywhere
    else "$$NOW" is a plain string)."""
    if not isinstance(filt, dict) or not filt:
        return filt
    out = {}
    for k, v in filt.items():
        if k == "$expr":
            v = resolve_expression(v, variables)
        elif k in ("$and", "$or", "$nor") and isinstance(v, list):
            v = [resolve_filter(x, variables) for x in v]
        out[k] = v
    return out


def resolve_pipeline(pipeline, variables):
    """A pipeline (a list of stages) with the system variables resolved where stages take
    expressions."""
    if not isinstance(pipeline, list):
        return pipeline
    out = []
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            out.append(stage)
            continue
        name, spec = next(iter(stage.items()))
        if name == "$match":
            spec = resolve_filter(spec, variables)
        elif name == "$facet" and isinstance(spec, dict):
            spec = {k: resolve_pipeline(p, variables) for k, p in spec.items()}
        elif name == "$lookup" and isinstance(spec, dict):
            spec = dict(spec)
            if "let" in spec:
                spec["let"] = resolve_expression(spec["let"], variables)
            if "pipeline" in spec:
                spec["pipeline"] = resolve_pipeline(spec["pipeline"], variables)
        elif name not in _NO_EXPRESSIONS:
            spec = resolve_expression(spec, variables)
        out.append({name: spec})
    return out


_NUMBERS = (int, float, Int64, Decimal128)


def _is_constant(v):
    return v is None or isinstance(v, _NUMBERS + (bool, datetime.datetime)) or (
        isinstance(v, str) and not v.startswith("$"))


def _date_add(args):
    """{$add: args} with a date among the operands: mongod adds the others (milliseconds)
    to it; mongomock's $add takes numbers only."""
    dates = [a for a in args if isinstance(a, datetime.datetime)]
    if not dates:
        return {"$add": args}
    if len(dates) > 1:
        raise CommandError(16612, "only one date allowed in an $add expression")
    others = [a for a in args if not isinstance(a, datetime.datetime)]
    if all(_is_constant(a) for a in others):
        total = 0
        for a in others:
            if a is None:
                return None
            if isinstance(a, bool) or not isinstance(a, _NUMBERS):
                raise CommandError(16554, "$add only supports numeric or date types, not %s"
                                   % ("bool" if isinstance(a, bool) else type(a).__name__))
            total += float(a.to_decimal()) if isinstance(a, Decimal128) else a
        return {"$literal": dates[0] + datetime.timedelta(milliseconds=round(total))}
    # date - (-(sum of the others)): mongomock's $subtract does date minus milliseconds,
    # and gives null if the sum is null.
    return {"$subtract": [dates[0], {"$multiply": [-1, {"$add": others}]}]}
