"""Rooms and the room registry: membership, presence, typing, live values and fan-out.

A :class:`Room` exists in memory while someone is in it (and for a grace period
after); its messages live in a :class:`~jupyter_chat_ext.history.HistoryStore`.
Every broadcast is encoded once and the same bytes are handed to each member.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from . import protocol
from .history import Entry, HistoryStore
from .protocol import (
    Access,
    DataEvent,
    Joined,
    Message,
    Presence,
    ProtocolError,
    Since,
    TypingEvent,
    User,
    encode,
)

SERIES_VALUE_MAX = 1024  # only values this small (in JSON bytes) are kept in a series


@dataclass(frozen=True)
class ChatSettings:
    """The limits and timings the core enforces.

    Each field is also a config trait of the same name on the hosts (see
    docs/configuration.md), which build this from their traits.
    """

    history_on_join: int = 100
    history_page_size: int = 100
    max_replay: int = 10_000
    max_message_size: int = 16_384
    max_value_size: int = 1_048_576
    message_rate_limit: float = 100.0
    message_burst: int = 1_000
    data_rate_limit: float = 2_000.0
    data_burst: int = 2_000
    typing_timeout: float = 5.0
    room_idle_timeout: float = 60.0
    max_send_queue: int = 4 * 1024 * 1024
    max_connections_per_user: int = 20
    max_rooms_per_connection: int = 100
    max_room_name: int = 200
    series_length: int = 100


class Member(Protocol):
    """What a room needs from a connection: who it is and how to send it bytes."""

    user: User

    def write(self, frame: bytes, key: Hashable | None = None, binary: bool = False) -> None:
        """Queue an encoded frame (a binary one if ``binary``); must not block or raise.

        ``key`` marks an ephemeral frame (typing, a live value) that a later frame
        with the same key supersedes, so a slow connection may skip it.
        """

    def evicted(self, room: Room) -> None:
        """The connection was removed from ``room`` (its user lost access)."""


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


class Room:
    """One room: its members, typing state, latest values and recent messages."""

    def __init__(
        self,
        name: str,
        epoch: str,
        seq: int,
        recent: Iterable[Message],
        store: HistoryStore,
        settings: ChatSettings,
        on_empty: Callable[[Room], None],
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.seq = seq
        self._store = store
        self._settings = settings
        self._on_empty = on_empty
        self._recent: deque[Message] = deque(recent, maxlen=max(settings.history_on_join, 1000))
        self._members: dict[str, tuple[User, set[Member]]] = {}
        # topic -> (latest event, its binary frame if it travelled as one)
        self._values: dict[str, tuple[DataEvent, bytes | None]] = {}
        self._series: dict[str, deque[tuple[float, msgspec.Raw]]] = {}
        self._typing: dict[str, asyncio.TimerHandle] = {}
        self.joining = 0
        self.access: Access | None = None  # None: public

    @property
    def members(self) -> list[User]:
        """Users in the room now, each once however many connections they have."""
        return [user for user, _ in self._members.values()]

    def allows(self, username: str) -> bool:
        """True if ``username`` may join and read this room."""
        return self.access is None or username in self.access.members

    def set_access(self, access: Access) -> list[str]:
        """Change who may use the room; evict and return the members who lost access."""
        self.access = access
        gone = [name for name in self._members if name not in access.members]
        for username in gone:
            for connection in list(self._members[username][1]):
                connection.evicted(self)
                self.leave(connection)
        self.broadcast(encode(access))
        return gone

    def is_empty(self) -> bool:
        """True when no connection is in the room and none is joining."""
        return not self._members and not self.joining

    def broadcast(
        self,
        frame: bytes,
        exclude: Member | None = None,
        key: Hashable | None = None,
        binary: bool = False,
    ) -> None:
        """Send the same encoded frame to every member connection except ``exclude``."""
        for _, connections in self._members.values():
            for connection in connections:
                if connection is not exclude:
                    connection.write(frame, key, binary)

    async def _history_since(self, since: Since | None) -> tuple[list[Message], bool, int]:
        """Return (messages, whether they are the whole gap after ``since``, start).

        The messages are every message with a seq above ``start`` that was committed
        when the read began, possibly a few more.
        """
        settings = self._settings
        if (
            since is not None
            and since.epoch == self.epoch
            and 0 <= since.seq <= self.seq
            and self.seq - since.seq <= settings.max_replay
        ):
            oldest = self._recent[0].seq if self._recent else self.seq + 1
            if since.seq + 1 >= oldest:
                return [m for m in self._recent if m.seq > since.seq], True, since.seq
            gap = await self._store.fetch(self.name, after=since.seq, limit=settings.max_replay)
            return gap, True, since.seq
        want = settings.history_on_join
        start = max(0, self.seq - want)
        cached = [m for m in self._recent if m.seq > start]
        if len(cached) == self.seq - start:
            return cached, False, start
        return await self._store.fetch(self.name, after=start, limit=want), False, start

    async def join(
        self, member: Member, since: Since | None, frame_id: str | None
    ) -> tuple[Joined, list[bytes]]:
        """Add ``member``, announce them if new; return ``joined`` and binary values to follow."""
        self.joining += 1
        try:
            history, recovered, start = await self._history_since(since)
        except BaseException:
            self.joining -= 1
            if self.is_empty():
                self._on_empty(self)
            raise
        self.joining -= 1
        # From here to the return nothing awaits, so no message can slip between the
        # history and the broadcasts the member receives from now on.
        last = history[-1].seq if history else start
        history = history + [m for m in self._recent if m.seq > last]
        if recovered and (history[-1].seq if history else start) - start != len(history):
            # The gap could not be read whole (it grew past the cache during the read):
            # say so rather than hand out a partial gap.
            recovered = False
            history = list(self._recent)[-self._settings.history_on_join :]
        values, frames = self._snapshot_values()
        username = member.user.username
        if username in self._members:
            self._members[username][1].add(member)
        else:
            person = member.user.person()
            self.broadcast(encode(Presence(room=self.name, joined=person)))
            self._members[username] = (person, {member})
        return Joined(
            room=self.name,
            epoch=self.epoch,
            seq=self.seq,
            members=self.members,
            history=history,
            values=values,
            recovered=recovered,
            id=frame_id,
            following=len(frames),
            access=self.access,
        ), frames

    def leave(self, member: Member) -> None:
        """Remove one connection; announce the user's departure with their last one."""
        username = member.user.username
        entry = self._members.get(username)
        if entry is None or member not in entry[1]:
            return
        entry[1].discard(member)
        if not entry[1]:
            del self._members[username]
            self.set_typing(member.user, False)
            self.broadcast(encode(Presence(room=self.name, left=member.user.person())))
        if self.is_empty():
            self._on_empty(self)

    async def post(self, member: Member, message_id: str, body: str) -> None:
        """Store a message, then send it to everyone (its copy to the sender is the ack)."""
        size = len(body.encode())
        if size > self._settings.max_message_size:
            raise ProtocolError(
                "message_too_large",
                f"message is {size} bytes; the limit is {self._settings.max_message_size}. "
                "Split it or share a file instead.",
                id=message_id,
                room=self.name,
            )
        entry = Entry(self.name, message_id, member.user, time.time(), body)
        try:
            appended = await self._store.append(entry)
        except Exception as exc:
            raise ProtocolError(
                "internal",
                f"the message was not saved ({type(exc).__name__}); send it again",
                id=message_id,
                room=self.name,
            ) from exc
        message = appended.message
        if appended.duplicate:
            member.write(encode(message))
            return
        self.seq = max(self.seq, message.seq)
        self._recent.append(message)
        self.set_typing(member.user, False)
        self.broadcast(encode(message))

    def publish(
        self,
        member: Member,
        topic: str,
        value: bytes,
        value_id: str | None = None,
        buffers: list[int] | None = None,
        payload: memoryview | None = None,
    ) -> None:
        """Record the latest value of ``topic`` and send it to everyone in the room.

        With ``buffers`` the value travels as a binary frame (arrays, tables): the
        same header-plus-buffers layout goes out, stamped with sender and time.
        """
        size = len(value) + (len(payload) if payload is not None else 0)
        if size > self._settings.max_value_size:
            raise ProtocolError(
                "value_too_large",
                f"value on {topic!r} is {size} bytes; the limit is "
                f"{self._settings.max_value_size}. Publish a smaller or downsampled value.",
                room=self.name,
            )
        event = DataEvent(
            room=self.name,
            topic=topic,
            value=msgspec.Raw(value),
            user=member.user,
            ts=time.time(),
            id=value_id,
            buffers=buffers,
        )
        series = self._series.get(topic)
        if buffers is None:
            frame = encode(event)
            self._values[topic] = (event, None)
            if len(value) <= SERIES_VALUE_MAX:
                if series is None:
                    series = self._series[topic] = deque(maxlen=self._settings.series_length)
                series.append((event.ts, event.value))
        else:
            frame = protocol.pack_binary(encode(event), [payload if payload is not None else b""])
            self._values[topic] = (event, frame)
            self._series.pop(topic, None)
        self.broadcast(frame, key=("data", self.name, topic), binary=buffers is not None)

    def _snapshot_values(self) -> tuple[dict[str, DataEvent], list[bytes]]:
        """The latest JSON values (with their series) and the latest binary frames."""
        values: dict[str, DataEvent] = {}
        frames: list[bytes] = []
        for topic, (event, frame) in self._values.items():
            if frame is not None:
                frames.append(frame)
            else:
                series = self._series.get(topic)
                values[topic] = msgspec.structs.replace(
                    event, series=list(series) if series else None
                )
        return values, frames

    def set_typing(self, user: User, active: bool) -> None:
        """Start (or refresh) or stop ``user``'s typing indicator; it expires by itself."""
        timer = self._typing.pop(user.username, None)
        if timer is not None:
            timer.cancel()
        if active:
            self._typing[user.username] = asyncio.get_running_loop().call_later(
                self._settings.typing_timeout, self.set_typing, user, False
            )
        if active != (timer is not None):
            exclude = self._members.get(user.username, (None, set()))[1]
            frame = encode(TypingEvent(room=self.name, user=user, active=active))
            key = ("typing", self.name, user.username)
            for _, connections in self._members.values():
                if connections is not exclude:
                    for connection in connections:
                        connection.write(frame, key)

    async def page(self, before: int, limit: int) -> list[Message]:
        """Return up to ``limit`` messages older than ``before`` (for "load earlier")."""
        limit = min(limit, self._settings.history_page_size)
        cached = [m for m in self._recent if m.seq < before]
        if len(cached) >= limit or (cached and cached[0].seq == 1):
            return cached[-limit:]
        return await self._store.fetch(self.name, before=before, limit=limit)

    def close(self) -> None:
        """Cancel timers; called when the room is unloaded."""
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()


