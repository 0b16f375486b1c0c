"""The lean WebSocket connection (jupyter_chat_ext/wsconn.py) over a real socket pair.

The server side is a :class:`Connection` over a tornado ``IOStream``; the client side
is a raw socket that writes frames as a browser would (masked) and reads what the
server writes. If a Tornado upgrade changes what the connection relies on, these fail.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest
from tornado.iostream import IOStream
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import websocket_connect

from jupyter_chat_ext import wsconn
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.handlers import SessionSocket
from jupyter_chat_ext.history import MemoryHistory
from jupyter_chat_ext.protocol import User
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.wsconn import Connection, Heartbeat


class Recorder:
    """A session stand-in: records what the connection hands it."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self.flushed_bytes = 0
        self.closed = asyncio.Event()
        self.arrived = asyncio.Event()
        self.hold: asyncio.Future[None] | None = None  # returned for the next message

    def receive(self, data: bytes, binary: bool = False) -> Awaitable[None] | None:
        self.messages.append((data, binary))
        self.arrived.set()
        hold, self.hold = self.hold, None
        return hold

    def flushed(self, size: int) -> None:
        self.flushed_bytes += size

    def close(self) -> None:
        self.closed.set()


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame, masked as browsers mask them."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Peer:
    """The client end: send raw bytes, read server frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _more(self) -> bool:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        self.buf += chunk
        return bool(chunk)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload); servers never mask."""
        async with asyncio.timeout(10):
            while True:
                if len(self.buf) >= 2:
                    length, start = self.buf[1] & 0x7F, 2
                    if length == 126 and len(self.buf) >= 4:
                        (length,), start = struct.unpack_from("!H", self.buf, 2), 4
                    elif length == 127 and len(self.buf) >= 10:
                        (length,), start = struct.unpack_from("!Q", self.buf, 2), 10
                    whole = (length < 126 or start > 2) and len(self.buf) >= start + length
                    if whole:
                        opcode = self.buf[0] & 0x0F
                        payload = self.buf[start : start + length]
                        self.buf = self.buf[start + length :]
                        return opcode, payload
                assert await self._more(), "the server closed the socket"

    async def eof(self) -> bool:
        """True once the server closed the socket (after reading what was left)."""
        async with asyncio.timeout(10):
            while await self._more():
                pass
        return True


@asynccontextmanager
async def pair(
    max_size: int = 1 << 20, heartbeat: tuple[float, float] = (0.0, 0.0)
) -> AsyncIterator[tuple[Connection, Recorder, Peer]]:
    server, client = socket.socketpair()
    client.setblocking(False)
    connection = Connection(IOStream(server), max_size, Heartbeat.of(*heartbeat))
    recorder = Recorder()
    connection.start(recorder)
    try:
        yield connection, recorder, Peer(client)
    finally:
        connection.abort()
        client.close()


async def test_messages_whole_fragmented_and_split_across_reads() -> None:
    async with pair() as (_, recorder, peer):
        await peer.send(frame(b'{"op":"a"}') + frame(b"\x00\x01", opcode=0x2))
        data = frame(b"hel", fin=False) + frame(b"lo", opcode=0x0)
        for byte in data:  # one byte at a time: every boundary falls inside a read
            await peer.send(bytes([byte]))
        await peer.send(frame(b"x" * 70_000))  # a 64-bit length
        async with asyncio.timeout(10):
            while len(recorder.messages) < 4:
                recorder.arrived.clear()
                await recorder.arrived.wait()
        assert recorder.messages == [
            (b'{"op":"a"}', False),
            (b"\x00\x01", True),
            (b"hello", False),
            (b"x" * 70_000, False),
        ]


async def test_frames_of_one_turn_go_out_together_and_are_counted() -> None:
    async with pair() as (connection, recorder, peer):
        sizes = [0, 1, 125, 126, 65_535, 65_536, 200_000]
        payloads = [bytes([i]) * size for i, size in enumerate(sizes)]
        for i, payload in enumerate(payloads):
            assert connection.send(payload, binary=i % 2 == 1)
        for i, payload in enumerate(payloads):
            assert await peer.read_frame() == ((0x2 if i % 2 else 0x1), payload)
        async with asyncio.timeout(10):
            while recorder.flushed_bytes < sum(sizes):
                await asyncio.sleep(0.01)
        assert recorder.flushed_bytes == sum(sizes)


