"""Databases and collections: list, create, drop, rename, collMod, dbStats."""

from __future__ import annotations

from bson import Binary, Int64
from mongomock import filtering as mm_filtering

from ..catalog import check_coll_name, check_db_name, norm_key_spec
from ..changelog import Event
from ..constants import GENERIC_ARGS, INTERNAL_DBS
from ..errors import CommandError
from ..values import is_true


def h_list_databases(srv, ctx):
    ctx.require_admin()
    filt = ctx.body.get("filter") or {}
    name_only = is_true(ctx.body.get("nameOnly", False))
    out = []
    total = 0
    for name in sorted(set(srv.dbs) | set(INTERNAL_DBS)):
        colls = srv.dbs.get(name) or {}
        size = 8192 * len(colls) + sum(64 * len(c.docs) for c in colls.values())
        entry = {"name": name, "sizeOnDisk": Int64(size or 8192), "empty": not colls}
        if filt and not mm_filtering.filter_applies(filt, entry):
            continue
        total += size
        out.append({"name": name} if name_only else entry)
    if name_only:
        return {"databases": out}
    return {"databases": out, "totalSize": Int64(total), "totalSizeMb": Int64(total >> 20)}


def coll_info(coll):
    return {"name": coll.name, "type": "collection", "options": coll.options,
            "info": {"readOnly": False, "uuid": Binary.from_uuid(coll.uuid)},
            "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}


def h_list_collections(srv, ctx):
    check_db_name(ctx.db)
    filt = ctx.body.get("filter") or {}
    name_only = is_true(ctx.body.get("nameOnly", False))
    out = []
    for name, coll in sorted((srv.dbs.get(ctx.db) or {}).items()):
        info = coll_info(coll)
        if filt and not mm_filtering.filter_applies(filt, info):
            continue
        out.append({"name": name, "type": "collection"} if name_only else info)
    return srv.cursor_reply("%s.$cmd.listCollections" % ctx.db, out,
                            ctx.batch_size(ctx.body.get("cursor")), False)


def h_db_stats(srv, ctx):
    colls = srv.dbs.get(ctx.db) or {}
    objects = sum(len(c.docs) for c in colls.values())
    return {"db": ctx.db, "collections": len(colls), "views": 0, "objects": objects,
            "avgObjSize": 0.0, "dataSize": float(objects * 64),
            "storageSize": float(objects * 64), "indexes": sum(len(c.indexes)
                                                                for c in colls.values()),
            "indexSize": 0.0, "totalSize": float(objects * 64), "scaleFactor": 1.0}


def h_create(srv, ctx):
    name = ctx.coll_name()
    check_db_name(ctx.db)
    if ctx.body.get("viewOn") is not None:
        raise CommandError(2, "views are not supported by the test double")
    if srv.get_coll(ctx.db, name) is not None:
        raise CommandError(48, "Collection %s.%s already exists." % (ctx.db, name))
    options = {k: v for k, v in ctx.body.items() if k != "create" and k not in GENERIC_ARGS}
    srv.ensure_coll(ctx.db, name, options)
    return {}


def h_drop(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns not found")
    wctx = srv.write_ctx(None)
    srv.drop_coll(ctx.db, name, wctx)
    srv.after_write(wctx)
    return {"nIndexesWas": len(coll.indexes), "ns": coll.ns}


def h_drop_database(srv, ctx):
    check_db_name(ctx.db)
    wctx = srv.write_ctx(None)
    colls = srv.dbs.get(ctx.db)
    if colls:
        for name in list(colls):
            srv.drop_coll(ctx.db, name, wctx)
        wctx.event(Event("dropDatabase", ctx.db))
        srv.dbs.pop(ctx.db, None)
    srv.after_write(wctx)
    return {"dropped": ctx.db}


def h_rename_collection(srv, ctx):
    ctx.require_admin()
    src, dst = ctx.body.get("renameCollection"), ctx.body.get("to")
    if not isinstance(src, str) or not isinstance(dst, str) or "." not in src or "." not in dst:
        raise CommandError(73, "Invalid namespace specified")
    sdb, sname = src.split(".", 1)
    ddb, dname = dst.split(".", 1)
    check_db_name(ddb)
    check_coll_name(dname)
    coll = srv.get_coll(sdb, sname)
    if coll is None:
        raise CommandError(26, "Source collection %s does not exist" % src)
    wctx = srv.write_ctx(None)
    if srv.get_coll(ddb, dname) is not None:
        if not is_true(ctx.body.get("dropTarget", False)):
            raise CommandError(48, "target namespace exists")
        srv.drop_coll(ddb, dname, wctx)
    del srv.dbs[sdb][sname]
    if not srv.dbs[sdb]:
        del srv.dbs[sdb]
    wctx.event(Event("rename", sdb, sname, to={"db": ddb, "coll": dname}))
    coll.db, coll.name = ddb, dname
    srv.dbs.setdefault(ddb, {})[dname] = coll
    srv.dirty = True
    srv.after_write(wctx)
    return {}


def h_coll_mod(srv, ctx):
    name = ctx.coll_name()
    coll = srv.get_coll(ctx.db, name)
    if coll is None:
        raise CommandError(26, "ns does not exist")
    out = {}
    for k, v in ctx.body.items():
        if k == "collMod" or k in GENERIC_ARGS:
            continue
        if k == "index":
            spec = None
            for s in coll.indexes.values():
                if s["name"] == v.get("name") or (isinstance(v.get("keyPattern"), dict) and
                                                  norm_key_spec(s["key"]) ==
                                                  norm_key_spec(v["keyPattern"])):
                    spec = s
            if spec is None:
                raise CommandError(27, "cannot find index %s for ns %s" % (v, coll.ns))
            if "expireAfterSeconds" in v:
                out["expireAfterSeconds_old"] = spec.get("expireAfterSeconds")
                spec["expireAfterSeconds"] = v["expireAfterSeconds"]
                out["expireAfterSeconds_new"] = v["expireAfterSeconds"]
        else:
            coll.options[k] = v
    srv.dirty = True
    return out
