"""A large attachment shared into a busy room, through a real server process.

Usage: python benchmarks/attachments.py [--readers 50] [--size-mib 5] [--rounds 3]

Starts `jupyter server` with the extension and drives it from this process: one person
uploads a ``--size-mib`` MiB PNG-signed attachment and sends the message that carries
it into a room of ``--readers`` people; each reader fetches the bytes over HTTP as soon
as the message reaches them (as the widget does for an image). Meanwhile another member
sends a chat message every 20 ms. Measured: time from the send to the first reader's
message (its preview) and to the first and last reader holding all the bytes, the
server's peak RSS during the transfer above its RSS before, and the chat messages'
latency during the transfer against before it. Writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402

from helpers import JupyterServer, rss_bytes  # noqa: E402

ROOM = "bench-attach"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Person:
    """A chat connection and the login cookie that makes HTTP requests the same person."""

    def __init__(self, server: JupyterServer) -> None:
        self.server = server
        self.ws: WebSocketClientConnection | None = None
        self.cookie = ""

    async def open(self) -> Person:
        base = f"127.0.0.1:{self.server.port}{self.server.base_url}"
        headers = {"Authorization": f"token {self.server.token}"}
        me = await AsyncHTTPClient().fetch(f"http://{base}api/me", headers=headers)
        self.cookie = "; ".join(c.split(";", 1)[0] for c in me.headers.get_list("Set-Cookie"))
        request = HTTPRequest(f"ws://{base}chat-ext/ws", headers={"Cookie": self.cookie})
        self.ws = await websocket_connect(request, max_message_size=64 * 1024 * 1024)
        await self.ws.read_message()  # hello
        await self.ws.write_message(json.dumps({"op": "join", "room": ROOM, "id": "j"}))
        while json.loads(await self.ws.read_message())["op"] != "joined":  # type: ignore[arg-type]
            pass
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{self.server.base_url}{path}"

    async def upload(self, data: bytes) -> str:
        response = await AsyncHTTPClient().fetch(
            self.url(f"chat-ext/attachments?room={ROOM}"),
            method="POST",
            body=data,
            headers={
                "Cookie": self.cookie,
                "Authorization": f"token {self.server.token}",
                "Content-Type": "image/png",
                "X-Chat-Name": "big.png",
            },
            request_timeout=120,
        )
        return str(json.loads(response.body)["upload"])

    async def fetch(self, url: str) -> int:
        response = await AsyncHTTPClient(max_clients=200).fetch(
            self.url(url),
            headers={"Cookie": self.cookie, "Authorization": f"token {self.server.token}"},
            request_timeout=300,
        )
        return len(response.body)


class RssSampler:
    """The server's peak RSS while it runs (sampled every 10 ms from /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


async def chatter(person: Person, stop: asyncio.Event, latencies: list[float]) -> None:
    """Send a message every 20 ms and time each acknowledgement."""
    assert person.ws is not None
    i = 0
    while not stop.is_set():
        i += 1
        sent = time.perf_counter()
        frame = {"op": "send", "room": ROOM, "id": f"c{time.time()}-{i}", "body": "still here"}
        await person.ws.write_message(json.dumps(frame))
        while True:
            answer = json.loads(await person.ws.read_message())  # type: ignore[arg-type]
            if answer["op"] == "message" and answer["id"] == frame["id"]:
                break
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.02)


