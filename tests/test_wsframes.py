"""The Tornado internals behind coalesced writes (jupyter_chat_ext/wsframes.py).

If a Tornado upgrade changes them, these fail, rather than connections breaking.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect

from jupyter_chat_ext import wsframes

SIZES = [0, 1, 125, 126, 65_535, 65_536, 200_000]
# Frames written one by one with wsframes.write: the big one fills the socket, so the
# one after it must queue behind the rest of it.
SEQUENCE = [10, 16_000_000, 10]


class Echo(WebSocketHandler):
    """On open: writes every test payload as pre-built frames, in one write (or, with
    ``sequence``, the SEQUENCE frames one by one through ``wsframes.write``)."""

    compress = False
    sequence = False
    opened: asyncio.Future[Any]
    pending: list[Any]

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.compress else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        stream = wsframes.raw_stream(self)
        self.opened.set_result(stream)
        if stream is not None and self.sequence:
            Echo.pending = [
                wsframes.write(stream, wsframes.header(p) + p)
                for p in (bytes([i]) * size for i, size in enumerate(SEQUENCE))
            ]
        elif stream is not None:
            payloads = [bytes([i % 251]) * size for i, size in enumerate(SIZES)]
            frames = [(p, i % 2 == 1) for i, p in enumerate(payloads)]
            stream.write(b"".join(wsframes.header(p, b) + p for p, b in frames))


async def _connect(compress: bool, sequence: bool = False) -> tuple[Any, Any]:
    loop = asyncio.get_running_loop()
    Echo.compress = compress
    Echo.sequence = sequence
    Echo.opened = loop.create_future()
    sock, port = bind_unused_port()
    server = HTTPServer(Application([("/ws", Echo)]))
    server.add_sockets([sock])
    options = {"compression_options": {}} if compress else {}
    client = await websocket_connect(
        f"ws://127.0.0.1:{port}/ws", max_message_size=32 * 1024 * 1024, **options
    )
    stream = await asyncio.wait_for(Echo.opened, 10)
    return client, (server, stream)


async def test_prebuilt_frames_written_together_arrive_whole_and_in_order() -> None:
    client, (server, stream) = await _connect(compress=False)
    assert isinstance(stream, IOStream)
    for i, size in enumerate(SIZES):
        message = await asyncio.wait_for(client.read_message(), 10)
        assert message is not None
        data = message if isinstance(message, bytes) else message.encode()
        assert isinstance(message, bytes) == (i % 2 == 1)  # text and binary opcodes
        assert data == bytes([i % 251]) * size
    client.close()
    server.stop()


async def test_direct_writes_queue_behind_a_partial_one() -> None:
    client, (server, _) = await _connect(compress=False, sequence=True)
    first, big, last = Echo.pending
    assert first is None  # the socket took it at once: no future
    assert big is not None  # 16 MB does not fit the socket: the rest is tornado's
    assert last is not None  # behind the rest of the big one, never before it
    for i, size in enumerate(SEQUENCE):
        message = await asyncio.wait_for(client.read_message(), 30)
        assert message == (bytes([i]) * size).decode()
    await asyncio.wait_for(asyncio.gather(big, last), 10)
    client.close()
    server.stop()


async def test_compressed_connections_take_tornados_own_path() -> None:
    client, (server, stream) = await _connect(compress=True)
    assert stream is None
    client.close()
    server.stop()


@pytest.mark.parametrize(("size", "length"), [(5, 2), (126, 4), (70_000, 10)])
def test_header_lengths(size: int, length: int) -> None:
    payload = b"x" * size
    head = wsframes.header(payload)
    assert len(head) == length and head[0] == 0x81
    assert wsframes.header(payload) is head  # the same payload is framed once
