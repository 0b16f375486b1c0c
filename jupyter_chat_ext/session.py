"""One client connection's state: its user, joined rooms and rate limits.

Hosts (the server extension's handler, the JupyterHub service) create a
:class:`Session` per authenticated WebSocket, feed it raw frames with
:meth:`Session.receive`, and call :meth:`Session.close` when the socket closes.
The session never trusts the client about who it is: every event it emits is
stamped with the user the host authenticated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .protocol import (
    PROTOCOL_VERSION,
    Data,
    Error,
    Hello,
    HistoryPage,
    HistoryRequest,
    Join,
    Leave,
    Left,
    Limits,
    ProtocolError,
    Send,
    Typing,
    User,
    decode,
    encode,
)
from .rooms import Room, RoomRegistry

log = logging.getLogger(__name__)


class TokenBucket:
    """A token-bucket rate limiter: ``rate`` tokens per second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> float:
        """Take one token; return 0 on success, else the seconds to wait for one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate if self.rate > 0 else float("inf")


class Session:
    """The core's view of one connection."""

    def __init__(self, registry: RoomRegistry, user: User, write: Callable[[bytes], None]) -> None:
        self.registry = registry
        self.user = user
        self._write = write
        self.rooms: dict[str, Room] = {}
        settings = registry.settings
        self._messages = TokenBucket(settings.message_rate_limit, settings.message_burst)
        self._data = TokenBucket(settings.data_rate_limit, settings.data_burst)
        self.closed = False
        self._tasks: set[asyncio.Future[None]] = set()

    def write(self, frame: bytes) -> None:
        """Send an encoded frame to this connection (see :class:`rooms.Member`)."""
        if not self.closed:
            self._write(frame)

    def hello(self) -> bytes:
        """The encoded ``hello`` frame that opens the conversation."""
        s = self.registry.settings
        limits = Limits(
            max_message_size=s.max_message_size,
            max_value_size=s.max_value_size,
            message_rate=s.message_rate_limit,
            message_burst=s.message_burst,
            data_rate=s.data_rate_limit,
            data_burst=s.data_burst,
            history_page_size=s.history_page_size,
            typing_timeout=s.typing_timeout,
        )
        return encode(Hello(protocol=PROTOCOL_VERSION, user=self.user, limits=limits))

    def receive(self, data: bytes | str, binary: bool = False) -> Awaitable[None] | None:
        """Handle one raw frame; any problem is answered with an ``error`` frame.

        Returns an awaitable when the frame needs I/O before the next frame of this
        connection may be handled (``join``, ``history``); the host awaits it. Sends
        are stored concurrently (in order), so a connection can stream messages
        without waiting for each acknowledgement.
        """
        try:
            if binary:
                raise ProtocolError(
                    "binary_not_supported",
                    "binary frames are not part of protocol v1; send JSON text frames",
                )
            frame = decode(data)
            if isinstance(frame, Send):
                room = self._room(frame.room, frame.id)
                self._limit(self._messages, "messages", frame.id, frame.room)
                task = asyncio.ensure_future(self._guard(room.post(self, frame.id, frame.body)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(frame, Data):
                room = self._room(frame.room)
                self._limit(self._data, "values", None, frame.room)
                room.publish(self, frame.topic, bytes(frame.value))
            elif isinstance(frame, Typing):
                self._room(frame.room).set_typing(self.user, frame.active)
            elif isinstance(frame, Leave):
                room = self._room(frame.room, frame.id)
                del self.rooms[frame.room]
                room.leave(self)
                self.write(encode(Left(room=frame.room, id=frame.id)))
            elif isinstance(frame, Join):
                return self._guard(self._join(frame))
            else:
                return self._guard(self._page(frame))
        except ProtocolError as exc:
            self.write(encode(exc.to_frame()))
        except Exception:
            self._internal_error()
        return None

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except ProtocolError as exc:
            self.write(encode(exc.to_frame()))
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        log.exception("chat: unexpected error handling a frame from %s", self.user.username)
        self.write(encode(Error(code="internal", message="the server failed on this frame; retry")))

    async def _join(self, frame: Join) -> None:
        room = await self.registry.get(frame.room)
        joined = await room.join(self, frame.since, frame.id)
        if self.closed:
            room.leave(self)
            return
        self.rooms[frame.room] = room
        self.write(encode(joined))

    async def _page(self, frame: HistoryRequest) -> None:
        room = self._room(frame.room, frame.id)
        limit = frame.limit or self.registry.settings.history_page_size
        messages = await room.page(frame.before, limit)
        self.write(encode(HistoryPage(room=frame.room, id=frame.id, messages=messages)))

    def _room(self, name: str, frame_id: str | None = None) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise ProtocolError(
                "not_joined",
                f"you have not joined room {name!r}; send a `join` frame first",
                id=frame_id,
                room=name,
            )
        return room

    def _limit(self, bucket: TokenBucket, what: str, frame_id: str | None, room: str) -> None:
        wait = bucket.take()
        if wait:
            raise ProtocolError(
                "rate_limited",
                f"too many {what}: at most {bucket.rate:g}/s (bursts of {bucket.burst}); "
                f"retry after {wait:.3f} s",
                id=frame_id,
                room=room,
                retry_after=round(wait, 3),
            )

    def close(self) -> None:
        """Leave every room; called once when the connection ends."""
        self.closed = True
        rooms, self.rooms = self.rooms, {}
        for room in rooms.values():
            room.leave(self)