async def one_round(server: JupyterServer, readers: int, size: int, index: int) -> dict[str, float]:
    sharer = await Person(server).open()
    talker = await Person(server).open()
    crowd = [await Person(server).open() for _ in range(readers)]
    data = b"\x89PNG\r\n\x1a\n" + bytes([index % 256]) * (size - 8)
    assert server.proc is not None

    quiet: list[float] = []
    stop = asyncio.Event()
    talking = asyncio.ensure_future(chatter(talker, stop, quiet))
    await asyncio.sleep(1.0)
    stop.set()
    await talking
    before_rss = rss_bytes(server.proc.pid)

    busy: list[float] = []
    stop = asyncio.Event()
    upload = await sharer.upload(data)
    seen: list[float] = []
    done: list[float] = []

    async def read(person: Person) -> None:
        assert person.ws is not None
        while True:
            frame = json.loads(await person.ws.read_message())  # type: ignore[arg-type]
            if frame["op"] == "message" and "attachment" in frame:
                seen.append(time.perf_counter())
                got = await person.fetch(frame["attachment"]["url"])
                assert got == size, got
                done.append(time.perf_counter())
                return

    with RssSampler(server.proc.pid) as rss:
        reading = [asyncio.ensure_future(read(p)) for p in crowd]
        talking = asyncio.ensure_future(chatter(talker, stop, busy))
        start = time.perf_counter()
        assert sharer.ws is not None
        frame = {"op": "send", "room": ROOM, "id": f"a{index}", "body": "the big one"}
        await sharer.ws.write_message(
            json.dumps({**frame, "attachment": {"upload": upload, "kind": "image"}})
        )
        await asyncio.wait_for(asyncio.gather(*reading), 600)
        stop.set()
        await talking
    for person in (sharer, talker, *crowd):
        assert person.ws is not None
        person.ws.close()
    return {
        "first_message_ms": (min(seen) - start) * 1e3,
        "first_bytes_ms": (min(done) - start) * 1e3,
        "all_bytes_ms": (max(done) - start) * 1e3,
        "rss_growth_mib": (rss.peak - before_rss) / 2**20,
        "quiet_p50_ms": pct(quiet, 0.5) * 1e3,
        "busy_p50_ms": pct(busy, 0.5) * 1e3,
        "busy_p99_ms": pct(busy, 0.99) * 1e3,
        "busy_max_ms": max(busy) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--size-mib", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = int(args.size_mib * 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        server = JupyterServer(
            Path(tmp), args=("--ChatExtensionApp.message_rate_limit=100000",)
        ).start()
        try:
            rounds = [
                asyncio.run(one_round(server, args.readers, size, i)) for i in range(args.rounds)
            ]
        finally:
            server.stop()
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    report = f"""## Attachments: a large one shared into a busy room

Measured by `python benchmarks/attachments.py --readers {args.readers} --size-mib {args.size_mib:g} --rounds {args.rounds}`
on {machine()} (medians of {args.rounds} rounds; server and clients share the machine).
One person uploads a {args.size_mib:g} MiB image and sends it to a room of {args.readers}
readers; each reader fetches the bytes over HTTP as soon as the message reaches it,
as the widget does. Another member sends a chat message every 20 ms meanwhile.

| measure | result |
|---|---|
| send to the first reader's message (the description and preview) | {med["first_message_ms"]:.1f} ms |
| send to the first reader holding all the bytes | {med["first_bytes_ms"]:.0f} ms |
| send to all {args.readers} readers holding all the bytes | {med["all_bytes_ms"]:.0f} ms ({args.readers * args.size_mib / (med["all_bytes_ms"] / 1e3):.0f} MiB/s served) |
| server RSS growth during the transfer | {med["rss_growth_mib"]:.0f} MiB (the attachment is {args.size_mib:g} MiB; {args.readers} copies would be {args.readers * args.size_mib:.0f} MiB) |
| chat acknowledgement before the transfer, p50 | {med["quiet_p50_ms"]:.1f} ms |
| chat acknowledgement during the transfer, p50 / p99 / max | {med["busy_p50_ms"]:.1f} / {med["busy_p99_ms"]:.1f} / {med["busy_max_ms"]:.1f} ms |

The message carries only the description: every reader has it in about the time of a
chat message. The bytes are served by each reader's own HTTP request, read from the
attachment store once per request.
"""
    write_section("attachments", report)
    print(report)


if __name__ == "__main__":
    main()
