"""Rooms and the room registry: joining, posting, access and fan-out.

A :class:`Room` exists in memory while someone is in it (and for a grace period
after, on a single server); its messages live in a
:class:`~jupyter_chat_ext.history.HistoryStore`. Every broadcast is encoded once and
the same bytes are handed to each member. With a distributed
:class:`~jupyter_chat_ext.backplane.Backplane`, the same room may have members in
other processes: their presence, typing and values arrive through it, and messages
are delivered strictly in ``seq`` order (gaps are read back from the store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container, Hashable, Iterable, Sequence
from typing import TypeVar

import msgspec

from . import conversation, protocol
from .access import Action, refusal, room_access
from .attachments import (
    TRANSFERS_PER_PERSON,
    AttachmentStore,
    BlobCache,
    MemoryAttachments,
    TransferSlots,
)
from .backplane import Backplane, Snapshot
from .config import ChatSettings
from .conversation import ChangeEntry
from .history import Appended, Changed, Entry, HistoryStore, LogEntry, StoreUnavailable
from .limits import UserLimits
from .livevalues import LiveValues
from .memory import Release
from .presence import Member, Roster
from .protocol import (
    Access,
    Attachment,
    Change,
    ChangeRequest,
    DataEvent,
    Edit,
    Joined,
    Mention,
    Message,
    Presence,
    ProtocolError,
    Since,
    TypingEvent,
    encode,
)
from .sequencer import Sequencer

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0  # seconds between sweeps of expired uploads and unused attachments

T = TypeVar("T")


class _Known:
    """Who may be mentioned in a room: anyone in one of ``groups`` (none of them copied)."""

    def __init__(self, *groups: Container[str]) -> None:
        self._groups = groups

    def __contains__(self, name: object) -> bool:
        return any(name in group for group in self._groups)


class Room:
    """One room: its log, its roster (members, typing), latest values and access."""

    def __init__(
        self,
        name: str,
        epoch: str,
        seq: int,
        recent: Iterable[LogEntry],
        store: HistoryStore,
        settings: ChatSettings,
        on_empty: Callable[[Room], None],
        backplane: Backplane | None = None,
    ) -> None:
        self.name = name
        self.log = Sequencer(name, epoch, seq, recent, store, settings, self._fill_gap)
        self._store = store
        self._settings = settings
        self._on_empty = on_empty
        self._backplane = backplane or Backplane()
        self.roster = Roster(name, settings.typing_timeout, self._backplane)
        self.values = LiveValues(name, settings)
        self.joining = 0
        self.access: Access | None = None  # None: public
        self._creating: asyncio.Future[None] | None = None  # a private creation under way
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def epoch(self) -> str:
        """The room's log's epoch (see :class:`~jupyter_chat_ext.sequencer.Sequencer`)."""
        return self.log.epoch

    @property
    def seq(self) -> int:
        """The seq of the last message delivered here."""
        return self.log.seq

    async def settled(self) -> None:
        """Wait until no private-room creation is under way (its outcome decides access)."""
        while self._creating is not None:
            await asyncio.shield(self._creating)

    async def create_private(
        self, owner: str, members: Iterable[str], frame_id: str | None
    ) -> None:
        """Make this new room private to ``owner`` and ``members``, or raise ``room_exists``.

        One step that no join can interleave with: joins that arrive meanwhile wait
        (:meth:`settled`), and the store creates it only if it is new for every
        process (no message ever, not private, nobody in it). A private room that
        ``owner`` already owns is theirs: nothing to do.
        """
        await self.settled()
        if self.access is not None and self.access.owner == owner:
            return
        if self.access is None and self.seq == 0 and self.is_empty() and not self.roster.elsewhere:
            self._creating = asyncio.get_running_loop().create_future()
            try:
                listed = sorted({owner, *members})
                if await self._store.create_private(self.name, owner, listed):
                    self.set_access(Access(room=self.name, owner=owner, members=listed))
                    return
                stored = await self._store.get_access(self.name)  # made elsewhere meanwhile
                if stored is not None and self.access is None:
                    self.access = Access(room=self.name, owner=stored[0], members=stored[1])
            finally:
                self._creating.set_result(None)
                self._creating = None
        if self.is_empty():
            self._on_empty(self)
        kind = "a private room" if self.access is not None else "a public room"
        raise ProtocolError(
            "room_exists",
            f"room {self.name!r} already exists as {kind}: choose another name for your "
            "new private room",
            id=frame_id,
            room=self.name,
        )

    def set_access(self, access: Access, relay: bool = True) -> list[str]:
        """Change who may use the room; evict and return the members who lost access."""
        self.access = access
        gone = [user.username for user in self.roster.local_users]
        gone = [name for name in gone if name not in access.members]
        for username in gone:
            for connection in self.roster.connections_of(username):
                connection.evicted(self.name)
                self.leave(connection)
        frame = encode(access)
        self.broadcast(frame)
        if relay:
            self._backplane.relay(self.name, frame)
        return gone

    def is_empty(self) -> bool:
        """True when no connection is in the room and none is joining."""
        return not self.roster and not self.joining

    def broadcast(
        self,
        frame: bytes,
        exclude: Member | None = None,
        key: Hashable | None = None,
        binary: bool = False,
    ) -> None:
        """Send the same encoded frame to every member connection except ``exclude``."""
        for connection in self.roster.connections():
            if connection is not exclude:
                connection.write(frame, key, binary)

    async def join(
        self, member: Member, since: Since | None, frame_id: str | None
    ) -> tuple[Joined, list[tuple[str, bytes, bool]]]:
        """Add ``member``, announce them if new; return ``joined`` and the values to follow.

        Values that follow are (topic, frame, binary): arrays and tables, and the
        values past the ``joined`` frame's byte budget.
        """
        self.joining += 1
        try:
            history, recovered, start = await self.log.since(since)
        except BaseException:
            self.joining -= 1
            if self.is_empty():
                self._on_empty(self)
            raise
        self.joining -= 1
        # From here to the return nothing awaits, so no message can slip between the
        # history and the broadcasts the member receives from now on.
        last = history[-1].seq if history else start
        entries = [*history, *self.log.recent_after(last)]
        if recovered and (entries[-1].seq if entries else start) - start != len(entries):
            # The gap could not be read whole (it grew past the cache during the read):
            # say so rather than hand out a partial gap.
            recovered = False
            entries = list(self.log.fresh_history())
        messages = [e for e in entries if isinstance(e, Message)]
        # A fresh history's messages carry every change already: its changes are moot.
        changes = [e for e in entries if isinstance(e, Change)] if recovered else []
        values, frames = self.values.for_join()
        self.roster.add(member)
        return Joined(
            room=self.name,
            epoch=self.epoch,
            seq=self.seq,
            members=self.roster.first_page(self.log.recent_speakers(), protocol.MEMBERS_PAGE),
            member_count=len(self.roster),
            history=messages,
            values=values,
            recovered=recovered,
            changes=changes,
            id=frame_id,
            following=len(frames),
            access=self.access,
        ), frames

    def leave(self, member: Member) -> None:
        """Remove one connection; announce the user's departure with their last one."""
        if self.roster.remove(member) and self.is_empty():
            self._on_empty(self)

    def _check_size(self, body: str, frame_id: str) -> None:
        size = len(body.encode())
        if size > self._settings.max_message_size:
            raise ProtocolError(
                "message_too_large",
                f"message is {size} bytes; the limit is {self._settings.max_message_size}. "
                "Split it or share a file instead.",
                id=frame_id,
                room=self.name,
            )

    def mentions(self, body: str) -> tuple[str, ...]:
        """Who ``body`` mentions: ``@username`` of a member, an invitee or a recent author."""
        if "@" not in body:
            return ()
        access = self.access.members if self.access is not None else ()
        known = _Known(self.roster, access, self.log.recent_authors())
        return tuple(conversation.mentions_in(body, known))

    async def post(
        self,
        member: Member,
        message_id: str,
        body: str,
        reply_to: int | None = None,
        attachment: Attachment | None = None,
    ) -> Appended:
        """Store a message, then send it to everyone (its copy to the sender is the ack).

        A retried send (``duplicate``) is answered with the stored message, to
        ``member`` only.
        """
        self._check_size(body, message_id)
        entry = Entry(
            self.name,
            message_id,
            member.user,
            time.time(),
            body,
            reply_to,
            self.mentions(body),
            attachment,
        )
        appended = await self._stored(self._store.append(entry), message_id)
        if appended.duplicate:
            member.write(encode(appended.message))
        else:
            self.deliver(appended.message)
        return appended

    async def change(self, member: Member, request: ChangeRequest, moderator: bool) -> Changed:
        """Apply an edit, deletion or reaction, then send the change to everyone."""
        body = request.body if isinstance(request, Edit) else None
        if body is not None:
            self._check_size(body, request.id)
        entry = ChangeEntry(
            room=self.name,
            id=request.id,
            user=member.user,
            ts=time.time(),
            kind=request.__struct_config__.tag,  # type: ignore[arg-type]  # edit/delete/...
            target=request.seq,
            emoji=getattr(request, "emoji", None),
            body=body,
            mentions=self.mentions(body) if body is not None else (),
            moderator=moderator,
        )
        changed = await self._stored(
            self._store.change(entry, self._settings.max_reactions), request.id
        )
        if changed.duplicate:
            member.write(encode(changed.change))
            return changed
        self.deliver(changed.change)
        return changed

    async def _stored(self, work: Awaitable[T], frame_id: str) -> T:
        """The store's answer to ``work``; its failures as refusals of the frame."""
        try:
            return await work
        except StoreUnavailable as exc:
            raise ProtocolError(
                "unavailable",
                f"nothing was saved: {exc}; it is sent again shortly",
                id=frame_id,
                room=self.name,
                retry_after=1.0,
            ) from exc
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(
                "internal",
                f"nothing was saved ({type(exc).__name__}); send it again",
                id=frame_id,
                room=self.name,
            ) from exc

    def deliver(self, entry: LogEntry, frame: bytes | None = None) -> None:
        """Send a stored log entry to everyone, in ``seq`` order, each once.

        An entry that arrives before an earlier one (from another process) waits
        for it; if the earlier one is lost on the way, the gap is read from the store.
        """
        for ready, ready_frame in self.log.order(entry, frame):
            if isinstance(ready, Message):
                self.roster.set_typing(ready.user, False)
            self.broadcast(ready_frame if ready_frame is not None else encode(ready))

    def _fill_gap(self) -> None:
        self.spawn(self.catch_up())

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` in the background (logged, not raised, if it fails)."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:
                log.warning("chat: room %r: %s", self.name, exc)
            if self.log.waiting:
                self.log.await_gap()

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self) -> None:
        """Deliver every stored message after ``seq`` (missed while cut off, say)."""
        more = True
        while more:
            messages, more = await self.log.missed()
            for message in messages:
                self.deliver(message)

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
        self.values.check(topic, len(value) + (len(payload) if payload is not None else 0))
        event = DataEvent(
            room=self.name,
            topic=topic,
            value=msgspec.Raw(value),
            user=member.user,
            ts=time.time(),
            id=value_id,
            buffers=buffers,
        )
        if buffers is None:
            frame = encode(event)
        else:
            frame = protocol.pack_binary(encode(event), [payload if payload is not None else b""])
        self.remote_value(event, frame, buffers is not None)
        self._backplane.relay(self.name, frame, buffers is not None, topic)

    def remote_value(self, event: DataEvent, frame: bytes, binary: bool) -> None:
        """Record a live value (from here or another process) and send it to everyone."""
        self.values.record(event, frame, binary)
        self.broadcast(frame, key=("data", self.name, event.topic), binary=binary)

    def restore(self, snapshot: Snapshot) -> None:
        """Take over the presence and latest values other processes left in the backplane."""
        self.roster.set_remote(snapshot.presence)
        self.values.restore(snapshot.values)

    async def page(self, before: int, limit: int) -> list[Message]:
        """Return up to ``limit`` messages older than ``before`` (for "load earlier")."""
        return await self.log.page(before, limit)

    async def around(self, seq: int, limit: int) -> list[Message]:
        """Messages before and from ``seq`` (see :meth:`Sequencer.around`)."""
        return await self.log.around(seq, limit)

    async def import_messages(self, messages: list[Message], after: int, frame_id: str) -> int:
        """Store imported messages after entry ``after``, then send them to whoever is here.

        Returns the room's last seq (see :meth:`HistoryStore.import_messages`).
        """
        last = await self._stored(
            self._store.import_messages(self.name, after, messages, frame_id), frame_id
        )
        await self.catch_up()  # read back and delivered in seq order, like any gap
        return last

    def close(self) -> None:
        """Cancel timers and background work; called when the room is unloaded."""
        self.roster.close()
        self.log.close()
        for task in self._tasks:
            task.cancel()


class RoomRegistry:
    """All loaded rooms: loads a room on first join, unloads it once idle.

    It is also the :class:`~jupyter_chat_ext.backplane.Receiver` of its backplane:
    frames other processes broadcast reach the room of the same name here.
    """

    def __init__(
        self,
        store: HistoryStore,
        settings: ChatSettings,
        backplane: Backplane | None = None,
        attachments: AttachmentStore | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.attachments = attachments or MemoryAttachments()
        self.blob_cache = BlobCache()
        self.transfers = TransferSlots(TRANSFERS_PER_PERSON)
        self._sweeper: asyncio.Task[None] | None = None
        self.backplane = backplane or Backplane()
        if self.backplane.distributed and store.publishes is not self.backplane:
            raise ValueError(
                f"{type(store).__name__} does not publish what it stores through "
                f"{type(self.backplane).__name__}: messages would not reach the other "
                "processes. Use the store made for that backplane (RedisHistory)."
            )
        self._started: asyncio.Future[None] | None = None
        # Frames from other processes for rooms being loaded, applied once they are.
        self._early: dict[str, list[tuple[bytes, bool, str]]] = {}
        self._rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._unload_timers: dict[str, asyncio.TimerHandle] = {}
        self.limits = UserLimits(settings)
        self.memory = Release()
        store.stored = self._stored

    def _stored(self, entry: LogEntry) -> None:
        """An entry this process just stored: its room sends it out now."""
        room = self._rooms.get(entry.room)
        if room is not None:
            room.deliver(entry)

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    async def start(self) -> None:
        """Connect the backplane (done by the first :meth:`get` if not before)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.backplane.start(self))
            self._sweeper = asyncio.ensure_future(self._sweep_attachments())
        await asyncio.shield(self._started)

    async def _sweep_attachments(self) -> None:
        """Drop expired uploads and the blobs nothing names, and idle users' limiters."""
        every = min(SWEEP_EVERY, self.settings.attachment_upload_ttl)
        while True:
            self.limits.sweep()
            try:
                await self.attachments.sweep(time.time())
            except Exception as exc:  # the store is down: the next round catches up
                log.warning("chat: attachments: sweep failed: %s", exc)
            await asyncio.sleep(every)

    async def get(self, name: str) -> Room:
        """Return the room called ``name``, loading (or creating) it if needed."""
        if self._started is None or not self._started.done():
            await self.start()
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
        backplane = self.backplane
        self._early[name] = []
        try:
            # Watch first: whatever is broadcast after the log is read below arrives.
            await backplane.watch(name)
            try:
                log = await self.store.open_room(name, max(self.settings.history_on_join, 1000))
                snapshot = await backplane.snapshot(name)
                access = await self.store.get_access(name)
            except BaseException:
                backplane.unwatch(name)
                raise
            room = Room(
                name,
                log.epoch,
                log.seq,
                log.recent,
                self.store,
                self.settings,
                self._room_empty,
                backplane,
            )
            room.restore(snapshot)
            room.access = room_access(name, access)
            self._rooms[name] = room
            for early in self._early.pop(name):
                self.receive(name, *early)
        except StoreUnavailable as exc:
            raise ProtocolError(
                "unavailable",
                f"room {name!r} cannot be opened: {exc}; try again shortly",
                room=name,
                retry_after=1.0,
            ) from exc
        finally:
            del self._loading[name]
            self._early.pop(name, None)
        if backplane.distributed:
            # A message stored between reading the log and registering the room was
            # broadcast before anyone here listened for it: read it back.
            room.spawn(room.catch_up())
        return room

    def receive(self, room: str, frame: bytes, binary: bool, node: str) -> None:
        """See :meth:`Receiver.receive <jupyter_chat_ext.backplane.Receiver.receive>`."""
        target = self._rooms.get(room)
        if target is None:
            if room in self._early:
                self._early[room].append((frame, binary, node))
            return
        try:
            event = protocol.decode_relayed(frame, binary)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("chat: dropped a malformed frame from process %s: %s", node, exc)
            return
        if isinstance(event, Message | Change):
            target.deliver(event, frame)
        elif isinstance(event, DataEvent):
            target.remote_value(event, frame, binary)
        elif isinstance(event, TypingEvent):
            target.roster.remote_typing(event.user.username, frame)
        elif isinstance(event, Presence):
            for user in event.joined:
                target.roster.remote_presence(node, user, True)
            for user in event.left:
                target.roster.remote_presence(node, user, False)
        elif isinstance(event, Access):
            target.set_access(event, relay=False)

    def to_user(
        self, username: str, frame: bytes, exclude: Member | None = None, relay: bool = True
    ) -> None:
        """Send ``frame`` to every connection of ``username``, in every process."""
        for connection in self.limits.connections(username):
            if connection is not exclude:
                connection.write(frame)
        if relay:
            self.backplane.notify(username, frame)

    def notified(self, username: str, frame: bytes) -> None:
        """See :meth:`Receiver.notified <jupyter_chat_ext.backplane.Receiver.notified>`."""
        self.to_user(username, frame, relay=False)

    def mention(self, room: Room, message: Message, usernames: Sequence[str] | None = None) -> None:
        """Tell each user ``message`` mentions (who may read the room) on all their connections.

        ``usernames``: only these of its mentions (those an edit added).

        Live pushes to one person are rate limited (a flood of mentions must not swamp
        their connections); the mention is stored either way and listed at connect.
        """
        frame = encode(Mention(room=room.name, message=message))
        for username in message.mentions if usernames is None else usernames:
            allowed = refusal(room.access, username, Action.READ) is None
            pushed = username != message.user.username and allowed
            if pushed and not self.limits.buckets(username).mentioned.take():
                self.to_user(username, frame)

    def release(self, room: Room) -> None:
        """``room`` was loaded for work other than a join: unload it in time if nobody is in it."""
        if room.is_empty():
            self._room_empty(room)

    def resumed(self, room: str) -> None:
        """See :meth:`Receiver.resumed <jupyter_chat_ext.backplane.Receiver.resumed>`."""
        target = self._rooms.get(room)
        if target is not None:
            target.spawn(self._resume(target))

    async def _resume(self, room: Room) -> None:
        for user in room.roster.local_users:
            self.backplane.present(room.name, user, True)
        snapshot = await self.backplane.snapshot(room.name)
        room.roster.set_remote(snapshot.presence)
        await room.catch_up()

    def prune(self, alive: set[str]) -> None:
        """See :meth:`Receiver.prune <jupyter_chat_ext.backplane.Receiver.prune>`."""
        for room in self._rooms.values():
            room.roster.prune(alive)

    def _room_empty(self, room: Room) -> None:
        if room.name in self._unload_timers:
            return
        # Rooms shared with other processes are not cached: a room nobody here is
        # in stops listening to the others at once.
        delay = 0.0 if self.backplane.distributed else self.settings.room_idle_timeout
        self._unload_timers[room.name] = asyncio.get_running_loop().call_later(
            delay, self._unload, room.name
        )

    def _unload(self, name: str) -> None:
        self._unload_timers.pop(name, None)
        room = self._rooms.get(name)
        if room is not None and room.is_empty():
            room.close()
            del self._rooms[name]
            self.backplane.unwatch(name)

    async def close(self) -> None:
        """Unload every room and close the history store."""
        for timer in self._unload_timers.values():
            timer.cancel()
        self._unload_timers.clear()
        self.memory.close()
        for room in self._rooms.values():
            room.close()
        self._rooms.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.backplane.close()
        await self.store.close()
        await self.attachments.close()
