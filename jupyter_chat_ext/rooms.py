"""Rooms and the room registry: membership, presence, typing, live values and fan-out.

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
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Protocol

import msgspec

from . import protocol
from .backplane import Backplane, Snapshot
from .config import ChatSettings
from .history import Entry, HistoryStore, StoreUnavailable
from .limits import UserLimits
from .livevalues import LiveValues
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
from .sequencer import Sequencer

log = logging.getLogger(__name__)


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
        backplane: Backplane | None = None,
    ) -> None:
        self.name = name
        self.log = Sequencer(name, epoch, seq, recent, store, settings, self._fill_gap)
        self._store = store
        self._settings = settings
        self._on_empty = on_empty
        # username -> (how they show here, their connections, oldest first)
        self._members: dict[str, tuple[User, dict[Member, None]]] = {}
        self.values = LiveValues(name, settings)
        self._typing: dict[str, asyncio.TimerHandle] = {}
        self.joining = 0
        self.access: Access | None = None  # None: public
        self._creating: asyncio.Future[None] | None = None  # a private creation under way
        self._backplane = backplane or Backplane()
        self._remote: dict[str, dict[str, User]] = {}  # username -> node -> user, elsewhere
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def epoch(self) -> str:
        """The room's log's epoch (see :class:`~jupyter_chat_ext.sequencer.Sequencer`)."""
        return self.log.epoch

    @property
    def seq(self) -> int:
        """The seq of the last message delivered here."""
        return self.log.seq

    @property
    def members(self) -> list[User]:
        """Users in the room now, each once however many connections they have.

        A user whose only connections are their kernels' shows with ``kernel: true``:
        their kernel is here, not them.
        """
        names = list(self._members) + [name for name in self._remote if name not in self._members]
        return [user for name in names if (user := self._shown(name)) is not None]

    def _shown(self, username: str) -> User | None:
        """How ``username`` shows in the member list, here and through other processes."""
        entry = self._members.get(username)
        seen = ([entry[0]] if entry else []) + list(self._remote.get(username, {}).values())
        return next((user for user in seen if not user.kernel), seen[0] if seen else None)

    def _announce(
        self, before: User | None, after: User | None, exclude: Member | None = None
    ) -> None:
        """Tell the room how a member's entry changed (``joined`` also updates one)."""
        if after is not None and after != before:
            self.broadcast(encode(Presence(room=self.name, joined=after)), exclude)
        elif after is None and before is not None:
            self.broadcast(encode(Presence(room=self.name, left=before)), exclude)

    def _seat(
        self, username: str, connections: dict[Member, None], joiner: Member | None = None
    ) -> None:
        """Record ``username``'s connections here; announce and relay what that changes.

        ``joiner`` (a connection joining now) learns the members from its ``joined``.
        """
        before = self._shown(username)
        entry = self._members.get(username)
        if connections:
            users = [member.user for member in connections]
            people = [user for user in users if not user.kernel]
            seat = people[-1] if people else users[-1]  # the newest identity (a rename)
            self._members[username] = (seat, connections)
            if entry is None or entry[0] != seat:
                self._backplane.present(self.name, seat, True)
        elif entry is not None:
            del self._members[username]
            self._backplane.present(self.name, entry[0], False)
        self._announce(before, self._shown(username), joiner)

    @property
    def local_users(self) -> list[User]:
        """Users in the room through this process."""
        return [user for user, _ in self._members.values()]

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
        if self.access is None and self.seq == 0 and self.is_empty() and not self._remote:
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
        gone = [name for name in self._members if name not in access.members]
        for username in gone:
            for connection in list(self._members[username][1]):
                connection.evicted(self)
                self.leave(connection)
        frame = encode(access)
        self.broadcast(frame)
        if relay:
            self._backplane.relay(self.name, frame)
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
        history = history + self.log.recent_after(last)
        if recovered and (history[-1].seq if history else start) - start != len(history):
            # The gap could not be read whole (it grew past the cache during the read):
            # say so rather than hand out a partial gap.
            recovered = False
            history = self.log.fresh_history()
        values, frames = self.values.for_join()
        username = member.user.username
        connections = self._members[username][1] if username in self._members else {}
        connections[member] = None
        self._seat(username, connections, member)
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
        del entry[1][member]
        if not entry[1]:
            self.set_typing(member.user, False)
        self._seat(username, entry[1])
        if self.is_empty():
            self._on_empty(self)

    def remote_presence(self, node: str, user: User, here: bool) -> None:
        """``user`` came to (``here``) or left this room in process ``node``."""
        remote = {name: dict(nodes) for name, nodes in self._remote.items()}
        if here:
            remote.setdefault(user.username, {})[node] = user
        elif node in remote.get(user.username, {}):
            del remote[user.username][node]
        self._set_remote(remote)

    def set_remote(self, presence: Iterable[tuple[str, User]]) -> None:
        """Replace who is here through other processes with ``presence`` (node, user)."""
        remote: dict[str, dict[str, User]] = {}
        for node, user in presence:
            remote.setdefault(user.username, {})[node] = user
        self._set_remote(remote)

    def prune(self, alive: set[str]) -> None:
        """Forget the users of processes that are no longer running."""
        remote = {
            name: {node: user for node, user in nodes.items() if node in alive}
            for name, nodes in self._remote.items()
        }
        self._set_remote(remote)

    def _set_remote(self, remote: dict[str, dict[str, User]]) -> None:
        remote = {name: nodes for name, nodes in remote.items() if nodes}
        names = set(remote) | set(self._remote)
        before = {name: self._shown(name) for name in names}
        self._remote = remote
        for name in names:
            after = self._shown(name)
            gone = before[name]
            if after is None and gone is not None:
                self._typing_changed(gone, False, relay=False)
            self._announce(gone, after)

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
        except StoreUnavailable as exc:
            raise ProtocolError(
                "unavailable",
                f"the message was not saved: {exc}; it is sent again shortly",
                id=message_id,
                room=self.name,
                retry_after=1.0,
            ) from exc
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
        self.deliver(message)

    def deliver(self, message: Message, frame: bytes | None = None) -> None:
        """Send a stored message to everyone, in ``seq`` order, each once.

        A message that arrives before an earlier one (from another process) waits
        for it; if the earlier one is lost on the way, the gap is read from the store.
        """
        for ready, ready_frame in self.log.order(message, frame):
            self.set_typing(ready.user, False)
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
        self.set_remote(snapshot.presence)
        self.values.restore(snapshot.values)

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
            self._typing_changed(user, active, relay=True)

    def _typing_changed(self, user: User, active: bool, relay: bool) -> None:
        frame = encode(TypingEvent(room=self.name, user=user, active=active))
        self.remote_typing(user.username, frame)
        if relay:
            self._backplane.relay(self.name, frame)

    def remote_typing(self, username: str, frame: bytes) -> None:
        """Send a typing event of ``username`` to everyone else in the room."""
        exclude = self._members.get(username, (None, {}))[1]
        key = ("typing", self.name, username)
        for _, connections in self._members.values():
            if connections is not exclude:
                for connection in connections:
                    connection.write(frame, key)

    async def page(self, before: int, limit: int) -> list[Message]:
        """Return up to ``limit`` messages older than ``before`` (for "load earlier")."""
        return await self.log.page(before, limit)

    def close(self) -> None:
        """Cancel timers and background work; called when the room is unloaded."""
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()
        self.log.close()
        for task in self._tasks:
            task.cancel()


