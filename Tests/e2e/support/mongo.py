"""MongoDB for the tests: the store mode (E2E_STORE=mongo runs every test with the broker on
MongoDB), pymongo clients, fail points, and the wire-protocol double (Tests/MongoDouble),
started through its own harness (`DoubleProcess`, Tests/MongoDouble/harness.py).
With MONGO_URL set, that server is used; otherwise the session starts one double.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from support.broker import REPO
from support.waits import wait_for

HARNESS = REPO / "Tests" / "MongoDouble" / "harness.py"


def _load_harness():
    """Tests/MongoDouble/harness.py as a module of its own name (no sys.path change, so its
    generic file name cannot shadow or be shadowed by another `harness`)."""
    spec = importlib.util.spec_from_file_location("mongo_double_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DoubleProcess = _load_harness().DoubleProcess


def store_mode() -> str:
    return os.environ.get("E2E_STORE", "sqlite")


def mongo_client(url: str | None = None):
    """pymongo on `url`, by default the session's MongoDB (the shared double or the server in
    MONGO_URL)."""
    import pymongo  # only needed in MongoDB mode

    return pymongo.MongoClient(url or os.environ["MONGO_URL"], serverSelectionTimeoutMS=5000)


def start_double(workdir: Path, history: int | None = None) -> DoubleProcess:
    """A double on a port of its own choosing, with its data (`double.data`, saved on a clean
    stop, so a restart keeps it) and log (`double.log`) in `workdir`. Stop it with `stop()`
    (SIGTERM: data saved) or `kill()` (SIGKILL); `start()` again reuses the port and data."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return DoubleProcess(data=workdir / "double.data", log_path=workdir / "double.log",
                         history=history).start()


def fail_point(client, mode, data: dict | None = None) -> int:
    """configureFailPoint failCommand (the double and mongod both have it) through a pymongo
    client; returns how often it fired under its previous setting."""
    cmd = {"configureFailPoint": "failCommand", "mode": mode}
    if data is not None:
        cmd["data"] = data
    return int(client.admin.command(cmd)["count"])


def wait_double_log(double: DoubleProcess, needle: str, since: int = 0, timeout: float = 5.0) -> None:
    """Wait until `needle` appears in the double's log after character `since`."""
    wait_for(lambda: needle in double.log()[since:], timeout, 0.02, f"{needle!r} in the double's log")
