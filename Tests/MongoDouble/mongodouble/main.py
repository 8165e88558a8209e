"""Command line and the serve loop."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys

from .constants import MAX_WIRE_VERSION
from .server import MongoDouble
from .wire import handle_client

log = logging.getLogger("mongo_double")


async def serve(args):
    srv = MongoDouble(host=args.host, port=args.port, data_path=args.data,
                      history=args.history, verbose=args.verbose,
                      ttl_interval=args.ttl_interval, advertise=args.advertise,
                      save_interval=args.save_interval)
    server = await asyncio.start_server(functools.partial(handle_client, srv), args.host,
                                        args.port, reuse_address=True)
    srv.server = server
    srv.port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, srv.stopping.set)
    # A parent may start us with SIGTERM/SIGINT blocked (the mask survives exec: the Swift
    # test process does this); unblock them so that they stop us cleanly.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    background = [asyncio.create_task(srv.reaper())]
    if args.ttl_interval > 0:
        background.append(asyncio.create_task(srv.ttl_monitor()))
    if args.save_interval > 0 and args.data:
        background.append(asyncio.create_task(srv.saver()))
    log.info("mongo_double listening on %s:%d (replica set rs0, primary %s, maxWireVersion "
             "%d, history %d events%s)", args.host, srv.port, srv.me, MAX_WIRE_VERSION,
             srv.changes.history, ", data %s" % args.data if args.data else "")
    await srv.stopping.wait()
    log.info("stopping")
    server.close()
    for task in list(srv.tasks):
        task.cancel()
    if srv.tasks:
        await asyncio.wait(list(srv.tasks), timeout=5)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if args.data:
        for sess in srv.sessions.values():
            if sess.txn is not None and sess.txn.state == "active":
                srv.abort_txn(sess.txn)
        srv.dump(args.data)
        log.info("saved %d collections and %d change events to %s",
                 sum(len(c) for c in srv.dbs.values()), len(srv.changes), args.data)
    log.info("stopped")


def main(argv=None):
    parser = argparse.ArgumentParser(description="MongoDB wire-protocol test double")
    parser.add_argument("--port", type=int, default=27017,
                        help="TCP port (0 picks a free one; it is logged)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--advertise", default=None,
                        help="host name announced in hello's hosts/me/primary "
                             "(default: --host)")
    parser.add_argument("--data", default=None,
                        help="BSON file: loaded at start, written on a clean stop")
    parser.add_argument("--history", type=int, default=100_000,
                        help="change events retained for resuming change streams "
                             "(older resume tokens get error 286)")
    parser.add_argument("--ttl-interval", type=float, default=60.0,
                        help="seconds between TTL index passes (0 disables)")
    parser.add_argument("--save-interval", type=float, default=0.0,
                        help="also save --data every N seconds when changed (0: only on stop)")
    parser.add_argument("--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s mongo_double %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0
