#include <sqlite3.h>

/// `sqlite3_config` is variadic, so Swift cannot call it: these are its calls the broker makes.
/// Without memory statistics, SQLite's allocations skip a process-wide mutex.
static inline int sb_sqlite3_disable_memstatus(void) { return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); }
