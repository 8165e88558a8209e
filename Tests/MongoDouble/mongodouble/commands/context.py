"""The context of one command: its body, database, session and transaction."""

from __future__ import annotations

from ..catalog import check_coll_name
from ..errors import CommandError
from ..pipelines import resolve_filter, resolve_pipeline, system_variables
from ..values import as_int


class Ctx:
    def __init__(self, server, conn, name, body, db):
        self.server = server
        self.conn = conn
        self.name = name
        self.body = body
        self.db = db
        self.session = None
        self.txn = None
        self.txn_number = None
        self.retry = None
        self.cached = None
        self._variables = None

    def coll_name(self):
        v = self.body.get(self.name)
        if not isinstance(v, str):
            raise CommandError(73, "collection name has invalid type %s" % type(v).__name__)
        check_coll_name(v)
        return v

    def variables(self):
        """$$NOW and $$CLUSTER_TIME of this command (one value for all its statements)."""
        if self._variables is None:
            self._variables = system_variables(self.server)
        return self._variables

    def filter(self, filt):
        """A query filter of this command, its $expr terms' system variables resolved."""
        return resolve_filter(filt, self.variables()) if filt else filt

    def pipeline(self, pipeline):
        """A pipeline (or a pipeline update) of this command, system variables resolved."""
        return resolve_pipeline(pipeline, self.variables())

    def require_admin(self):
        if self.db != "admin":
            raise CommandError(13, "%s may only be run against the admin database." % self.name)

    def batch_size(self, container, field="batchSize"):
        v = container.get(field) if isinstance(container, dict) else None
        if v is None:
            return None
        n = as_int(v, field)
        if n < 0:
            raise CommandError(51024, "BSON field 'batchSize' value must be >= 0, actual "
                                      "value '%d'" % n)
        return n
