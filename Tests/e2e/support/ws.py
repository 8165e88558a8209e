"""WebSocket clients for the broker's /ws endpoint (SPEC §5)."""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import socket
import struct
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from support.names import unique


class WSClosed(AssertionError):
    def __init__(self, code, reason):
        super().__init__(f"WebSocket closed by server: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class WS:
    """A thin synchronous client for the broker's /ws endpoint (one JSON object per frame)."""

    _rids = itertools.count(1)

    def __init__(self, url: str, **kwargs):
        self.url = url
        self.conn = ws_connect(
            url,
            max_size=None,
            compression=None,  # frame sizes on the wire are what we send
            proxy=None,
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
            **kwargs,
        )
        # Frames read off the socket while waiting for a specific reply (e.g. MESSAGE frames
        # that arrive while publish() waits for its PUBLISHED); recv() returns these first.
        self.pending: collections.deque[dict] = collections.deque()

    # -- raw I/O ----------------------------------------------------------------------------

    def send(self, frame: dict) -> None:
        self.conn.send(json.dumps(frame))

    def send_raw(self, text) -> None:
        self.conn.send(text)

    def _read(self, timeout: float) -> dict:
        try:
            raw = self.conn.recv(timeout=timeout)
        except TimeoutError:
            raise
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise WSClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else None) from None
        assert isinstance(raw, str), f"expected a text frame, got {type(raw).__name__}: {raw!r:.200}"
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"server frame is not a JSON object: {raw!r:.200}"
        return frame

    def recv(self, timeout: float = 5.0) -> dict:
        """The next server frame (as a dict). Fails if none arrives within `timeout`."""
        if self.pending:
            return self.pending.popleft()
        try:
            return self._read(timeout)
        except TimeoutError:
            raise AssertionError(f"no frame from the server within {timeout}s") from None

    def recv_type(self, type_: str, timeout: float = 5.0) -> dict:
        """The next frame, asserted to be of type `type_`."""
        frame = self.recv(timeout)
        assert frame.get("type") == type_, f"expected a {type_} frame, got: {frame}"
        return frame

    def recv_messages(self, n: int, timeout: float = 5.0) -> list[dict]:
        """The next `n` frames, each asserted to be a MESSAGE (overall deadline `timeout`)."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"got only {len(out)} of {n} MESSAGE frames within {timeout}s: "
                    f"offsets {[m['offset'] for m in out]}"
                )
            out.append(self.recv_type("MESSAGE", timeout=left))
        return out

    def expect_nothing(self, seconds: float = 0.4) -> None:
        """Assert that no frame arrives within `seconds`."""
        assert not self.pending, f"unexpected frame: {self.pending[0]}"
        try:
            frame = self._read(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame for {seconds}s, got: {frame}")

    def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict]]:
        """Read until the server closes the connection; return (close code, frames read)."""
        deadline = time.monotonic() + timeout
        frames = list(self.pending)
        self.pending.clear()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close the connection within {timeout}s")
            try:
                frames.append(self._read(left))
            except TimeoutError:
                continue
            except WSClosed as closed:
                return closed.code, frames

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- request / reply --------------------------------------------------------------------

    def _await_reply(self, types: tuple[str, ...], timeout: float, rid=None) -> dict:
        """Wait for the next frame whose type is in `types` (and whose rid matches, if given);
        stash MESSAGE frames that arrive meanwhile for recv()."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {'/'.join(types)} reply within {timeout}s (rid={rid})")
            try:
                frame = self._read(left)
            except TimeoutError:
                continue
            if frame.get("type") == "MESSAGE":
                self.pending.append(frame)
                continue
            assert frame.get("type") in types, f"expected {'/'.join(types)}, got: {frame}"
            if rid is not None and frame.get("rid") != rid:
                raise AssertionError(f"reply with unexpected rid (wanted {rid!r}): {frame}")
            return frame

    def publish(self, topic, payload, key=None, headers=None, id=None, rid=None, timeout=5.0) -> dict:
        """Send PUBLISH, return the PUBLISHED frame (fails on ERROR)."""
        frame = {"type": "PUBLISH", "topic": topic, "payload": payload}
        if key is not None:
            frame["key"] = key
        if headers is not None:
            frame["headers"] = headers
        if id is not None:
            frame["id"] = id
        if rid is not None:
            frame["rid"] = rid
        self.send(frame)
        reply = self._await_reply(("PUBLISHED", "ERROR"), timeout, rid)
        assert reply["type"] == "PUBLISHED", f"PUBLISH to {topic!r} failed: {reply}"
        return reply

    def publish_many(self, topic, payloads, key=None, headers=None, timeout=15.0) -> list[dict]:
        """Pipeline one PUBLISH per payload (each with its own rid); return the PUBLISHED frames
        in send order."""
        rids = [f"pm-{next(self._rids)}" for _ in payloads]
        for rid, payload in zip(rids, payloads):
            frame = {"type": "PUBLISH", "topic": topic, "payload": payload, "rid": rid}
            if key is not None:
                frame["key"] = key
            if headers is not None:
                frame["headers"] = headers
            self.send(frame)
        got: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(rids):
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(got)} of {len(rids)} PUBLISHED within {timeout}s"
            reply = self._await_reply(("PUBLISHED", "ERROR"), left)
            assert reply["type"] == "PUBLISHED", f"PUBLISH failed: {reply}"
            got[reply.get("rid")] = reply
        return [got[r] for r in rids]

    def subscribe(self, topic, group=None, rid=None, timeout=5.0, **opts) -> dict:
        """Send SUBSCRIBE (opts: from_, max_inflight, ack_timeout_ms, filter, reset, ...);
        return the SUBSCRIBED frame (fails on ERROR)."""
        frame = {"type": "SUBSCRIBE", "topic": topic}
        if group is not None:
            frame["group"] = group
        if rid is not None:
            frame["rid"] = rid
        if "from_" in opts:
            opts["from"] = opts.pop("from_")
        frame.update(opts)
        self.send(frame)
        reply = self._await_reply(("SUBSCRIBED", "ERROR"), timeout, rid)
        assert reply["type"] == "SUBSCRIBED", f"SUBSCRIBE to {topic!r} failed: {reply}"
        return reply

    def ack(self, msg: dict) -> None:
        self.send(
            {
                "type": "ACK",
                "topic": msg["topic"],
                "partition": msg["partition"],
                "group": msg["group"],
                "offset": msg["offset"],
            }
        )

    def nack(self, msg: dict, delay_ms=None, reason=None) -> None:
        frame = {
            "type": "NACK",
            "topic": msg["topic"],
            "partition": msg["partition"],
            "group": msg["group"],
            "offset": msg["offset"],
        }
        if delay_ms is not None:
            frame["delay_ms"] = delay_ms
        if reason is not None:
            frame["reason"] = reason
        self.send(frame)

    def flow(self, topic, group, credits: int) -> None:
        self.send({"type": "FLOW", "topic": topic, "group": group, "credits": credits})

    def barrier(self, timeout: float = 5.0) -> None:
        """A round trip: every frame sent before this has been read and handled by the server
        (it answers frames of one connection in order)."""
        self.publish(unique("barrier"), {"barrier": True}, timeout=timeout)


class RawWS:
    """A minimal WebSocket client on a plain socket with a tiny receive buffer, so that not
    reading really stops the server's writes (a library client would keep reading)."""

    def __init__(self, port: int, rcvbuf: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, deadline: float):
        """(opcode, payload bytes)"""
        b0, b1 = self._need(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8, deadline))
        if b1 & 0x80:
            mask = self._need(4, deadline)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._need(n, deadline)))
        else:
            data = self._need(n, deadline)
        return b0 & 0x0F, data

    def close(self):
        self.sock.close()
