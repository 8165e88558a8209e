"""Command handlers, one module per family; HANDLERS maps a command name to its handler.

A handler is ``handler(srv, ctx) -> dict`` (or a coroutine), ``ctx`` a ``Ctx``; it raises
``CommandError`` for an error reply."""

from __future__ import annotations

from .admin import (h_build_info, h_configure_fail_point, h_connection_status,
                    h_get_cmd_line_opts, h_get_log, h_get_parameter, h_hello, h_ping,
                    h_repl_set_get_status, h_server_status, h_shutdown, h_whatsmyuri)
from .crud import h_delete, h_find_and_modify, h_insert, h_update
from .indexes import h_create_indexes, h_drop_indexes, h_list_indexes
from .namespaces import (h_coll_mod, h_create, h_db_stats, h_drop, h_drop_database,
                         h_list_collections, h_list_databases, h_rename_collection)
from .query import h_aggregate, h_count, h_distinct, h_find, h_get_more, h_kill_cursors
from .sessions import (h_abort_transaction, h_commit_transaction, h_end_sessions,
                       h_kill_all_sessions, h_refresh_sessions, h_start_session)

HANDLERS = {
    "ping": h_ping,
    "hello": h_hello,
    "isMaster": h_hello,
    "ismaster": h_hello,
    "buildInfo": h_build_info,
    "buildinfo": h_build_info,
    "whatsmyuri": h_whatsmyuri,
    "serverStatus": h_server_status,
    "getParameter": h_get_parameter,
    "getCmdLineOpts": h_get_cmd_line_opts,
    "getLog": h_get_log,
    "connectionStatus": h_connection_status,
    "replSetGetStatus": h_repl_set_get_status,
    "startSession": h_start_session,
    "endSessions": h_end_sessions,
    "killSessions": h_end_sessions,
    "refreshSessions": h_refresh_sessions,
    "killAllSessions": h_kill_all_sessions,
    "commitTransaction": h_commit_transaction,
    "abortTransaction": h_abort_transaction,
    "configureFailPoint": h_configure_fail_point,
    "shutdown": h_shutdown,
    "listDatabases": h_list_databases,
    "listCollections": h_list_collections,
    "dbStats": h_db_stats,
    "create": h_create,
    "drop": h_drop,
    "dropDatabase": h_drop_database,
    "renameCollection": h_rename_collection,
    "collMod": h_coll_mod,
    "createIndexes": h_create_indexes,
    "listIndexes": h_list_indexes,
    "dropIndexes": h_drop_indexes,
    "deleteIndexes": h_drop_indexes,
    "insert": h_insert,
    "update": h_update,
    "delete": h_delete,
    "findAndModify": h_find_and_modify,
    "findandmodify": h_find_and_modify,
    "find": h_find,
    "getMore": h_get_more,
    "killCursors": h_kill_cursors,
    "count": h_count,
    "distinct": h_distinct,
    "aggregate": h_aggregate,
}