class RoomRegistry:
    """All loaded rooms: loads a room on first join, unloads it once idle."""

    def __init__(self, store: HistoryStore, settings: ChatSettings) -> None:
        self.store = store
        self.settings = settings
        self._rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._unload_timers: dict[str, asyncio.TimerHandle] = {}
        self._connections: dict[str, set[Member]] = {}
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def attach(self, connection: Member) -> None:
        """Count a new connection of its user; refuse it past the per-user limit."""
        username = connection.user.username
        connections = self._connections.setdefault(username, set())
        limit = self.settings.max_connections_per_user
        if len(connections) >= limit:
            raise ProtocolError(
                "too_many_connections",
                f"{username} already has {limit} chat connections open on this server; "
                "close some tabs or kernels, then reconnect",
            )
        connections.add(connection)

    def detach(self, connection: Member) -> None:
        """Forget a closed connection."""
        connections = self._connections.get(connection.user.username)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._connections[connection.user.username]

    def buckets(self, username: str) -> tuple[TokenBucket, TokenBucket]:
        """The (messages, values) rate limiters shared by all of a user's connections."""
        if username not in self._buckets:
            s = self.settings
            self._buckets[username] = (
                TokenBucket(s.message_rate_limit, s.message_burst),
                TokenBucket(s.data_rate_limit, s.data_burst),
            )
        return self._buckets[username]

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    async def get(self, name: str) -> Room:
        """Return the room called ``name``, loading (or creating) it if needed."""
        timer = self._unload_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        room = self._rooms.get(name)
        if room is not None:
            return room
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
        return await asyncio.shield(loading)

    async def _load(self, name: str) -> Room:
        try:
            log = await self.store.open_room(name, max(self.settings.history_on_join, 1000))
            room = Room(
                name, log.epoch, log.seq, log.recent, self.store, self.settings, self._room_empty
            )
            pair = protocol.direct_members(name)
            if pair is not None:
                room.access = Access(room=name, members=pair)
            elif (stored := await self.store.get_access(name)) is not None:
                room.access = Access(room=name, owner=stored[0], members=stored[1])
            self._rooms[name] = room
            return room
        finally:
            del self._loading[name]

    def _room_empty(self, room: Room) -> None:
        if room.name in self._unload_timers:
            return
        self._unload_timers[room.name] = asyncio.get_running_loop().call_later(
            self.settings.room_idle_timeout, self._unload, room.name
        )

    def _unload(self, name: str) -> None:
        self._unload_timers.pop(name, None)
        room = self._rooms.get(name)
        if room is not None and room.is_empty():
            room.close()
            del self._rooms[name]

    async def close(self) -> None:
        """Unload every room and close the history store."""
        for timer in self._unload_timers.values():
            timer.cancel()
        self._unload_timers.clear()
        for room in self._rooms.values():
            room.close()
        self._rooms.clear()
        await self.store.close()
