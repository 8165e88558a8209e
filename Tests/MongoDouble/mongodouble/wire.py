"""The wire protocol: message framing, OP_MSG (sections, flags) and the OP_QUERY handshake."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import traceback

import bson

from .constants import (MAX_MESSAGE_SIZE, MSG_CHECKSUM_PRESENT, MSG_MORE_TO_COME, OP_MSG,
                        OP_QUERY, OP_REPLY)
from .dispatch import finish_reply, run_command
from .errors import CloseConnection, CommandError, ProtocolError
from .server import Conn

log = logging.getLogger("mongo_double")


async def handle_client(srv, reader, writer):
    peer = writer.get_extra_info("peername")
    peer_s = "%s:%s" % tuple(peer[:2]) if peer else "?"
    conn = Conn(next(srv.conn_ids), peer_s, writer)
    srv.conns[conn.id] = conn
    srv.total_conns += 1
    task = asyncio.current_task()
    srv.tasks.add(task)
    log.info("conn%d open from %s (%d open)", conn.id, peer_s, len(srv.conns))
    reason = "closed by client"
    try:
        while True:
            try:
                header = await reader.readexactly(16)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    reason = "truncated message header"
                break
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            if length < 16 or length > MAX_MESSAGE_SIZE + 16 * 1024:
                reason = "invalid message length %d" % length
                log.error("conn%d: %s", conn.id, reason)
                break
            payload = await reader.readexactly(length - 16)
            if opcode == OP_MSG:
                await on_msg(srv, conn, request_id, payload)
            elif opcode == OP_QUERY:
                await on_query(srv, conn, request_id, payload)
            else:
                reason = "unsupported opcode %d" % opcode
                log.error("conn%d: %s", conn.id, reason)
                break
            if srv.stopping.is_set():
                reason = "server shutting down"
                break
    except CloseConnection:
        reason = "closed by the server (failCommand/shutdown)"
    except ProtocolError as exc:
        reason = "protocol error: %s" % exc
        log.error("conn%d: %s", conn.id, reason)
    except (ConnectionError, asyncio.IncompleteReadError):
        reason = "connection reset"
    except asyncio.CancelledError:
        reason = "server shutdown"
    except Exception:  # noqa: BLE001
        reason = "internal error"
        log.error("conn%d: internal error:\n%s", conn.id, traceback.format_exc())
    finally:
        srv.tasks.discard(task)
        srv.conns.pop(conn.id, None)
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        log.info("conn%d closed: %s (app=%s) (%d open)", conn.id, reason, conn.app_name,
                 len(srv.conns))


_request_ids = itertools.count(1)


def _encode_reply(reply):
    try:
        return bson.encode(reply)
    except Exception as exc:  # noqa: BLE001
        log.error("cannot encode a reply: %r", exc)
        err = CommandError(10334 if "too large" in str(exc) else 1,
                           "cannot encode the reply: %s" % exc).to_doc()
        return bson.encode(err)


async def on_msg(srv, conn, request_id, payload):
    if len(payload) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & MSG_CHECKSUM_PRESENT else 0)
    required = flags & 0xFFFF & ~(MSG_CHECKSUM_PRESENT | MSG_MORE_TO_COME)
    if required:
        raise ProtocolError("unknown required OP_MSG flag bits 0x%x" % required)
    pos = 4
    body = None
    sequences = []
    try:
        while pos < end:
            kind = payload[pos]
            pos += 1
            (size,) = struct.unpack_from("<i", payload, pos)
            if size < 5 or pos + size > end:
                raise ProtocolError("bad OP_MSG section size %d" % size)
            if kind == 0:
                if body is not None:
                    raise ProtocolError("more than one kind-0 section")
                body = bson.decode(payload[pos:pos + size])
            elif kind == 1:
                nul = payload.index(b"\x00", pos + 4, pos + size)
                ident = payload[pos + 4:nul].decode("utf-8")
                docs = bson.decode_all(payload[nul + 1:pos + size])
                sequences.append((ident, docs))
            else:
                raise ProtocolError("unknown OP_MSG section kind %d" % kind)
            pos += size
    except (bson.errors.BSONError, ValueError, struct.error) as exc:
        raise ProtocolError("malformed OP_MSG: %s" % exc) from exc
    if body is None:
        raise ProtocolError("OP_MSG without a kind-0 body section")
    for ident, docs in sequences:
        if ident in body:
            err = CommandError(40413, "Duplicate field %s" % ident).to_doc()
            await send_msg(srv, conn, request_id, finish_reply(srv, err))
            return
        body[ident] = docs
    reply = await run_command(srv, conn, body, body.get("$db"))
    if flags & MSG_MORE_TO_COME:
        return  # unacknowledged write (w:0): no reply
    await send_msg(srv, conn, request_id, reply)


async def send_msg(srv, conn, response_to, reply):
    data = _encode_reply(reply)
    header = struct.pack("<iiiiIB", 16 + 4 + 1 + len(data), next(_request_ids), response_to,
                         OP_MSG, 0, 0)
    conn.writer.write(header + data)
    await conn.writer.drain()


async def on_query(srv, conn, request_id, payload):
    try:
        nul = payload.index(b"\x00", 4)
        ns = payload[4:nul].decode("utf-8")
        pos = nul + 1 + 8  # numberToSkip, numberToReturn
        (size,) = struct.unpack_from("<i", payload, pos)
        query = bson.decode(payload[pos:pos + size])
    except (bson.errors.BSONError, ValueError, struct.error) as exc:
        raise ProtocolError("malformed OP_QUERY: %s" % exc) from exc
    if ns.endswith(".$cmd"):
        db = ns[:-5]
        cmd = query
        if "$query" in cmd and isinstance(cmd["$query"], dict):
            cmd = cmd["$query"]
        elif "query" in cmd and isinstance(cmd["query"], dict) and len(cmd) <= 3 \
                and next(iter(cmd)) == "query":
            cmd = cmd["query"]
        reply = await run_command(srv, conn, cmd, db)
        flags = 8  # AwaitCapable
    else:
        reply = {"$err": "OP_QUERY is only supported for commands by the test double "
                         "(namespace %s)" % ns, "code": 352, "ok": 0.0}
        flags = 2  # QueryFailure
    data = _encode_reply(reply)
    header = struct.pack("<iiiiiqii", 16 + 20 + len(data), next(_request_ids), request_id,
                         OP_REPLY, flags, 0, 0, 1)
    conn.writer.write(header + data)
    await conn.writer.drain()
