"""The catalog: collections with their documents and indexes (unique, TTL, lookup maps)."""

from __future__ import annotations

import itertools
import re
import uuid

import bson
from bson import ObjectId, Regex
from mongomock import filtering as mm_filtering

from .changelog import Event, update_description
from .errors import CommandError
from .sessions import WriteCtx
from .updates import SCRATCH, apply_update, upsert_seed
from .values import MISSING, canon, equality_values, id_first, path_leaves, shell_repr


def index_name_for(key):
    return "_".join("%s_%s" % (k, v if not isinstance(v, float) or not v.is_integer()
                               else int(v)) for k, v in key.items())


def norm_key_spec(key):
    return tuple((k, canon(v)) for k, v in key.items())


def unique_keys(spec, doc):
    """{canonical key tuple: raw value tuple} of a document in a unique index."""
    pfe = spec.get("partialFilterExpression")
    if pfe is not None and not mm_filtering.filter_applies(pfe, doc):
        return {}
    per_field = []
    present = False
    for field in spec["key"]:
        leaves = path_leaves(doc, field.split("."))
        vals = []
        for leaf in leaves:
            if isinstance(leaf, list):
                vals.extend(leaf if leaf else [None])
            else:
                vals.append(leaf)
        if vals:
            present = True
        else:
            vals = [None]
        per_field.append(vals)
    if spec.get("sparse") and not present:
        return {}
    out = {}
    for combo in itertools.islice(itertools.product(*per_field), 10000):
        out.setdefault(tuple(canon(v) for v in combo), combo)
    return out


def field_keys(doc, field):
    """Keys of a document in a first-field lookup map, or None if irregular."""
    cur = doc
    for part in field.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                return [("null",)]
            cur = cur[part]
        else:
            return None
    if isinstance(cur, list):
        keys = [canon(cur)]
        for elem in cur:
            if isinstance(elem, (list, dict)):
                return None
            keys.append(canon(elem))
        return keys
    return [canon(cur)]


class FieldMap:
    __slots__ = ("refs", "map", "irregular")

    def __init__(self):
        self.refs = 0
        self.map = {}
        self.irregular = set()


