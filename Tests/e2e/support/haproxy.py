"""A real HAProxy (Debian `haproxy`) in front of broker ports, as in deploy/ (SPEC §7)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.net import free_port
from support.waits import wait_for


class HAProxy:
    """A real HAProxy (Debian `haproxy`) in front of broker ports, started with `-db`.
    `ports` may include ports of brokers that are not running yet: their server is DOWN until
    the health checks (GET /readyz every 500 ms, rise 2, fall 2) bring it up."""

    def __init__(self, ports: list[int], balance: str = "leastconn"):
        self.binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(self.binary).exists():
            pytest.fail("haproxy is not installed (apt-get install -y haproxy)", pytrace=False)
        self.ports = list(ports)
        self.balance = balance
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="e2e-haproxy-"))
        self.sock = self.dir / "admin.sock"
        self.cfg = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def server_name(self, i: int) -> str:
        return f"b{i + 1}"

    def config(self) -> str:
        servers = "\n".join(
            f"    server {self.server_name(i)} 127.0.0.1:{p} check inter 500ms fall 2 rise 2"
            for i, p in enumerate(self.ports))
        return f"""global
    maxconn 4096
    stats socket {self.sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 1s
    retries 3
    option redispatch

frontend fe
    bind 127.0.0.1:{self.port}
    default_backend brokers

backend brokers
    balance {self.balance}
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> "HAProxy":
        self.cfg.write_text(self.config())
        check = subprocess.run([self.binary, "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        assert check.returncode == 0, f"haproxy config refused:\n{check.stdout}\n{check.stderr}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-f", str(self.cfg), "-db"], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def listening():
            assert self.proc.poll() is None, f"haproxy exited: {self.log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.sock.exists()
            except OSError:
                return False

        wait_for(listening, 10, 0.05, "haproxy listening")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no haproxy log)"

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """server name -> status ("UP", "DOWN", "UP 1/2", "NOLB", "MAINT", ...)."""
        text = self.command("show stat")
        lines = [ln for ln in text.splitlines() if ln]
        header = lines[0].lstrip("# ").split(",")
        i_px, i_sv, i_st = header.index("pxname"), header.index("svname"), header.index("status")
        out = {}
        for ln in lines[1:]:
            cols = ln.split(",")
            if cols[i_px] == "brokers" and cols[i_sv] not in ("BACKEND", "FRONTEND"):
                out[cols[i_sv]] = cols[i_st]
        return out

    def wait_states(self, want: dict[int, str], timeout: float = 15.0) -> None:
        """Wait until server i (index into `ports`) has status want[i] ("UP" or "DOWN")."""
        seen = {}

        def cond():
            seen["last"] = st = self.server_states()
            return all(st.get(self.server_name(i)) == s for i, s in want.items())

        try:
            wait_for(cond, timeout, 0.1, f"haproxy server states {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen.get('last')}") from None
