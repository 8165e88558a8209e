"""The WebSocket transport itself, on raw sockets: the upgrade on any request of a kept-alive
HTTP/1.1 connection, frames back to back, a reader that stops, the close codes, pings."""

import base64
import hashlib
import json
import os
import socket
import struct
import time

from support.names import unique
from support.net import max_socket_send_buffer
from support.ws import RawWS

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def masked_frame(opcode: int, data: bytes, fin: bool = True, mask: bool = True) -> bytes:
    n = len(data)
    first = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return header + data
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def read_http_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, dict, bytes, bytes]:
    """(status line, headers, body, bytes after the response) of one HTTP/1.1 response."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before a response: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return lines[0], headers, rest[:length], rest[length:]


def upgrade_request(port: int, path: str = "/ws") -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    return request, accept


class Frames:
    """Reads server frames from a raw socket (after the handshake)."""

    def __init__(self, sock: socket.socket, buf: bytes = b""):
        self.sock, self.buf = sock, buf

    def _need(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self, timeout: float = 5.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        b0, b1 = self._need(2, deadline)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8, deadline))
        return b0 & 0x0F, self._need(n, deadline)

    def json(self, timeout: float = 5.0) -> dict:
        while True:
            op, data = self.read(timeout)
            if op == 1:
                return json.loads(data)
            assert op in (9, 10), f"unexpected opcode {op}"

    def close_frame(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Skips data frames until the close frame; (code, reason)."""
        while True:
            op, data = self.read(timeout)
            if op == 8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                return code, data[2:].decode()


def open_ws(port: int, path: str = "/ws") -> tuple[socket.socket, Frames]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    request, accept = upgrade_request(port, path)
    sock.sendall(request)
    status, headers, _, rest = read_http_response(sock)
    assert status.startswith(b"HTTP/1.1 101"), status
    assert headers.get("sec-websocket-accept") == accept
    return sock, Frames(sock, rest)


# --------------------------------------------------------------------------------------------
# the upgrade


def test_upgrade_as_second_request_of_a_kept_alive_connection(broker):
    """GET /readyz, then the WebSocket upgrade on the same connection (what Node's built-in
    WebSocket may do through a keep-alive agent): 101, and the socket speaks WebSocket."""
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    try:
        sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{broker.port}\r\n\r\n".encode())
        status, headers, body, rest = read_http_response(sock)
        # 503 while a MongoDB store is still opening: any answer that keeps the connection will do
        assert status.split()[1] in (b"200", b"503"), status
        assert "ready" in json.loads(body)
        assert headers.get("connection", "").lower() != "close"

        request, accept = upgrade_request(broker.port)
        sock.sendall(request)
        status, headers, _, rest = read_http_response(sock, rest)
        assert status.startswith(b"HTTP/1.1 101"), status
        assert headers["sec-websocket-accept"] == accept
        frames = Frames(sock, rest)
        topic = unique("second")
        sock.sendall(masked_frame(1, json.dumps({"type": "PUBLISH", "topic": topic, "payload": {"n": 1}, "rid": "p"}).encode()))
        reply = frames.json()
        assert reply["type"] == "PUBLISHED" and reply["rid"] == "p" and reply["offset"] == 1, reply
    finally:
        sock.close()


def test_frames_sent_with_the_upgrade_request_are_not_lost(broker):
    """A client that sends its first frame right behind the upgrade request, in the same
    packet, gets its answer."""
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    try:
        request, _ = upgrade_request(broker.port)
        topic = unique("eager")
        frame = masked_frame(1, json.dumps({"type": "PUBLISH", "topic": topic, "payload": {}, "rid": "early"}).encode())
        sock.sendall(request + frame)
        status, _, _, rest = read_http_response(sock)
        assert status.startswith(b"HTTP/1.1 101"), status
        assert Frames(sock, rest).json()["rid"] == "early"
    finally:
        sock.close()


def test_root_path_upgrades_and_other_paths_are_refused(broker):
    sock, frames = open_ws(broker.port, "/")
    sock.close()
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    try:
        request, _ = upgrade_request(broker.port, "/elsewhere")
        sock.sendall(request)
        status, _, _, _ = read_http_response(sock)
        assert status.startswith(b"HTTP/1.1 400"), status
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------
# frames


