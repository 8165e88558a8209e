"""createIndexes, listIndexes, dropIndexes."""

from __future__ import annotations

from ..catalog import index_name_for, norm_key_spec
from ..errors import CommandError
from ..values import canon, shell_repr

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
        if iname == "_id_" or norm_key_spec(key) == (("_id", canon(1)),):
            if iname == "_id_" and norm_key_spec(key) != (("_id", canon(1)),):
                raise CommandError(67, "The index name '_id_' is reserved for the _id index")
            if spec.get("unique") is False:
                raise CommandError(67, "The field 'unique' is not valid for an _id index "
                                       "specification.")
            continue
        existing = coll.indexes.get(iname)
        if existing is not None:
            if norm_key_spec(existing["key"]) != norm_key_spec(key):
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
            if norm_key_spec(other["key"]) == norm_key_spec(key) and \
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
                 if norm_key_spec(s["key"]) == norm_key_spec(which)]
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