class Coll:
    """One collection: documents by canonical _id, index specs and lookup maps."""

    def __init__(self, db, name, options=None, uid=None):
        self.db = db
        self.name = name
        self.options = options or {}
        self.uuid = uid or uuid.uuid4()
        self.docs = {}
        self.seqno = {}
        self._next = 0
        self.indexes = {"_id_": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
        self.uniq = {}
        self.fmaps = {}

    @property
    def ns(self):
        return "%s.%s" % (self.db, self.name)

    # -- lookup maps -------------------------------------------------------
    def _fm_index(self, fm, field, k, doc):
        keys = field_keys(doc, field)
        if keys is None:
            fm.irregular.add(k)
            return
        for key in keys:
            fm.map.setdefault(key, set()).add(k)

    def _fm_unindex(self, fm, field, k, doc):
        fm.irregular.discard(k)
        keys = field_keys(doc, field)
        for key in keys or ():
            s = fm.map.get(key)
            if s is not None:
                s.discard(k)
                if not s:
                    del fm.map[key]

    def _index(self, k, doc):
        for name, m in self.uniq.items():
            for key in unique_keys(self.indexes[name], doc):
                m[key] = k
        for field, fm in self.fmaps.items():
            self._fm_index(fm, field, k, doc)

    def _unindex(self, k, doc):
        for name, m in self.uniq.items():
            for key in unique_keys(self.indexes[name], doc):
                if m.get(key) == k:
                    del m[key]
        for field, fm in self.fmaps.items():
            self._fm_unindex(fm, field, k, doc)

    def add_index(self, spec):
        name = spec["name"]
        if spec.get("unique") and name != "_id_":
            m = {}
            for k, doc in self.docs.items():
                for key, raw in unique_keys(spec, doc).items():
                    other = m.get(key)
                    if other is not None and other != k:
                        raise self.dup_error(spec, raw)
                    m[key] = k
            self.uniq[name] = m
        self.indexes[name] = spec
        first = next(iter(spec["key"]))
        if first != "_id":
            fm = self.fmaps.get(first)
            if fm is None:
                fm = self.fmaps[first] = FieldMap()
                for k, doc in self.docs.items():
                    self._fm_index(fm, first, k, doc)
            fm.refs += 1

    def remove_index(self, name):
        spec = self.indexes.pop(name)
        self.uniq.pop(name, None)
        first = next(iter(spec["key"]))
        fm = self.fmaps.get(first)
        if fm is not None:
            fm.refs -= 1
            if fm.refs <= 0:
                del self.fmaps[first]
        return spec

    # -- documents -----------------------------------------------------------
    def set(self, k, doc):
        old = self.docs.get(k)
        if old is not None:
            self._unindex(k, old)
        else:
            self.seqno[k] = self._next
            self._next += 1
        self.docs[k] = doc
        self._index(k, doc)

    def remove(self, k):
        old = self.docs.pop(k, None)
        if old is not None:
            self._unindex(k, old)
            del self.seqno[k]
        return old

    def dup_error(self, spec, raw):
        fields = list(spec["key"])
        key_value = {f: v for f, v in zip(fields, raw)}
        msg = "E11000 duplicate key error collection: %s index: %s dup key: %s" % (
            self.ns, spec["name"], shell_repr(key_value))
        return CommandError(11000, msg, {"keyPattern": dict(spec["key"]),
                                         "keyValue": key_value})

    def check_unique(self, doc, k):
        """Raise E11000 if ``doc`` (to be stored under ``k``) breaks a unique index."""
        for name, m in self.uniq.items():
            spec = self.indexes[name]
            for key, raw in unique_keys(spec, doc).items():
                holder = m.get(key)
                if holder is not None and holder != k:
                    raise self.dup_error(spec, raw)

    def candidates(self, filt):
        """Documents that may match ``filt`` (a superset), in natural order."""
        if not filt:
            return list(self.docs.values())
        ids = equality_values(filt.get("_id", MISSING))
        if ids is not None:
            ks = {canon(v) for v in ids}
            found = [k for k in ks if k in self.docs]
            found.sort(key=self.seqno.__getitem__)
            return [self.docs[k] for k in found]
        best = None
        for name, m in self.uniq.items():
            spec = self.indexes[name]
            if spec.get("sparse") or spec.get("partialFilterExpression") is not None:
                continue  # documents outside the index would be missed
            fields = list(spec["key"])
            vals = [equality_values(filt.get(f, MISSING)) for f in fields]
            if all(v is not None and len(v) == 1 and not isinstance(v[0], (list, dict))
                   for v in vals):
                k = m.get(tuple(canon(v[0]) for v in vals))
                best = set() if k is None else {k}
                break
        if best is None:
            for field, fm in self.fmaps.items():
                vals = equality_values(filt.get(field, MISSING))
                if vals is None:
                    continue
                ks = set(fm.irregular)
                for v in vals:
                    ks |= fm.map.get(canon(v), set())
                    if isinstance(v, list):  # {a: [..]} also matches arrays containing it
                        ks = None
                        break
                if ks is None:
                    continue
                if best is None or len(ks) < len(best):
                    best = ks
        if best is None:
            return list(self.docs.values())
        found = sorted(best, key=self.seqno.__getitem__)
        return [self.docs[k] for k in found]


_BAD_DB_CHARS = set('/\\. "$\0')


def check_db_name(db):
    if not isinstance(db, str) or not db or any(c in _BAD_DB_CHARS for c in db) \
            or len(db) >= 64:
        raise CommandError(73, "Invalid database name: '%s'" % (db,))


def check_coll_name(name):
    if not isinstance(name, str) or not name or "\0" in name or \
            ("$" in name and not name.startswith("oplog.$")) or name.startswith("."):
        raise CommandError(73, "Invalid collection name: %s" % (name,))


class CatalogMixin:
    """Databases and collections of the server, and the document reads and writes on them."""

    def get_coll(self, db, name):
        colls = self.dbs.get(db)
        return colls.get(name) if colls else None

    def ensure_coll(self, db, name, options=None):
        check_db_name(db)
        check_coll_name(name)
        colls = self.dbs.setdefault(db, {})
        coll = colls.get(name)
        if coll is None:
            coll = colls[name] = Coll(db, name, options)
            self.dirty = True
        return coll

    # -- reads -------------------------------------------------------------
    def query(self, coll, filt, sort=None, skip=0, limit=0, projection=None):
        if filt is None:
            filt = {}
        if not isinstance(filt, dict):
            raise CommandError(14, "filter must be an object")
        docs = coll.candidates(filt) if coll is not None else []
        if filt:
            apply = mm_filtering.filter_applies
            docs = [d for d in docs if apply(filt, d)]
        if sort:
            for key, direction in reversed(list(sort.items())):
                if key == "$natural":
                    if direction < 0:
                        docs.reverse()
                    continue
                if isinstance(direction, dict):
                    raise CommandError(2, "$meta sort is not supported by the test double")
                docs.sort(key=lambda x, key=key: mm_filtering.resolve_sort_key(key, x),
                          reverse=direction < 0)
        if skip:
            docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        if projection:
            docs = [SCRATCH._copy_only_fields(d, dict(projection), dict) for d in docs]
        return docs

    # -- writes ------------------------------------------------------------
    def insert_doc(self, coll, doc, ctx):
        if not isinstance(doc, dict):
            raise CommandError(14, "document must be an object")
        if "_id" not in doc:
            doc = {"_id": ObjectId(), **doc}
        else:
            doc = id_first(doc)
        _id = doc["_id"]
        if isinstance(_id, (list, Regex, re.Pattern)):
            raise CommandError(2, "can't use an array for _id" if isinstance(_id, list)
                               else "can't use a regex for _id")
        k = canon(_id)
        if k in coll.docs:
            raise coll.dup_error(coll.indexes["_id_"], (_id,))
        coll.check_unique(doc, k)
        coll.set(k, doc)
        ctx.undo(coll, k, None)
        ctx.event(Event("insert", coll.db, coll.name, {"_id": _id}, post=doc))
        self.dirty = True
        return doc

    def replace_stored(self, coll, k, old, new, ctx, op):
        coll.check_unique(new, k)
        coll.set(k, new)
        ctx.undo(coll, k, old)
        desc = update_description(old, new) if op == "update" else None
        ctx.event(Event(op, coll.db, coll.name, {"_id": new["_id"]}, post=new, pre=old,
                        desc=desc))
        self.dirty = True

    def delete_stored(self, coll, k, ctx):
        old = coll.remove(k)
        if old is not None:
            ctx.undo(coll, k, old)
            ctx.event(Event("delete", coll.db, coll.name, {"_id": old["_id"]}, pre=old))
            self.dirty = True
        return old

    def update_one_doc(self, coll, k, q, u, ctx, array_filters=None):
        """Apply ``u`` to the stored document ``k``; returns (old, new, modified)."""
        old = coll.docs[k]
        new = apply_update(old, q, u, False, array_filters)
        if bson.encode(new) == bson.encode(old):
            return old, old, False
        op = "update" if isinstance(u, list) or (u and next(iter(u)).startswith("$")) \
            else "replace"
        self.replace_stored(coll, k, old, new, ctx, op)
        return old, new, True

    def upsert_doc(self, coll, q, u, ctx, array_filters=None):
        seed = upsert_seed(q, u)
        new = apply_update(seed, q, u, True, array_filters)
        return self.insert_doc(coll, new, ctx)

    def write_ctx(self, txn):
        return WriteCtx(self, txn)

    def after_write(self, ctx):
        if ctx.published:
            self.changes.notify()

    def drop_coll(self, db, name, ctx):
        colls = self.dbs.get(db)
        if not colls or name not in colls:
            return False
        coll = colls.pop(name)
        if not colls:
            del self.dbs[db]
        ctx.event(Event("drop", db, name))
        self.dirty = True
        return coll