def test_many_frames_back_to_back_arrive_intact_and_in_order(broker):
    """2,000 PUBLISH frames of sizes across the header forms (7-bit, 16-bit and 64-bit
    lengths) sent in one burst: every one is answered, and a subscriber gets every event
    intact, in order (the server's writes to it are coalesced)."""
    topic = unique("burst")
    broker.create_topic(topic, partitions=1)
    sub = broker.ws()
    sub.subscribe(topic)
    sizes = [1, 100, 125, 126, 1000, 65535, 70_000]
    total = 2000

    def size(i: int) -> int:  # the large ones only now and then: a few MB in all
        return sizes[i % 5] if i % 100 else sizes[5 + (i // 100) % 2]

    sock, frames = open_ws(broker.port)
    try:
        burst = b"".join(
            masked_frame(1, json.dumps({"type": "PUBLISH", "topic": topic, "payload": {"i": i, "s": "x" * size(i)}, "rid": str(i)}).encode())
            for i in range(total)
        )
        sock.settimeout(60)
        sock.sendall(burst)
        rids = set()
        while len(rids) < total:
            reply = frames.json(timeout=30)
            assert reply["type"] == "PUBLISHED", reply
            rids.add(reply["rid"])
        assert rids == {str(i) for i in range(total)}
    finally:
        sock.close()
    for i in range(total):
        m = sub.recv_type("MESSAGE", timeout=30)
        assert m["offset"] == i + 1
        assert m["envelope"]["payload"] == {"i": i, "s": "x" * size(i)}


def test_fragmented_message_and_ping_between_its_fragments(broker):
    """A message in three fragments with a ping between them: the ping is answered with the
    same payload, and the message is parsed whole."""
    sock, frames = open_ws(broker.port)
    try:
        topic = unique("frag")
        text = json.dumps({"type": "PUBLISH", "topic": topic, "payload": {"k": "v" * 300}, "rid": "f"}).encode()
        a, b = len(text) // 3, 2 * len(text) // 3
        sock.sendall(masked_frame(1, text[:a], fin=False) + masked_frame(9, b"are you there") + masked_frame(0, text[a:b], fin=False) + masked_frame(0, text[b:]))
        op, data = frames.read()
        assert (op, data) == (10, b"are you there")
        reply = frames.json()
        assert reply["rid"] == "f" and reply["type"] == "PUBLISHED", reply
    finally:
        sock.close()


def test_a_reader_that_stops_is_closed_not_buffered(make_broker):
    """A live tail that stops reading is closed with 1008 once its queue passes
    BUS_EPHEMERAL_QUEUE, while a group subscriber of the same topic gets every event: the
    broker neither buffers without bound nor lets one stalled socket hold up the others."""
    limit, frame_bytes = 50, 40_000
    broker = make_broker(BUS_EPHEMERAL_QUEUE=str(limit))
    topic = unique("stall")
    raw = RawWS(broker.port)
    try:
        raw.send_text(json.dumps({"type": "SUBSCRIBE", "topic": topic, "rid": "s"}))
        op, data = raw.read_frame(time.monotonic() + 5)
        assert op == 1 and json.loads(data)["type"] == "SUBSCRIBED"
        # more than every socket buffer holds, plus the queue bound, with a margin
        count = ((max_socket_send_buffer() + 256 * 1024) // frame_bytes + limit + 40) // 10 * 10 + 10
        reader = broker.ws()
        reader.subscribe(topic, "readers", max_inflight=count)
        blob = "b" * frame_bytes
        pub = broker.ws()
        for start in range(0, count, 10):
            pub.publish_many(topic, [{"i": i, "blob": blob} for i in range(start, start + 10)], timeout=30)
        got = reader.recv_messages(count, timeout=60)
        assert [m["offset"] for m in got] == list(range(1, count + 1))
        deadline = time.monotonic() + 15
        messages = 0
        while True:
            op, data = raw.read_frame(deadline)
            if op == 8:
                code = struct.unpack("!H", data[:2])[0]
                assert code == 1008, code
                assert data[2:], "the close frame carries a reason"
                break
            messages += 1
        assert messages < count
    finally:
        raw.close()


# --------------------------------------------------------------------------------------------
# close codes


def test_client_close_is_answered(broker):
    sock, frames = open_ws(broker.port)
    try:
        sock.sendall(masked_frame(8, struct.pack("!H", 1000) + b"bye"))
        code, _ = frames.close_frame()
        assert code == 1000
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the server closes the socket after the handshake"
    finally:
        sock.close()


def test_protocol_errors_close_with_1002(broker):
    for bad in (masked_frame(1, b"{}", mask=False), masked_frame(9, b"x", fin=False), masked_frame(0, b"{}")):
        sock, frames = open_ws(broker.port)
        try:
            sock.sendall(bad)
            code, reason = frames.close_frame()
            assert code == 1002, (bad, code, reason)
        finally:
            sock.close()
    # the broker is fine
    assert broker.ws().publish(unique("after"), {"ok": 1})["offset"] == 1


def test_oversize_message_closes_with_1009_reason(make_broker):
    broker = make_broker(BUS_MAX_FRAME_BYTES="2048")
    sock, frames = open_ws(broker.port)
    try:
        sock.sendall(masked_frame(1, b"[" + b"1," * 2000 + b"1]"))
        code, reason = frames.close_frame()
        assert code == 1009 and reason, (code, reason)
    finally:
        sock.close()


def test_sigterm_closes_with_1001(broker):
    sock, frames = open_ws(broker.port)
    try:
        assert broker.stop() == 0
        code, reason = frames.close_frame()
        assert code == 1001 and reason == "server shutting down", (code, reason)
    finally:
        sock.close()
