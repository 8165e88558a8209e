#!/usr/bin/env python3
"""Quick throughput check: one publisher and one consumer group member over WebSocket against a
release-mode stream-broker on a fresh data directory. Reports events/s published (confirmed) and
delivered+acked, and the broker's CPU seconds (utime+stime from /proc) for the run.

    swift build -c release --product stream-broker
    python3 scripts/quick-bench.py [--events 50000] [--size 256] [--window 1000]
"""
import argparse, asyncio, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request

import websockets


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--window", type=int, default=1000, help="max unconfirmed publishes")
    ap.add_argument("--inflight", type=int, default=256, help="consumer max_inflight")
    ap.add_argument("--bin", default=".build/release/stream-broker")
    ap.add_argument("--wrap", default="", help="command prefix for the broker, e.g. 'perf record -g -o /tmp/perf.data'")
    args = ap.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="sb-bench-")
    env = dict(os.environ, BUS_HOST="127.0.0.1", BUS_PORT=str(port), BUS_DATA_DIR=data, BUS_LOG_LEVEL="warning")
    proc = subprocess.Popen(args.wrap.split() + [args.bin], env=env)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        uri = f"ws://127.0.0.1:{port}/ws"
        payload = {"data": "x" * max(0, args.size - 12)}
        cpu_before = cpu_seconds(proc.pid)

        async with websockets.connect(uri, max_size=None) as sub, websockets.connect(uri, max_size=None) as pub:
            await sub.send(json.dumps({"type": "SUBSCRIBE", "topic": "bench", "group": "g", "max_inflight": args.inflight}))
            assert json.loads(await sub.recv())["type"] == "SUBSCRIBED"
            start = time.perf_counter()
            confirmed_at = None
            delivered_at = None

            async def consume():
                nonlocal delivered_at
                seen = 0
                while seen < args.events:
                    msg = json.loads(await sub.recv())
                    if msg["type"] != "MESSAGE":
                        continue
                    seen += 1
                    await sub.send(json.dumps({"type": "ACK", "topic": "bench", "partition": msg["partition"], "group": "g", "offset": msg["offset"]}))
                delivered_at = time.perf_counter()

            async def publish():
                nonlocal confirmed_at
                window = asyncio.Semaphore(args.window)
                confirmed = 0
                done = asyncio.Event()

                async def reader():
                    nonlocal confirmed
                    while confirmed < args.events:
                        msg = json.loads(await pub.recv())
                        if msg["type"] == "PUBLISHED":
                            confirmed += 1
                            window.release()
                        elif msg["type"] == "ERROR":
                            raise RuntimeError(msg)
                    done.set()

                task = asyncio.create_task(reader())
                frame = json.dumps({"type": "PUBLISH", "topic": "bench", "payload": payload})
                for _ in range(args.events):
                    await window.acquire()
                    await pub.send(frame)
                await done.wait()
                await task
                confirmed_at = time.perf_counter()

            await asyncio.gather(consume(), publish())
        cpu = cpu_seconds(proc.pid) - cpu_before
        pub_s = confirmed_at - start
        del_s = delivered_at - start
        print(json.dumps({
            "events": args.events, "payload_bytes": args.size,
            "published_per_s": round(args.events / pub_s), "delivered_acked_per_s": round(args.events / del_s),
            "broker_cpu_s": round(cpu, 3), "broker_cpu_us_per_event": round(cpu / args.events * 1e6, 1),
        }))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


asyncio.run(main())