async def test_a_ping_is_answered_with_its_payload() -> None:
    async with pair() as (_, _recorder, peer):
        await peer.send(frame(b"are you there", opcode=0x9))
        assert await peer.read_frame() == (0xA, b"are you there")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(frame(b"plain", mask=False), 1002, id="unmasked"),
        pytest.param(frame(b"x" * 2000), 1009, id="too-big"),
        pytest.param(
            frame(b"a" * 600, fin=False) + frame(b"b" * 600, opcode=0x0), 1009, id="too-big-whole"
        ),
        pytest.param(frame(b"x", opcode=0x0), 1002, id="stray-continuation"),
        pytest.param(frame(b"x", opcode=0x3), 1002, id="unknown-opcode"),
        pytest.param(bytes((0x81 | 0x40, 0x80)) + b"\x00" * 4, 1002, id="reserved-bit"),
    ],
)
async def test_protocol_errors_close_with_the_right_code(data: bytes, code: int) -> None:
    async with pair(max_size=1024) as (_, recorder, peer):
        await peer.send(data)
        opcode, payload = await peer.read_frame()
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code
        await asyncio.wait_for(recorder.closed.wait(), 10)
        assert recorder.messages == []
        await peer.send(frame(b"", opcode=0x8))  # the peer answers: the socket closes
        assert await peer.eof()


async def test_a_close_sends_what_was_queued_first_then_the_code() -> None:
    async with pair() as (connection, recorder, peer):
        connection.send(b'{"op":"error"}')
        connection.close(4008, "slow reader")
        assert not connection.send(b"too late")
        assert await peer.read_frame() == (0x1, b'{"op":"error"}')
        opcode, payload = await peer.read_frame()
        assert opcode == 0x8 and payload == struct.pack("!H", 4008) + b"slow reader"
        await asyncio.wait_for(recorder.closed.wait(), 10)
        await peer.send(frame(struct.pack("!H", 4008), opcode=0x8))
        assert await peer.eof()


async def test_the_peers_close_is_answered_and_ends_the_session() -> None:
    async with pair() as (_, recorder, peer):
        await peer.send(frame(struct.pack("!H", 1001), opcode=0x8))
        assert await peer.read_frame() == (0x8, struct.pack("!H", 1001))
        await asyncio.wait_for(recorder.closed.wait(), 10)
        assert await peer.eof()


async def test_a_dropped_socket_ends_the_session() -> None:
    async with pair() as (_, recorder, peer):
        peer.sock.close()
        await asyncio.wait_for(recorder.closed.wait(), 10)


async def test_the_next_message_waits_for_the_handlers_work() -> None:
    async with pair() as (_, recorder, peer):
        recorder.hold = asyncio.get_running_loop().create_future()
        held = recorder.hold
        await peer.send(frame(b"join") + frame(b"send"))
        await asyncio.wait_for(recorder.arrived.wait(), 10)
        for _ in range(20):  # turns of the loop: the second is not handed over yet
            await asyncio.sleep(0)
        assert recorder.messages == [(b"join", False)]
        recorder.arrived.clear()
        held.set_result(None)
        await asyncio.wait_for(recorder.arrived.wait(), 10)
        assert recorder.messages == [(b"join", False), (b"send", False)]


async def test_one_heartbeat_pings_everyone_and_drops_the_silent() -> None:
    beat = (0.05, 0.05)
    async with pair(heartbeat=beat) as (_, quiet, silent), pair(heartbeat=beat) as (_, alive, peer):
        assert Heartbeat.of(*beat) is Heartbeat.of(*beat) and len(Heartbeat.of(*beat)) == 2
        for _ in range(4):  # a live peer answers each ping and stays
            opcode, payload = await peer.read_frame()
            assert opcode == 0x9
            await peer.send(frame(payload, opcode=0xA))
        assert not alive.closed.is_set()
        await asyncio.wait_for(quiet.closed.wait(), 10)  # never answered: dropped
        assert await silent.eof()


async def test_a_write_that_fills_the_socket_keeps_later_frames_behind_it() -> None:
    server, client = socket.socketpair()
    stream = IOStream(server)
    try:
        first = wsconn.write(stream, b"a" * 10)
        big = wsconn.write(stream, b"b" * 16_000_000)
        last = wsconn.write(stream, b"c" * 10)
        assert first is None  # the socket took it at once: no future
        assert big is not None and last is not None  # the rest, and what queues behind it
        client.setblocking(False)
        peer = Peer(client)
        async with asyncio.timeout(30):
            while len(peer.buf) < 16_000_020:
                await peer._more()
        assert peer.buf == b"a" * 10 + b"b" * 16_000_000 + b"c" * 10
        await asyncio.wait_for(asyncio.gather(big, last), 10)
    finally:
        stream.close()
        client.close()


@pytest.mark.parametrize(("size", "length"), [(5, 2), (126, 4), (70_000, 10)])
def test_header_lengths(size: int, length: int) -> None:
    payload = b"x" * size
    head = wsconn.header(payload)
    assert len(head) == length and head[0] == 0x81
    assert wsconn.header(payload) is head  # the same payload is framed once


async def test_a_ping_flood_from_a_peer_that_never_reads_piles_nothing_up() -> None:
    async with pair() as (connection, _, peer):
        await peer.send(frame(b"p" * 125, opcode=0x9) * 5000)  # one read holds many
        for _ in range(20):
            await asyncio.sleep(0)
        queued = len(connection._stream._write_buffer)  # type: ignore[attr-defined]
        assert queued <= 2 * 127  # at most a pong per turn of the loop, not one per ping


