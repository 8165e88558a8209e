"""Aggregation pipelines: stages mongomock lacks, and $lookup reading our collections."""

from __future__ import annotations

import copy

from mongomock import aggregate as mm_aggregate

from .errors import CommandError


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
