"""Start the MongoDB wire-protocol double (mongo_double.py) as a subprocess, for tests.

API (keep it stable: Tests/e2e and Tests/MongoDouble use it)::

    from harness import DoubleProcess          # with Tests/MongoDouble on sys.path

    d = DoubleProcess(*extra_args, port=0, host="127.0.0.1", data=None, history=None,
                      log_path=None, python=None, env=None, start_timeout=20.0)
    d.start() -> d              # waits until it listens; raises RuntimeError (with the log
                                # tail) if it exits or does not listen within start_timeout
    d.port -> int               # the given port, or the one it picked (port=0); kept across
                                # restarts
    d.host -> str
    d.url -> "mongodb://127.0.0.1:PORT/?replicaSet=rs0"
    d.pid, d.running, d.returncode
    d.log_path -> pathlib.Path  # stdout+stderr, appended across restarts (a temporary file if
                                # not given)
    d.log() -> str              # the log's text so far
    d.data_path -> Path | None  # --data FILE (kept across restarts)
    d.args -> list[str]         # the full command line of the last start
    d.stop(sig=signal.SIGTERM, timeout=10.0) -> int | None
                                # signal, wait; SIGKILL if still running after timeout (the
                                # double may inherit SIGTERM blocked). SIGTERM/SIGINT stop it
                                # cleanly: exit 0, --data saved.  Returns the exit status.
    d.kill() -> int | None      # SIGKILL now (a crash: --data is not saved)
    d.restart(sig=signal.SIGTERM) -> d   # stop, then start on the same port with the same args
    d.client(**kwargs) -> pymongo.MongoClient on d.url (serverSelectionTimeoutMS=10000 default)
    with DoubleProcess(...) as d: ...   # start() on enter, stop() on exit

``extra_args`` are further CLI flags, e.g. ``"--ttl-interval", "0.2"`` or ``"--verbose"``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mongo_double.py"

_LISTENING = re.compile(rb"mongo_double listening on \S+?:(\d+)")


class DoubleProcess:
    """One mongo_double.py subprocess; restartable on the same port with the same data."""

    def __init__(self, *extra_args: str, port: int = 0, host: str = "127.0.0.1",
                 data: str | os.PathLike | None = None, history: int | None = None,
                 log_path: str | os.PathLike | None = None, python: str | None = None,
                 env: dict | None = None, start_timeout: float = 20.0):
        self.extra_args = [str(a) for a in extra_args]
        self.host = host
        self.port = int(port or 0)
        self.data_path = Path(data) if data is not None else None
        self.history = history
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="mongo-double-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.python = python or os.environ.get("PYTHON") or sys.executable
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.args: list[str] = []

    # -- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "mongodb://%s:%d/?replicaSet=rs0" % (self._connect_host(), self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "DoubleProcess":
        if self.running:
            raise RuntimeError("mongo double already running (pid %d)" % self.proc.pid)
        self.args = [self.python, str(SCRIPT), "--host", self.host, "--port", str(self.port)]
        if self.data_path is not None:
            self.args += ["--data", str(self.data_path)]
        if self.history is not None:
            self.args += ["--history", str(self.history)]
        self.args += self.extra_args
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + self.start_timeout
        while True:
            port = self._listening_port(offset)
            if port is not None:
                self.port = port
                if self._accepts():
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError("mongo double exited with %s:\n%s"
                                   % (self.proc.returncode, self.log()[-2000:]))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("mongo double did not listen within %.0f s:\n%s"
                                   % (self.start_timeout, self.log()[-2000:]))
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> "DoubleProcess":
        self.stop(sig)
        return self.start()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "DoubleProcess":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, **kwargs):
        from pymongo import MongoClient
        kwargs.setdefault("serverSelectionTimeoutMS", 10000)
        return MongoClient(self.url, **kwargs)

    def _listening_port(self, offset: int) -> int | None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = _LISTENING.search(f.read())
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def _accepts(self) -> bool:
        try:
            socket.create_connection((self._connect_host(), self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def __repr__(self) -> str:
        return "DoubleProcess(port=%d, pid=%s, log=%s)" % (self.port, self.pid, self.log_path)


def serve(argv: list[str]) -> int:
    """`python3 harness.py --serve [DOUBLE ARGS…]`: for test runners in other languages (the
    Swift store tests). Starts the double, prints its URL as the first line of stdout, and
    stops it (SIGKILL) when stdin closes — which happens when the runner exits, however it
    exits — or on SIGTERM."""
    double = DoubleProcess(*argv)
    try:
        double.start()
    except RuntimeError as exc:
        print("error: %s" % exc, file=sys.stderr, flush=True)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(double.url, flush=True)
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        double.kill()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"]:
        sys.exit("usage: harness.py --serve [mongo_double.py arguments]")
    sys.exit(serve(sys.argv[2:]))
