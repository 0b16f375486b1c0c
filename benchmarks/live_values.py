"""One publisher at 1,000 values/s to 50 subscribers: delivered rate, latency, memory.

Usage: python benchmarks/live_values.py [--seconds 60] [--subscribers 50] [--rate 1000]

The server is a `jupyter server` process with the extension. The publisher is a real
`ChatClient` publishing from a busy loop (as a training loop in a cell would), and
we time every `publish()` call. The subscribers are raw protocol clients spread over
worker processes, so the load generator is not the bottleneck. Writes its section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402

from jupyter_chat_ext import ChatClient  # noqa: E402

from helpers import JupyterServer, rss_bytes  # noqa: E402


def subscriber_worker(url: str, token: str, count: int, until: float, out: Any) -> None:
    """Run ``count`` subscribers until ``until``; report received counts and latencies."""

    async def one(samples: list[float]) -> int:
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        ws = await websocket_connect(request)
        await ws.read_message()  # hello
        await ws.write_message(json.dumps({"op": "join", "room": "bench", "id": "j"}))
        received = 0
        while time.time() < until + 2:
            try:
                message = await asyncio.wait_for(ws.read_message(), until + 2 - time.time())
            except asyncio.TimeoutError:
                break
            if message is None:
                break
            if '"op":"data"' in message[:40]:
                frame = json.loads(message)
                received += 1
                if received % 10 == 0:
                    samples.append(time.time() - frame["value"]["t"])
        ws.close()
        return received

    async def run() -> tuple[list[int], list[float]]:
        samples: list[float] = []
        counts = await asyncio.gather(*(one(samples) for _ in range(count)))
        return list(counts), samples

    out.put(asyncio.run(run()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = JupyterServer(Path(tmp)).start()
        assert server.proc is not None
        try:
            url = f"ws://127.0.0.1:{server.port}/chat-ext/ws"
            start_at = time.time() + 3
            until = start_at + args.seconds
            out: Any = multiprocessing.Queue()
            per_worker = [args.subscribers // args.workers] * args.workers
            per_worker[0] += args.subscribers - sum(per_worker)
            workers = [
                multiprocessing.Process(
                    target=subscriber_worker, args=(url, server.token, n, until, out)
                )
                for n in per_worker
            ]
            for worker in workers:
                worker.start()
            client = ChatClient(url=server.url, token=server.token)
            room = client.join("bench")
            rss_start = rss_bytes(server.proc.pid)
            time.sleep(max(0.0, start_at - time.time()))  # the agreed start time
            calls: list[float] = []
            published = 0
            interval = 1 / args.rate
            next_at = time.time()
            while time.time() < until:
                before = time.perf_counter()
                room.publish("metric", {"t": time.time(), "i": published})
                calls.append(time.perf_counter() - before)
                published += 1
                next_at += interval
                delay = next_at - time.time()
                if delay > 0:
                    time.sleep(delay)  # pacing the publisher to the scenario's rate
            rss_end = rss_bytes(server.proc.pid)
            results = [out.get(timeout=60) for _ in workers]
            for worker in workers:
                worker.join(30)
            client.close()
        finally:
            server.stop()
    counts = [c for worker_counts, _ in results for c in worker_counts]
    samples = sorted(s for _, worker_samples in results for s in worker_samples)
    delivered = sum(counts)
    expected = published * args.subscribers
    calls.sort()
    body = f"""## Live values: 1 publisher, {args.subscribers} subscribers

Measured by `python benchmarks/live_values.py --seconds {args.seconds:g} --subscribers {args.subscribers} --rate {args.rate:g}`
on {machine()}. The publisher is a `ChatClient` in a paced loop; subscribers are raw
clients in {args.workers} worker processes; server, publisher and subscribers share the
2 cores.

| figure | value |
|---|---|
| values published | {published} ({published / args.seconds:.0f}/s) |
| copies delivered | {delivered} of {expected} ({100 * delivered / max(expected, 1):.1f}%), {delivered / args.seconds:.0f} copies/s |
| latency publish → subscriber (p50 / p99) | {1e3 * statistics.median(samples):.1f} / {1e3 * samples[int(0.99 * (len(samples) - 1))]:.1f} ms |
| `publish()` call time (p50 / p99 / max) | {1e6 * statistics.median(calls):.0f} / {1e6 * calls[int(0.99 * (len(calls) - 1))]:.0f} / {1e6 * calls[-1]:.0f} µs |
| server RSS at start / end | {rss_start / 1e6:.0f} / {rss_end / 1e6:.0f} MB |

Values are latest-wins: a copy not delivered was conflated (a newer value of the same
topic replaced it for a reader that had fallen behind), never buffered without bound.
"""
    write_section("live-values", body)
    print(body)


if __name__ == "__main__":
    main()
