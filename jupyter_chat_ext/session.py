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
from collections.abc import Awaitable, Hashable
from typing import Final, Protocol

from typing_extensions import assert_never

from . import attachments, restore, search
from .access import Action, check_members, refusal, require, room_access
from .history import Appended, StoreUnavailable
from .limits import TokenBucket
from .protocol import (
    DIRECT_PREFIX,
    PROTOCOL_VERSION,
    Access,
    AccessChange,
    AttachmentRequest,
    Data,
    Delete,
    Edit,
    Error,
    Hello,
    HistoryPage,
    HistoryRequest,
    Import,
    Join,
    Leave,
    Left,
    Limits,
    MarkRead,
    MembersPage,
    MembersRequest,
    Mentions,
    Message,
    ProtocolError,
    React,
    ReadMarker,
    Search,
    Send,
    Typing,
    Unreact,
    User,
    decode,
    decode_binary,
    direct_members,
    encode,
)
from .rooms import Room, RoomRegistry

log = logging.getLogger(__name__)

CLOSE_IDENTITY_EXPIRED: Final = 4001  # a delegation expired: reconnect with a new one
CLOSE_SLOW_READER: Final = 4008
CLOSE_TOO_MANY_CONNECTIONS: Final = 4029
MENTIONS_ON_CONNECT: Final = 100  # unread mentions sent after hello, newest first
MENTIONS_PER_ROOM: Final = 20  # of them from one room at most
MENTIONS_READ: Final = 1000  # unread mentions read from the store to choose them from
CONFLATE_ABOVE: Final = 64 * 1024  # queued bytes past which typing and values are conflated


class Transport(Protocol):
    """What a host gives a session: a way to send frames and to close the connection."""

    def send(self, frame: bytes, binary: bool = False) -> bool:
        """Queue a frame; False if the connection is closed.

        Once queued bytes are written to the socket the transport calls the session's
        :meth:`Session.flushed` with their count.
        """

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""