class RoomRegistry:
    """All loaded rooms: loads a room on first join, unloads it once idle.

    It is also the :class:`~jupyter_chat_ext.backplane.Receiver` of its backplane:
    frames other processes broadcast reach the room of the same name here.
    """

    def __init__(
        self, store: HistoryStore, settings: ChatSettings, backplane: Backplane | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.backplane = backplane or Backplane()
        self._started: asyncio.Future[None] | None = None
        # Frames from other processes for rooms being loaded, applied once they are.
        self._early: dict[str, list[tuple[bytes, bool, str]]] = {}
        self._rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._unload_timers: dict[str, asyncio.TimerHandle] = {}
        self.limits = UserLimits(settings)

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    async def start(self) -> None:
        """Connect the backplane (done by the first :meth:`get` if not before)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.backplane.start(self))
        await asyncio.shield(self._started)

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
            pair = protocol.direct_members(name)
            if pair is not None:
                room.access = Access(room=name, members=pair)
            elif access is not None:
                room.access = Access(room=name, owner=access[0], members=access[1])
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
        if isinstance(event, Message):
            target.deliver(event, frame)
        elif isinstance(event, DataEvent):
            target.remote_value(event, frame, binary)
        elif isinstance(event, TypingEvent):
            target.remote_typing(event.user.username, frame)
        elif isinstance(event, Presence):
            user = event.joined or event.left
            if user is not None:
                target.remote_presence(node, user, event.joined is not None)
        elif isinstance(event, Access):
            target.set_access(event, relay=False)

    def resumed(self, room: str) -> None:
        """See :meth:`Receiver.resumed <jupyter_chat_ext.backplane.Receiver.resumed>`."""
        target = self._rooms.get(room)
        if target is not None:
            target.spawn(self._resume(target))

    async def _resume(self, room: Room) -> None:
        for user in room.local_users:
            self.backplane.present(room.name, user, True)
        snapshot = await self.backplane.snapshot(room.name)
        room.set_remote(snapshot.presence)
        await room.catch_up()

    def prune(self, alive: set[str]) -> None:
        """See :meth:`Receiver.prune <jupyter_chat_ext.backplane.Receiver.prune>`."""
        for room in self._rooms.values():
            room.prune(alive)

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
        for room in self._rooms.values():
            room.close()
        self._rooms.clear()
        await self.backplane.close()
        await self.store.close()
