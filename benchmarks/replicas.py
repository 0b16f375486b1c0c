"""Chat through Redis: one process on Redis, and two replicas sharing rooms on it.

Usage: python benchmarks/replicas.py [--receivers 50] [--messages 2000]

Starts its own redis-server (AOF, appendfsync everysec, as docs/deployment.md advises)
on a free port and `jupyter server` processes whose extension has `redis_url` set (the
same core and Redis code as the hub service, without a Hub to log in through), then
writes the "replicas" section of docs/performance.md. Compare with the "roundtrip"
section (one process, SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tornado.websocket import WebSocketClientConnection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402
from roundtrip import join, open_client, pct, sequential_acks  # noqa: E402

from helpers import JupyterServer, RedisServer  # noqa: E402


async def split_fan_out(
    servers: list[JupyterServer], receivers: int, count: int, rate: float
) -> list[dict[str, float]]:
    """One sender on the first server, ``rate`` msgs/s; receivers spread over all servers.

    Returns, per server, the latency of the copies its receivers got.
    """
    room = f"split-{receivers}-{len(servers)}"
    placed = [
        (i % len(servers), await open_client(servers[i % len(servers)])) for i in range(receivers)
    ]
    for _, ws in placed:
        await join(ws, room)
    latencies: list[list[float]] = [[] for _ in servers]

    async def receive(where: int, ws: WebSocketClientConnection) -> None:
        got = 0
        while got < count:
            frame = json.loads(await ws.read_message())  # type: ignore[arg-type]
            if frame["op"] == "message":
                got += 1
                latencies[where].append(time.time() - float(frame["body"]))

    readers = [asyncio.ensure_future(receive(where, ws)) for where, ws in placed]
    sender = placed[0][1]
    start = time.perf_counter()
    for i in range(count):
        await sender.write_message(
            json.dumps({"op": "send", "room": room, "id": f"f{i}", "body": repr(time.time())})
        )
        await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
    await asyncio.wait_for(asyncio.gather(*readers), 300)  # a lost copy fails the run
    elapsed = time.perf_counter() - start
    for _, ws in placed:
        ws.close()
    return [
        {
            "copies": len(lat),
            "copies_per_s": receivers * count / elapsed,
            "p50_ms": pct(lat, 0.5) * 1e3,
            "p99_ms": pct(lat, 0.99) * 1e3,
        }
        for lat in latencies
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receivers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(binary, Path(tmp) / "redis", fsync="everysec").start()
        options = (
            "--ChatExtensionApp.message_rate_limit=100000",
            f"--ChatExtensionApp.redis_url={redis.url}",
        )
        servers = [JupyterServer(Path(tmp) / f"s{i}", args=options).start() for i in (0, 1)]
        try:
            seq = asyncio.run(sequential_acks(servers[0], args.messages))
            one = asyncio.run(split_fan_out(servers[:1], args.receivers, args.messages, args.rate))
            here, there = asyncio.run(
                split_fan_out(servers, args.receivers, args.messages, args.rate)
            )
            flood = asyncio.run(split_fan_out(servers, args.receivers, args.messages, 1e9))
        finally:
            for server in servers:
                server.stop()
            redis.stop()
    n, m, r = args.receivers, args.messages, args.rate
    one = one[0]
    report = f"""## Through Redis: one process, and two replicas

Measured by `python benchmarks/replicas.py --receivers {n} --messages {m} --rate {r:g}` on
{machine()}. Redis (AOF, `appendfsync everysec`), the server processes and the load
generator all share the machine.

| scenario | result |
|---|---|
| one client on Redis, send and wait for each ack ({m} msgs) | {seq["rate"]:.0f} msgs/s; ack p50 {seq["p50_ms"]:.2f} ms, p99 {seq["p99_ms"]:.2f} ms |
| one process on Redis: 1 sender at {r:g} msgs/s to {n} members | latency p50 {one["p50_ms"]:.1f} ms, p99 {one["p99_ms"]:.1f} ms, none lost |
| two replicas: same, members split over both: copies on the sender's replica | p50 {here["p50_ms"]:.1f} ms, p99 {here["p99_ms"]:.1f} ms, none lost |
| ... copies on the other replica (one more hop through Redis) | p50 {there["p50_ms"]:.1f} ms, p99 {there["p99_ms"]:.1f} ms, none lost |
| two replicas, the sender as fast as it can ({m} msgs, pipelined) | {flood[0]["copies_per_s"]:.0f} copies/s delivered in all, none lost |

A message is acknowledged once Redis has run the append script (the seq, the Stream
entry and the PUBLISH, in one step); the other replica delivers it when the PUBLISH
reaches it, so crossing replicas costs one more hop through Redis.
"""
    write_section("replicas", report)
    print(report)


if __name__ == "__main__":
    main()
