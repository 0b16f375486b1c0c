"""Round-trip and fan-out of chat messages through a real server process.

Usage: python benchmarks/roundtrip.py [--receivers 50] [--messages 2000]

Starts `jupyter server` with the extension (SQLite history on local disk) and drives
it from this process with raw protocol clients, then writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402

from helpers import JupyterServer  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_client(server: JupyterServer) -> WebSocketClientConnection:
    url = f"ws://127.0.0.1:{server.port}{server.base_url}chat-ext/ws"
    request = HTTPRequest(url, headers={"Authorization": f"token {server.token}"})
    ws = await websocket_connect(request)
    await ws.read_message()  # hello
    return ws


async def join(ws: WebSocketClientConnection, room: str) -> None:
    await ws.write_message(json.dumps({"op": "join", "room": room, "id": "j"}))
    while json.loads(await ws.read_message())["op"] != "joined":  # type: ignore[arg-type]
        pass


async def sequential_acks(server: JupyterServer, count: int) -> dict[str, float]:
    ws = await open_client(server)
    await join(ws, "seq")
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        await ws.write_message(
            json.dumps({"op": "send", "room": "seq", "id": f"s{i}", "body": "x"})
        )
        while json.loads(await ws.read_message())["op"] != "message":  # type: ignore[arg-type]
            pass
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    ws.close()
    return {
        "rate": count / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
    }


async def fan_out(server: JupyterServer, receivers: int, count: int) -> dict[str, float]:
    room = f"fan-{receivers}"
    clients = [await open_client(server) for _ in range(receivers)]
    for ws in clients:
        await join(ws, room)
    sender = clients[0]
    latencies: list[float] = []

    async def receive(ws: WebSocketClientConnection) -> None:
        got = 0
        while got < count:
            frame = json.loads(await ws.read_message())  # type: ignore[arg-type]
            if frame["op"] == "message":
                got += 1
                latencies.append(time.time() - float(frame["body"]))

    readers = [asyncio.ensure_future(receive(ws)) for ws in clients]
    start = time.perf_counter()
    for i in range(count):
        await sender.write_message(
            json.dumps({"op": "send", "room": room, "id": f"f{i}", "body": repr(time.time())})
        )
    await asyncio.wait_for(asyncio.gather(*readers), 300)  # a lost copy fails the run
    elapsed = time.perf_counter() - start
    for ws in clients:
        ws.close()
    return {
        "copies": receivers * count,
        "copies_per_s": receivers * count / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receivers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = JupyterServer(
            Path(tmp), args=("--ChatExtensionApp.message_rate_limit=100000",)
        ).start()
        try:
            seq = asyncio.run(sequential_acks(server, args.messages))
            fan = asyncio.run(fan_out(server, args.receivers, args.messages))
        finally:
            server.stop()
    report = f"""## Chat messages: round trip and fan-out

Measured by `python benchmarks/roundtrip.py --receivers {args.receivers} --messages {args.messages}`
on {machine()}. Server and load generator share the machine (separate processes);
history is SQLite on local disk (WAL, `history_fsync` off: a commit is a write, no fsync).

| scenario | result |
|---|---|
| one client, send and wait for each ack ({args.messages} msgs) | {seq["rate"]:.0f} msgs/s; ack p50 {seq["p50_ms"]:.2f} ms, p99 {seq["p99_ms"]:.2f} ms |
| fan-out: 1 sender (pipelined) to {args.receivers} members, {args.messages} msgs | {fan["copies_per_s"]:.0f} copies/s delivered ({fan["copies"]} copies, none lost); latency p50 {fan["p50_ms"]:.1f} ms, p99 {fan["p99_ms"]:.1f} ms |

Every acknowledgement waits for the message's SQLite commit, made on the event loop at
the end of the turn the send arrived in: pipelined sends share one commit per turn.
"""
    write_section("roundtrip", report)
    print(report)


if __name__ == "__main__":
    main()