HANDLER: contextvars.ContextVar[object] = contextvars.ContextVar("HANDLER")


class Handshake(SessionSocket):
    """A host's handler, holding itself in a contextvar as jupyter_server's do."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        HANDLER.set(self)
        self._identity = User(username="a", name="a", display_name="A")
        await super().get(*args, **kwargs)


async def test_after_the_handshake_no_handler_or_request_stays_alive() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    options = {
        "registry": registry,
        "max_frame_size": 1 << 20,
        "heartbeat_interval": 10.0,
        "heartbeat_timeout": 30.0,
    }
    sock, port = bind_unused_port()
    server = HTTPServer(Application([("/ws", Handshake, options)]))
    server.add_sockets([sock])
    client = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
    try:
        assert '"op":"hello"' in str(await asyncio.wait_for(client.read_message(), 10))
        client.write_message('{"op":"join","room":"r","id":"j"}')
        assert '"op":"joined"' in str(await asyncio.wait_for(client.read_message(), 10))
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, Handshake | HTTPServerRequest)]
        assert alive == []  # the connection is the lean object alone
    finally:
        client.close()
        server.stop()
        await registry.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="Linux only")
def test_a_tcp_socket_holds_little_unsent_data_in_the_kernel() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        wsconn.limit_unsent(server)
        limit = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        assert limit == wsconn.UNSENT_MAX
    finally:
        for sock in (server, client, listener):
            sock.close()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(b"p" * 126, opcode=0x9), id="long-ping"),
        pytest.param(frame(b"p" * 70_000, opcode=0x9), id="ping-64-bit-length"),
        pytest.param(frame(b"p", opcode=0x9, fin=False), id="fragmented-ping"),
        pytest.param(frame(b"p" * 200, opcode=0xA), id="long-pong"),
        pytest.param(frame(b"", opcode=0xA, fin=False), id="fragmented-pong"),
        pytest.param(frame(struct.pack("!H", 1000) + b"r" * 124, opcode=0x8), id="long-close"),
        pytest.param(frame(b"a", fin=False) + frame(b"p" * 126, opcode=0x9), id="long-ping-inside"),
    ],
)
async def test_control_frames_must_be_whole_and_short(data: bytes) -> None:
    """RFC 6455 5.5: a long ping would be echoed whole (a second max_size buffer)."""
    async with pair(max_size=1 << 20) as (_, recorder, peer):
        await peer.send(data)
        opcode, payload = await peer.read_frame()
        assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1002))
        await asyncio.wait_for(recorder.closed.wait(), 10)
        assert recorder.messages == []


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        pytest.param(b"", b"", id="empty"),
        pytest.param(struct.pack("!H", 1000) + "bye ✓".encode(), struct.pack("!H", 1000), id="ok"),
        pytest.param(struct.pack("!H", 4001), struct.pack("!H", 4001), id="application"),
        pytest.param(b"\x03", struct.pack("!H", 1002), id="one-byte"),
        *(
            pytest.param(struct.pack("!H", code), struct.pack("!H", 1002), id=f"code-{code}")
            for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
        ),
        pytest.param(struct.pack("!H", 1000) + b"\xff\xfe", struct.pack("!H", 1007), id="not-utf8"),
        pytest.param(
            struct.pack("!H", 1000) + "✓".encode()[:2], struct.pack("!H", 1007), id="cut-utf8"
        ),
    ],
)
async def test_the_peers_close_is_answered_with_its_code_or_what_is_wrong(
    payload: bytes, answer: bytes
) -> None:
    async with pair() as (_, recorder, peer):
        await peer.send(frame(payload, opcode=0x8))
        assert await peer.read_frame() == (0x8, answer)
        await asyncio.wait_for(recorder.closed.wait(), 10)
        assert await peer.eof()


async def test_a_flood_of_tiny_frames_lets_the_loop_turn() -> None:
    """64 KiB of tiny frames is thousands of them: not all in one turn of the loop."""
    async with pair() as (_, recorder, peer):
        seen: list[int] = []
        loop = asyncio.get_running_loop()

        def first(data: bytes, binary: bool = False) -> None:
            if not recorder.messages:  # something else due in the same turn: when does it run?
                loop.call_soon(lambda: seen.append(len(recorder.messages)))
            recorder.messages.append((data, binary))
            recorder.arrived.set()

        recorder.receive = first  # type: ignore[method-assign]
        await peer.send(frame(b"{}") * 6000)
        async with asyncio.timeout(10):
            while len(recorder.messages) < 6000:
                recorder.arrived.clear()
                await recorder.arrived.wait()
        assert seen and seen[0] <= wsconn.FRAMES_PER_TURN
        assert recorder.messages == [(b"{}", False)] * 6000  # all of them, in order
