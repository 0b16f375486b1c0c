"""One WebSocket connection after its handshake: a small object over the socket.

The handshake is HTTP and stays Tornado's: a ``RequestHandler`` authenticates it,
checks its origin, sets cookies and answers ``101`` (see
:class:`~jupyter_chat_ext.handlers.SessionSocket`). Then the handler, its request,
headers and cookies are dropped: a connection lives on as a :class:`Connection`, which
holds the stream, a read buffer and its session, and nothing per connection waits in a
coroutine or a timer. Tornado's own ``WebSocketHandler`` keeps the handler, a frame
reader coroutine and a ping task for the connection's whole life (~20 KB each).

What this implements of RFC 6455 (a server's side, no extensions negotiated):
masked client frames (unmasked ones are a protocol error, 1002), text and binary
messages, fragmented ones reassembled up to ``max_size`` (past it: 1009), ping
answered with pong, control frames whole and at most 125 bytes (else 1002), the close
handshake (5 s for the peer to answer before the socket is closed; a peer's close is
answered with its code, or with 1002/1007 if that frame is invalid). Frames a session
queues in one turn of the event loop go out in one write.
Every connection of a loop with the same heartbeat settings shares one
:class:`Heartbeat` timer: a ping every ``interval`` seconds (not to a connection heard
from in the last half interval), and a connection not heard from in
``interval + timeout`` seconds is closed.

Tornado internals relied on (``tests/test_wsconn.py`` checks them against the
installed Tornado): an ``IOStream`` with nothing waiting to be written (``writing()``
is False) may be written to directly with ``write_to_fd``; what the socket does not
take goes to ``IOStream.write``, behind nothing, so the byte order is kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import sys
import time
from collections.abc import Awaitable
from typing import Any, ClassVar, Final, Protocol

from tornado.iostream import IOStream, StreamClosedError
from tornado.util import _websocket_mask

_FIN: Final = 0x80
_RSV: Final = 0x70
_CONTINUATION, _TEXT, _BINARY = 0x0, 0x1, 0x2
_CLOSE, _PING, _PONG = 0x8, 0x9, 0xA
_CONTROL: Final = 0x08  # the opcode bit of control frames (close, ping, pong)
_CONTROL_MAX: Final = 125  # the longest payload of a control frame
READ_CHUNK: Final = 64 * 1024  # the most bytes one read takes from the socket
UNSENT_MAX: Final = 16 * 1024  # bytes a socket may hold unsent in the kernel
# The most frames one connection handles in a turn of the event loop before the others
# get theirs: 64 KiB of tiny frames is ~10,000 of them (~300 ms of refused frames).
FRAMES_PER_TURN: Final = 64
CLOSE_WAIT: Final = 5.0  # seconds a peer has to answer our close before the socket closes
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_BIG: Final = 1009
CLOSE_GOING_AWAY: Final = 1001
CLOSE_INVALID_DATA: Final = 1007
# Codes a peer may send (RFC 6455 7.4, and IANA's 1012-1014); 3000-4999 are applications'.
_PEER_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})

_last: tuple[bytes, bool, bytes] | None = None


def header(payload: bytes, binary: bool = False, opcode: int | None = None) -> bytes:
    """The header of an unmasked, final server frame carrying ``payload``.

    A broadcast hands the same ``payload`` object to every receiver in turn, so the
    last data frame's header is remembered and reused: framed once, not per receiver.
    """
    global _last
    last = _last
    if opcode is None and last is not None and last[0] is payload and last[1] == binary:
        return last[2]
    first = _FIN | (opcode if opcode is not None else _BINARY if binary else _TEXT)
    length = len(payload)
    if length < 126:
        head = bytes((first, length))
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, 126, length)
    else:
        head = struct.pack("!BBQ", first, 127, length)
    if opcode is None:
        _last = (payload, binary, head)
    return head


def close_reply(payload: bytes) -> bytes:
    """The payload that answers a peer's close frame of ``payload``.

    Its code if the frame is valid (RFC 6455 5.5.1, 7.4), else 1002 (a 1-byte
    payload, a code a peer may not send) or 1007 (a reason that is not UTF-8).
    """
    if not payload:
        return b""
    code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 0
    if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        return struct.pack("!H", CLOSE_PROTOCOL_ERROR)
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return struct.pack("!H", CLOSE_INVALID_DATA)
    return payload[:2]


def write(stream: IOStream, data: bytes) -> asyncio.Future[None] | None:
    """Write ``data`` to ``stream``, now as far as the socket takes it.

    Returns None if the socket took it all, else the future of tornado's write of
    the rest (done once that is written too).
    """
    view = memoryview(data)
    if type(stream) is IOStream and not stream.writing() and not stream.closed():
        try:
            sent = stream.write_to_fd(view)
        except OSError:  # would block, or the peer is gone: tornado's write handles both
            sent = 0
        if sent == len(data):
            return None
        view = view[sent:]
    return stream.write(view)


def limit_unsent(sock: socket.socket | None) -> None:
    """Keep at most :data:`UNSENT_MAX` unsent bytes in the kernel for ``sock`` (Linux).

    Otherwise the kernel takes up to its send buffer's maximum (4 MiB by default)
    from a reader that does not keep up, and the session, which counts what is still
    in the process, would see a slow reader only that much later: live values would not
    be conflated, and its backlog would be outside ``max_send_queue``.
    """
    linux = 25 if sys.platform.startswith("linux") else None  # its number there
    option = getattr(socket, "TCP_NOTSENT_LOWAT", linux)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # an older kernel: its default
        sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_MAX)


class Handler(Protocol):
    """What a connection hands its messages to (a :class:`~.session.Session`)."""

    def receive(self, data: bytes, binary: bool = False) -> Awaitable[None] | None:
        """A whole message; an awaitable holds back the next one until it is done."""

    def flushed(self, size: int) -> None:
        """``size`` bytes of queued messages were written to the socket."""

    def close(self) -> None:
        """The connection ended (by either side); called once."""


# Connections with frames queued, per event loop, flushed at the end of the turn in
# which they were queued, at most FLUSH_CHUNK of them per turn (in order): a frame for
# every member of a room of 10,000 is that many send() calls, and other work (joins,
# messages) goes on between the chunks.
FLUSH_CHUNK: Final = 1_000
_dirty: dict[asyncio.AbstractEventLoop, collections.deque[Connection]] = {}


def _flush_soon(connection: Connection) -> None:
    loop = asyncio.get_running_loop()
    connections = _dirty.get(loop)
    if connections is None:
        connections = _dirty[loop] = collections.deque()
        loop.call_soon(_flush_all, loop)
    connections.append(connection)


def _flush_all(loop: asyncio.AbstractEventLoop) -> None:
    connections = _dirty[loop]
    for _ in range(min(len(connections), FLUSH_CHUNK)):
        connections.popleft().flush()
    if connections:
        loop.call_soon(_flush_all, loop)
    else:
        del _dirty[loop]


class Connection:
    """A server-side WebSocket over a tornado ``IOStream``, after the handshake."""

    __slots__ = (
        "_buf",
        "_busy",
        "_closing",
        "_ended",
        "_handler",
        "_heartbeat",
        "_max_size",
        "_message",
        "_message_binary",
        "_out",
        "_out_size",
        "_ponged",
        "_stream",
        "heard",
    )

    _handler: Handler

    def __init__(self, stream: IOStream, max_size: int, heartbeat: Heartbeat) -> None:
        self._stream = stream
        self._max_size = max_size
        self._heartbeat = heartbeat
        self._buf = bytearray()
        self._message: bytearray | None = None  # a fragmented message being assembled
        self._message_binary = False
        self._out: list[bytes] = []
        self._out_size = 0  # bytes of the handler's messages in _out
        self._busy = False  # the handler is working on a message: read no further
        self._ponged = False  # a pong is queued in this turn of the loop
        self._closing = False
        self._ended = False
        self.heard = time.monotonic()  # when the peer last sent anything

    def start(self, handler: Handler) -> None:
        """Hand messages to ``handler`` from now on; take part in the heartbeat."""
        self._handler = handler
        # Frames are coalesced here, one write per loop turn: Nagle's algorithm would
        # only hold a small answer back until the peer's delayed ACK (up to 40 ms).
        self._stream.set_nodelay(True)
        limit_unsent(self._stream.socket)
        self._stream.set_close_callback(self._end)
        self._heartbeat.add(self)
        self._read()

    # ------------------------------------------------------------------ writing

    @property
    def open(self) -> bool:
        """True until a close began (by either side) or the socket closed."""
        return not (self._closing or self._ended)

    def send(self, frame: bytes, binary: bool = False) -> bool:
        """Queue a message; False if the connection is closing or closed.

        Messages queued in one turn of the event loop are written together, with one
        system call, at the end of the turn; the handler's ``flushed`` says when.
        """
        if self._closing or self._ended:
            return False
        self._queue(header(frame, binary), frame)
        self._out_size += len(frame)
        return True

    def _queue(self, head: bytes, payload: bytes) -> None:
        if not self._out:
            _flush_soon(self)
        self._out += (head, payload)

    def _control(self, opcode: int, payload: bytes) -> None:
        if not self._ended:
            self._queue(header(payload, opcode=opcode), payload)

    def flush(self) -> None:
        """Write what is queued now (the end of a loop turn, or before a close)."""
        out, self._out = self._out, []
        size, self._out_size = self._out_size, 0
        self._ponged = False
        if not out or self._ended:
            return
        try:
            rest = write(self._stream, b"".join(out))
        except StreamClosedError:
            return  # _end runs (the stream's close callback)
        if rest is None:
            if size:
                self._handler.flushed(size)
        elif size:
            rest.add_done_callback(lambda f: self._written(f, size))

    def _written(self, future: asyncio.Future[Any], size: int) -> None:
        if not future.cancelled() and future.exception() is None:
            self._handler.flushed(size)

    def ping(self) -> None:
        """Send a ping (the heartbeat does, to every connection)."""
        self._control(_PING, b"")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake: what is queued goes first, then the close frame.

        The peer has :data:`CLOSE_WAIT` seconds to answer before the socket is closed.
        The handler's ``ended`` is called soon, not after the handshake: the user leaves
        the rooms now.
        """
        if self._closing or self._ended:
            return
        self._closing = True
        payload = struct.pack("!H", code) + reason.encode()[:123]
        self._control(_CLOSE, payload)
        self.flush()
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_WAIT, self.abort)
        loop.call_soon(self._end)

    def abort(self) -> None:
        """Close the socket now (a peer that does not answer, or after the handshake)."""
        self._stream.close()
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._out.clear()
        self._heartbeat.discard(self)
        self._handler.close()

    # ------------------------------------------------------------------ reading

    def _read(self) -> None:
        """Read more from the socket (until it closes: a closing peer still answers)."""
        if self._stream.closed():
            self._end()
            return
        try:
            future = self._stream.read_bytes(READ_CHUNK, partial=True)
        except StreamClosedError:
            self._end()
            return
        asyncio.ensure_future(future).add_done_callback(self._on_read)

    def _on_read(self, future: asyncio.Future[bytes]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._stream.close()
            self._end()
            return
        self._buf += future.result()
        self.heard = time.monotonic()
        self._parse()

    def _resume(self, task: asyncio.Future[None]) -> None:
        self._busy = False
        if not task.cancelled():
            task.exception()  # the handler's work reports its own errors; do not warn here
        self._parse()

    def _parse(self) -> None:
        """Handle the whole frames in the buffer, then read more (unless busy).

        At most :data:`FRAMES_PER_TURN` in this turn of the loop: the rest wait for the
        next (and nothing more is read meanwhile), so a peer that floods tiny frames
        never holds the loop for long.
        """
        buf = self._buf
        pos = 0
        handled = 0
        more = False
        while not self._busy and not self._stream.closed():
            if handled == FRAMES_PER_TURN:
                more = True
                break
            frame = self._frame(buf, pos)
            if frame is None:
                break
            pos, first, payload = frame
            self._handle(first, payload)
            handled += 1
        if pos == len(buf):
            self._buf = bytearray()  # an idle connection holds no big buffer
        else:
            del buf[:pos]
        if more:
            asyncio.get_running_loop().call_soon(self._parse)
        elif not self._busy:
            self._read()

    def _frame(self, buf: bytearray, pos: int) -> tuple[int, int, bytes] | None:
        """The frame at ``pos`` (its end, first byte, unmasked payload), or None if partial."""
        available = len(buf) - pos
        if available < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        length = second & 0x7F
        start = pos + 2
        if length == 126:
            if available < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, start)
            start += 2
        elif length == 127:
            if available < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, start)
            start += 8
        if not second & 0x80:
            self._fail(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            return None
        if first & _RSV:
            self._fail(CLOSE_PROTOCOL_ERROR, "no extension was negotiated")
            return None
        if first & _CONTROL:
            # RFC 6455 5.5: whole and short. A ping's payload is echoed in the pong: a
            # long one would be a second buffer of up to max_size held per connection.
            if length > _CONTROL_MAX or not first & _FIN:
                self._fail(CLOSE_PROTOCOL_ERROR, "control frames are whole and short")
                return None
            held = 0
        else:
            held = len(self._message) if self._message is not None else 0
        if length + held > self._max_size:
            self._fail(CLOSE_TOO_BIG, "message too big")
            return None
        end = start + 4 + length
        if len(buf) < end:
            return None
        mask = bytes(buf[start : start + 4])
        payload = _websocket_mask(mask, bytes(buf[start + 4 : end])) if length else b""
        return end, first, payload

    def _handle(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == _PING:
            # Answered only while nothing waits to be written: a peer that pings and
            # never reads must not pile pongs up in the server's memory.
            if not self._stream.writing() and not self._ponged:
                self._ponged = True
                self._control(_PONG, payload)
        elif opcode == _PONG:
            pass
        elif opcode == _CLOSE:
            if not self._closing:  # answer the peer's close with its code
                self._closing = True
                self._control(_CLOSE, close_reply(payload))
                self.flush()
            self._stream.close()
            self._end()
        elif opcode in (_TEXT, _BINARY):
            if self._message is not None:
                self._fail(CLOSE_PROTOCOL_ERROR, "a new message began inside a fragmented one")
            elif first & _FIN:
                self._deliver(payload, opcode == _BINARY)
            else:
                self._message, self._message_binary = bytearray(payload), opcode == _BINARY
        elif opcode == _CONTINUATION and self._message is not None:
            self._message += payload
            if first & _FIN:
                message, self._message = bytes(self._message), None
                self._deliver(message, self._message_binary)
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "unknown opcode or stray continuation")

    def _deliver(self, data: bytes, binary: bool) -> None:
        if self._closing:
            return  # a close began: what the peer sent after it is not handled
        work = self._handler.receive(data, binary)
        if work is not None:
            self._busy = True
            asyncio.ensure_future(work).add_done_callback(self._resume)

    def _fail(self, code: int, reason: str) -> None:
        self.close(code, reason)
        self._busy = True  # read nothing more


class Heartbeat:
    """One timer for every connection of a loop with these settings: ping, drop the silent."""

    _all: ClassVar[dict[tuple[asyncio.AbstractEventLoop, float, float], Heartbeat]] = {}

    @classmethod
    def of(cls, interval: float, timeout: float) -> Heartbeat:
        """The heartbeat of the running loop for ``interval`` and ``timeout`` seconds."""
        key = (asyncio.get_running_loop(), interval, timeout)
        beat = cls._all.get(key)
        if beat is None:
            beat = cls._all[key] = cls(key)
        return beat

    def __init__(self, key: tuple[asyncio.AbstractEventLoop, float, float]) -> None:
        self._key = key
        _, self.interval, self.timeout = key
        self._connections: dict[Connection, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: Connection) -> None:
        """Ping ``connection`` from now on (if the interval is not 0)."""
        if self.interval <= 0:
            return
        self._connections[connection] = None
        if self._timer is None:
            Heartbeat._all.setdefault(self._key, self)
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._beat)

    def discard(self, connection: Connection) -> None:
        """Stop pinging ``connection`` (it closed)."""
        self._connections.pop(connection, None)
        if not self._connections:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if Heartbeat._all.get(self._key) is self:
                del Heartbeat._all[self._key]

    def _beat(self) -> None:
        """Close the connections not heard from in ``interval + timeout``; ping the rest."""
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._beat)
        now = time.monotonic()
        silent_since = now - self.interval - self.timeout
        for connection in list(self._connections):
            if connection.heard < silent_since:
                connection.abort()
            elif connection.heard < now - self.interval / 2:  # else it spoke just now
                connection.ping()