class Session:
    """The core's view of one connection.

    Outgoing frames are counted until the transport has flushed them. Past
    ``max_send_queue`` bytes the reader is too slow: the connection is closed with
    :data:`CLOSE_SLOW_READER`, so that memory stays bounded and nobody else waits.
    Past 64 KiB (or a quarter of the bound, if smaller), typing events and live
    values are conflated (only the latest per user or topic is kept and sent once
    the queue drains); chat messages are never dropped from a connection that
    stays open.
    """

    def __init__(
        self,
        registry: RoomRegistry,
        user: User,
        transport: Transport,
        moderator: bool = False,
        expires_at: float | None = None,
    ) -> None:
        """``expires_at``: when the identity ends (a delegation's, seconds since the epoch).

        The connection is closed then with :data:`CLOSE_IDENTITY_EXPIRED`, and no frame
        that arrives after it is handled.
        """
        self.registry = registry
        self._expires_at = expires_at
        self._expiry: asyncio.TimerHandle | None = None
        self._counted = False  # in registry.memory's count of connections
        self.user = user.bounded()  # stamped on every frame it sends: keep it small
        # May delete anyone's message: a Hub admin (the host says), or named in settings.
        self.moderator = moderator or user.username in registry.settings.moderators
        self._transport = transport
        self.rooms: dict[str, Room] = {}
        self.closed = False
        self._ending = False
        self.queued_bytes = 0
        self._max_queue = registry.settings.max_send_queue
        # Stale live values are worth nothing: hold back only a little before conflating.
        self._conflate_above = min(self._max_queue // 4, CONFLATE_ABOVE)
        self._conflated: dict[Hashable, tuple[bytes, bool]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._buckets = registry.limits.buckets(user.username)

    def write(self, frame: bytes, key: Hashable | None = None, binary: bool = False) -> None:
        """Send an encoded frame; ``key`` marks a frame that a newer one may replace."""
        if self._ending:
            return
        if key is not None:
            if self._conflated or self.queued_bytes > self._conflate_above:
                self._conflated.pop(key, None)  # keep the newest last
                self._conflated[key] = (frame, binary)
            else:
                self._send(frame, binary)
            return
        size = len(frame)
        # One frame always fits a nearly empty queue (a `joined` may be bigger than the
        # bound; the few bytes of `hello` may not be flushed yet).
        if self.queued_bytes > self._conflate_above and self.queued_bytes + size > self._max_queue:
            log.warning(
                "chat: closing %s's connection: %d bytes unread (limit %d)",
                self.user.username,
                self.queued_bytes + size,
                self._max_queue,
            )
            self._transport.close(
                CLOSE_SLOW_READER,
                "slow reader: too much unread data; reconnect to resume where you left off",
            )
            self._end_soon()
            return
        self._send(frame, binary)

    def _send(self, frame: bytes, binary: bool) -> None:
        if not self._transport.send(frame, binary):
            self._end_soon()
            return
        self.queued_bytes += len(frame)

    def _end_soon(self) -> None:
        # Writes happen in the middle of broadcasts: leaving the rooms right now would
        # change their member sets under the loop that is iterating over them.
        self._ending = True
        asyncio.get_running_loop().call_soon(self.close)

    def flushed(self, size: int) -> None:
        """The transport wrote ``size`` queued bytes to the socket."""
        self.queued_bytes -= size
        # Held values go out one at a time while the queue is short: however many and
        # however big (a join's arrays and tables), they never make a reader "slow".
        while self._conflated and self.queued_bytes <= self._conflate_above and not self._ending:
            key = next(iter(self._conflated))
            self._send(*self._conflated.pop(key))

    def open(self) -> None:
        """Greet the client with ``hello``, or refuse it if its user has too many connections.

        Does nothing once the session is closed: a socket may end before the session
        opens (the peer reset it while the ``101`` was written), and a session opened
        after its close would hold a connection slot of its user's for good.
        """
        if self.closed:
            return
        try:
            self.registry.limits.attach(self.user.username, self)
        except ProtocolError as exc:
            self.write(encode(exc.to_frame()))
            self._transport.close(CLOSE_TOO_MANY_CONNECTIONS, exc.message[:120])
            self.close()
            return
        self._counted = True
        self.registry.memory.opened()
        s = self.registry.settings
        limits = Limits(
            max_message_size=s.max_message_size,
            max_value_size=s.max_value_size,
            message_rate=s.message_rate_limit,
            message_burst=s.message_burst,
            data_rate=s.data_rate_limit,
            data_burst=s.data_burst,
            history_page_size=s.history_page_size,
            room_name_max=s.max_room_name,
            max_rooms_per_connection=s.max_rooms_per_connection,
            typing_timeout=s.typing_timeout,
            max_attachment_size=s.max_attachment_size,
            max_preview_size=s.max_preview_size,
        )
        hello = Hello(
            protocol=PROTOCOL_VERSION, user=self.user, limits=limits, moderator=self.moderator
        )
        self.write(encode(hello))
        self._spawn(self._send_mentions(), None)
        if self._expires_at is not None:
            delay = max(0.0, self._expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """The identity expired: close, saying so (the client reconnects and re-authenticates)."""
        self._expiry = None
        if not self.closed:
            self._transport.close(
                CLOSE_IDENTITY_EXPIRED,
                "delegation expired: reconnect with a renewed one (show the Chat widget again)",
            )
            self.close()

    def receive(self, data: bytes | str, binary: bool = False) -> Awaitable[None] | None:
        """Handle one raw frame; any problem is answered with an ``error`` frame.

        Returns an awaitable when the frame needs I/O before the next frame of this
        connection may be handled (``join``, ``history``); the host awaits it. Sends
        are stored concurrently (in order), so a connection can stream messages
        without waiting for each acknowledgement.
        """
        if self._expires_at is not None and time.time() >= self._expires_at:
            self._expire()  # even if the timer has not fired yet
            return None
        try:
            if binary:
                assert isinstance(data, bytes)
                self._publish_binary(data)
                return None
            frame = decode(data, self.registry.settings.max_room_name)
            match frame:
                case Send():
                    room = self._room(frame.room, frame.id, Action.POST)
                    self._limit(self._buckets.messages, "messages", frame.id, frame.room)
                    self._spawn(self._post(room, frame), frame.id)
                case Edit() | Delete() | React() | Unreact():
                    room = self._room(frame.room, frame.id, Action.POST)
                    self._limit(self._buckets.messages, "messages", frame.id, frame.room)
                    self._spawn(self._change(room, frame), frame.id)
                case Data():
                    if frame.buffers is not None:
                        raise ProtocolError(
                            "invalid_field",
                            "`buffers` belongs in binary frames only",
                            room=frame.room,
                        )
                    room = self._room(frame.room, None, Action.PUBLISH)
                    self._limit(self._buckets.values, "values", None, frame.room)
                    room.publish(self, frame.topic, bytes(frame.value), frame.id)
                case Typing():
                    room = self._room(frame.room, None, Action.TYPE)
                    self._limit(self._buckets.typing, "typing events", None, frame.room)
                    room.roster.set_typing(self.user, frame.active)
                case Leave():
                    room = self._room(frame.room, frame.id, None)
                    del self.rooms[frame.room]
                    room.leave(self)
                    self.write(encode(Left(room=frame.room, id=frame.id)))
                case Join():
                    return self._guard(self._join(frame), frame.id)
                case AccessChange():
                    return self._guard(self._change_access(frame), frame.id)
                case HistoryRequest():
                    return self._guard(self._page(frame), frame.id)
                case MarkRead():
                    room = self._room(frame.room, frame.id, Action.READ)
                    self._limit(self._buckets.messages, "read markers", frame.id, frame.room)
                    return self._guard(self._mark_read(room, frame), frame.id)
                case Search():
                    self._limit(self._buckets.joins, "searches", frame.id, None)
                    return self._guard(self._search(frame), frame.id)
                case Import():
                    return self._guard(self._import(frame), frame.id)
                case MembersRequest():
                    room = self._room(frame.room, frame.id, Action.READ)
                    self._limit(self._buckets.joins, "member pages", frame.id, frame.room)
                    members, after = room.roster.page(frame.after, frame.limit)
                    count = len(room.roster)
                    page = MembersPage(frame.room, frame.id, members, count, after)
                    self.write(encode(page))
                case _:
                    assert_never(frame)
        except ProtocolError as exc:
            self.write(encode(exc.to_frame()))
        except Exception:
            self._internal_error()
        return None

    def _spawn(self, work: Awaitable[None], frame_id: str | None) -> None:
        """Store concurrently (in order): a connection need not wait for each answer."""
        task = asyncio.ensure_future(self._guard(work, frame_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish_binary(self, data: bytes) -> None:
        """A binary frame is a live value with raw buffers (arrays, tables)."""
        frame, payload = decode_binary(data, self.registry.settings.max_room_name)
        room = self._room(frame.room, None, Action.PUBLISH)
        self._limit(self._buckets.values, "values", None, frame.room)
        room.publish(self, frame.topic, bytes(frame.value), frame.id, frame.buffers, payload)

    async def _post(self, room: Room, frame: Send) -> None:
        if frame.attachment is None:
            appended = await room.post(self, frame.id, frame.body, frame.reply_to)
        else:
            appended = await self._post_attachment(room, frame, frame.attachment)
        if not appended.duplicate and appended.message.mentions:
            self.registry.mention(room, appended.message)

    async def _post_attachment(
        self, room: Room, frame: Send, request: AttachmentRequest
    ) -> Appended:
        """Post a message that carries an upload: the message holds its blob from now on.

        The blob is held before the message is stored (so it cannot expire under it),
        and released again if the message is refused (so a refused send keeps nothing),
        or if it retries a message stored with other bytes (which keeps its own). If
        the work is cancelled (the connection closed) the hold stays: the message may
        have been stored, and its attachment must not be erased under it.
        """
        blobs = self.registry.attachments
        attachment, upload = await attachments.attach(
            self.registry, self.user.username, room.name, request, frame.id
        )
        ref = attachments.Ref(room.name, self.user.username, frame.id)
        if not await blobs.hold(upload, ref):
            raise ProtocolError(
                "not_found", "the upload expired: upload it again", id=frame.id, room=room.name
            )
        try:
            appended = await room.post(self, frame.id, frame.body, frame.reply_to, attachment)
        except ProtocolError:  # refused: nothing was stored
            await blobs.release(upload.sha256, ref)
            raise
        kept = appended.message.attachment
        if appended.duplicate and (kept is None or kept.sha256 != upload.sha256):
            await blobs.release(upload.sha256, ref)
        return appended

    async def _change(self, room: Room, frame: Edit | Delete | React | Unreact) -> None:
        changed = await room.change(self, frame, self.moderator)
        message = changed.change.message
        if changed.mentioned:  # an edit that adds @name tells them, as a new message does
            self.registry.mention(room, message, changed.mentioned)
        if changed.released is not None:  # a deletion: its attachment goes with it
            ref = attachments.Ref(room.name, message.user.username, message.id)
            await self.registry.attachments.release(changed.released.sha256, ref)
            self.registry.blob_cache.forget(changed.released.sha256)

    async def _mark_read(self, room: Room, frame: MarkRead) -> None:
        """Move our read marker forward; every connection of ours learns where it is."""
        seq = await self.registry.store.set_read(
            self.user.username, room.name, min(frame.seq, room.seq)
        )
        marker = ReadMarker(room=room.name, seq=seq)
        self.registry.to_user(self.user.username, encode(marker), exclude=self)
        marker.id = frame.id
        self.write(encode(marker))

    async def _send_mentions(self) -> None:
        """Our unread mentions, in rooms we may still read, right after ``hello`` (if any).

        Read past the access filter and at most :data:`MENTIONS_PER_ROOM` per room, so
        that mentions in a room we may no longer read, or a flood of them in one room,
        cannot push the others out of the list.
        """
        store = self.registry.store
        found = await store.unread_mentions(self.user.username, MENTIONS_READ)
        readable: list[Message] = []
        allowed: dict[str, bool] = {}
        per_room: dict[str, int] = {}
        for message in found:
            if message.room not in allowed:
                stored = await store.get_access(message.room)
                why = refusal(room_access(message.room, stored), self.user.username, Action.READ)
                allowed[message.room] = why is None
            count = per_room.get(message.room, 0)
            if allowed[message.room] and count < MENTIONS_PER_ROOM:
                per_room[message.room] = count + 1
                readable.append(message)
                if len(readable) == MENTIONS_ON_CONNECT:
                    break
        if readable:
            self.write(encode(Mentions(mentions=readable)))

    async def _guard(self, work: Awaitable[None], frame_id: str | None) -> None:
        """Run the work a frame asked for; a refusal answers it, with its ``id``."""
        try:
            await work
        except ProtocolError as exc:
            if exc.id is None:  # raised below the session (the registry, a room, a store)
                exc.id = frame_id
            self.write(encode(exc.to_frame()))
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        log.exception("chat: unexpected error handling a frame from %s", self.user.username)
        self.write(encode(Error(code="internal", message="the server failed on this frame; retry")))

    async def _join(self, frame: Join) -> None:
        if frame.room.startswith(DIRECT_PREFIX) and direct_members(frame.room) is None:
            raise ProtocolError(
                "invalid_room",
                f"room names starting with {DIRECT_PREFIX!r} are direct-message rooms "
                "between two users; ask the client for one (ChatClient.direct)",
                id=frame.id,
                room=frame.room,
            )
        limit = self.registry.settings.max_rooms_per_connection
        if frame.room not in self.rooms and len(self.rooms) >= limit:
            raise ProtocolError(
                "too_many_rooms",
                f"a connection may be in at most {limit} rooms; leave one first",
                id=frame.id,
                room=frame.room,
            )
        self._limit(self._buckets.joins, "joins", frame.id, frame.room)
        read = await self.registry.store.get_read(self.user.username, frame.room)
        room = await self.registry.get(frame.room)
        me = self.user.username
        if frame.private:
            members = sorted({me, *(frame.members or [])})
            limit = self.registry.settings.max_room_members
            check_members(members, limit, room=frame.room, frame_id=frame.id)
            await room.create_private(me, members, frame.id)
        else:
            await room.settled()
        # Nothing awaits from here until room.join() counts this join: no creation
        # can start in between.
        require(room.access, me, Action.READ, room=frame.room, frame_id=frame.id)
        joined, following = await room.join(self, frame.since, frame.id)
        if self.closed:
            room.leave(self)
            return
        self.rooms[frame.room] = room
        joined.read = read
        self.write(encode(joined))
        for topic, value, binary in following:  # values not in `joined` follow it
            self.write(value, key=("data", frame.room, topic), binary=binary)

    async def _change_access(self, frame: AccessChange) -> None:
        room = self._room(frame.room, frame.id, Action.INVITE)
        access = room.access
        assert access is not None and access.owner is not None  # require() checked both
        members = sorted(({*access.members, *frame.add} - set(frame.remove)) | {access.owner})
        limit = self.registry.settings.max_room_members
        check_members(members, limit, room=frame.room, frame_id=frame.id)
        await self.registry.store.set_access(frame.room, access.owner, members)
        room.set_access(Access(room=frame.room, owner=access.owner, members=members))
        self.write(
            encode(Access(room=frame.room, owner=access.owner, members=members, id=frame.id))
        )

    def evicted(self, room: str) -> None:
        """Our user lost access to ``room``: forget it and tell the client."""
        if self.rooms.pop(room, None) is not None:
            self.write(encode(Left(room=room)))

    async def _page(self, frame: HistoryRequest) -> None:
        room = self._room(frame.room, frame.id, Action.READ)
        limit = frame.limit or self.registry.settings.history_page_size
        if frame.around is not None:
            messages = await room.around(frame.around, limit)
        else:
            assert frame.before is not None  # decode() checked: one of the two
            messages = await room.page(frame.before, limit)
        self.write(encode(HistoryPage(room=frame.room, id=frame.id, messages=messages)))

    async def _search(self, frame: Search) -> None:
        """Messages with the query's words, in the rooms we may read (see search.py)."""
        store, most = self.registry.store, self.registry.settings.history_page_size
        try:
            results = await search.run(store, self.user.username, frame, most)
        except StoreUnavailable as exc:
            raise ProtocolError(
                "unavailable", f"cannot search now: {exc}", id=frame.id, retry_after=1.0
            ) from exc
        self.write(encode(results))

    async def _import(self, frame: Import) -> None:
        """Exported messages into a room with no history; moderators only (see restore.py)."""
        done = await restore.run(self.registry, self.user.username, self.moderator, frame)
        self.write(encode(done))

    def _room(self, name: str, frame_id: str | None, action: Action | None) -> Room:
        """A room this connection is in, where it may do ``action`` (checked every time)."""
        room = self.rooms.get(name)
        if room is None:
            raise ProtocolError(
                "not_joined",
                f"you have not joined room {name!r}; send a `join` frame first",
                id=frame_id,
                room=name,
            )
        if action is not None:
            require(room.access, self.user.username, action, room=name, frame_id=frame_id)
        return room

    def _limit(
        self, bucket: TokenBucket, what: str, frame_id: str | None, room: str | None
    ) -> None:
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
        """Leave every room; called when the connection ends (later calls do nothing)."""
        if self.closed:
            return
        self.closed = self._ending = True
        self._conflated.clear()
        if self._counted:
            self.registry.memory.closed()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        rooms, self.rooms = self.rooms, {}
        for room in rooms.values():
            room.leave(self)
        self.registry.limits.detach(self.user.username, self)
