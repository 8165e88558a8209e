"""MongoDB for the tests: the store mode (E2E_STORE=mongo runs every test with the broker on
MongoDB), pymongo clients, and the wire-protocol double (Tests/MongoDouble) as a child process.
With MONGO_URL set, that server is used; otherwise the session starts one double.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.broker import REPO
from support.net import free_port

DOUBLE_SCRIPT = REPO / "Tests" / "MongoDouble" / "mongo_double.py"


def store_mode() -> str:
    return os.environ.get("E2E_STORE", "sqlite")


def mongo_client(url: str | None = None):
    """pymongo on `url`, by default the session's MongoDB (the shared double or the server in
    MONGO_URL)."""
    import pymongo  # only needed in MongoDB mode

    return pymongo.MongoClient(url or os.environ["MONGO_URL"], serverSelectionTimeoutMS=5000)


class MongoDouble:
    """The wire-protocol double as a child process (restartable, optionally with kept data)."""

    def __init__(self, workdir: Path, history: int | None = None):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_file = self.workdir / "double.data"
        self.log_path = self.workdir / "double.log"
        self.history = history
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"

    def start(self) -> "MongoDouble":
        args = [os.environ.get("PYTHON", "python3"), str(DOUBLE_SCRIPT), "--host", "127.0.0.1",
                "--port", str(self.port), "--data", str(self.data_file)]
        if self.history is not None:
            args += ["--history", str(self.history)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mongo double exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("mongo double did not accept connections within 20 s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        import pymongo  # only needed in MongoDB mode
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)
