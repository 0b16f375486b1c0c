"""Who is in a room and who is typing in it, here and through other processes.

A :class:`Roster` keeps a room's connections per user, the users other processes
report through the backplane, and the typing timers. It decides how each user shows
in the member list and announces every change of it (``presence`` frames) and of
typing (``typing`` frames). Nothing here is stored: presence and typing are
ephemeral, never replayed.

A room may hold thousands of people, so nothing a join does grows with the room: a
joiner gets the member count and a first page (:meth:`Roster.first_page`), pages the
rest on demand (:meth:`Roster.page`), and changes of the member list are announced in
batches (:class:`~jupyter_chat_ext.protocol.Presence` with lists): once per loop turn in
a small room (but never two within ``MIN_GAP``), at most every ``len / BATCH_RATE``
seconds (up to a second) in a big one,
so the presence traffic of a room filling up stays linear in its size.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Hashable, Iterable, Iterator
from typing import Protocol

from .backplane import Backplane
from .protocol import Presence, TypingEvent, User, encode

SMALL_ROOM = 100  # up to this many members, presence goes out the next loop turn
BATCH_RATE = 10_000  # in a bigger room, a batch every len/BATCH_RATE s (member-frames/s)
MAX_BATCH_DELAY = 1.0  # seconds: the longest a change of the member list waits
LIST_MAX = 100  # users a `presence` lists at most; past it, only the count (`more`)
MIN_GAP = 0.1  # seconds between two batches of a room: a join/leave storm is one frame


class Member(Protocol):
    """What a room needs from a connection: who it is and how to send it bytes."""

    user: User

    def write(self, frame: bytes, key: Hashable | None = None, binary: bool = False) -> None:
        """Queue an encoded frame (a binary one if ``binary``); must not block or raise.

        ``key`` marks an ephemeral frame (typing, a live value) that a later frame
        with the same key supersedes, so a slow connection may skip it.
        """

    def evicted(self, room: str) -> None:
        """The connection was removed from the room named ``room`` (access lost)."""


class Roster:
    """A room's members (local connections and users elsewhere) and its typists."""

    def __init__(
        self,
        room: str,
        typing_timeout: float,
        backplane: Backplane,
    ) -> None:
        self.room = room
        self._typing_timeout = typing_timeout
        self._backplane = backplane
        # username -> (how they show here, their connections, oldest first)
        self._local: dict[str, tuple[User, dict[Member, None]]] = {}
        self._remote: dict[str, dict[str, User]] = {}  # username -> node -> user, elsewhere
        self._typing: dict[str, asyncio.TimerHandle] = {}
        self._order: list[str] = []  # the usernames of the members, sorted (for pages)
        self._changed: dict[str, User | None] = {}  # username -> shown before the batch
        self._batch: asyncio.Handle | None = None
        self._last_batch = float("-inf")  # loop time of the last batch sent
        self._version = 0  # counts the changes announced
        self._joiners: dict[Member, int] = {}  # joined during the batch -> version then

    def __bool__(self) -> bool:
        """True while a connection of this process is in the room."""
        return bool(self._local)

    def __len__(self) -> int:
        """How many users are in the room now, here and elsewhere, each once."""
        return len(self._order)

    def __contains__(self, username: object) -> bool:
        """True when ``username`` is in the room (here or through another process)."""
        return username in self._local or username in self._remote

    def _names(self) -> Iterator[str]:
        yield from self._local
        yield from (name for name in self._remote if name not in self._local)

    @property
    def members(self) -> list[User]:
        """Users in the room now, each once however many connections they have.

        A user whose only connections are their kernels' shows with ``kernel: true``:
        their kernel is here, not them.
        """
        return [user for name in self._names() if (user := self._shown(name)) is not None]

    def first_page(self, speakers: Iterable[str], limit: int) -> list[User]:
        """Up to ``limit`` members: those of ``speakers`` here (in that order) first.

        ``speakers`` are the room's recent authors, most recent first; the page is
        filled with the members who came first. Costs O(limit), whatever the size.
        """
        page: dict[str, User] = {}
        for name in itertools.chain(speakers, self._names()):
            if len(page) >= limit:
                break
            if name not in page and (user := self._shown(name)) is not None:
                page[name] = user
        return list(page.values())

    def page(self, after: str | None, limit: int) -> tuple[list[User], str | None]:
        """Members in username order after ``after``; and the cursor of the next page."""
        start = 0 if after is None else bisect.bisect_right(self._order, after)
        names = self._order[start : start + limit]
        users = [user for name in names if (user := self._shown(name)) is not None]
        more = start + limit < len(self._order) and names
        return users, names[-1] if more else None

    @property
    def local_users(self) -> list[User]:
        """Users in the room through this process."""
        return [user for user, _ in self._local.values()]

    @property
    def elsewhere(self) -> bool:
        """True when other processes report someone in the room."""
        return bool(self._remote)

    def connections(self) -> Iterator[Member]:
        """Every connection of this process in the room."""
        for _, connections in self._local.values():
            yield from connections

    def connections_of(self, username: str) -> list[Member]:
        """The connections ``username`` has in the room through this process."""
        entry = self._local.get(username)
        return list(entry[1]) if entry else []

    def add(self, member: Member) -> None:
        """Seat a joining connection; everyone else learns of a new or changed member.

        The joiner itself learns the members from its ``joined`` frame.
        """
        username = member.user.username
        connections = self._local[username][1] if username in self._local else {}
        connections[member] = None
        self._seat(username, connections)
        self._joiners[member] = self._version

    def remove(self, member: Member) -> bool:
        """Unseat one connection; announce the user's departure with their last one.

        Returns False if ``member`` was not in the room.
        """
        username = member.user.username
        entry = self._local.get(username)
        if entry is None or member not in entry[1]:
            return False
        del entry[1][member]
        if not entry[1]:
            self.set_typing(member.user, False)
        self._seat(username, entry[1])
        return True

    def _shown(self, username: str) -> User | None:
        """How ``username`` shows in the member list, here and through other processes."""
        entry = self._local.get(username)
        seen = ([entry[0]] if entry else []) + list(self._remote.get(username, {}).values())
        return next((user for user in seen if not user.kernel), seen[0] if seen else None)

    def _announce(self, username: str, before: User | None) -> None:
        """``username``'s entry may have changed from ``before``: tell the room, batched."""
        here = self._shown(username) is not None
        if (before is None) == here:  # came or went: keep the sorted list in step
            index = bisect.bisect_left(self._order, username)
            if here:
                self._order.insert(index, username)
            elif index < len(self._order) and self._order[index] == username:
                del self._order[index]
        self._changed.setdefault(username, before)
        self._version += 1
        if self._batch is None:
            loop = asyncio.get_running_loop()
            size = len(self)
            delay = 0.0 if size <= SMALL_ROOM else min(MAX_BATCH_DELAY, size / BATCH_RATE)
            delay = max(delay, self._last_batch + MIN_GAP - loop.time())
            if delay > 0:
                self._batch = loop.call_later(delay, self._flush)
            else:
                self._batch = loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the batch: one ``presence`` frame for every change since the last one.

        A user who came and went within the batch (or the reverse) is not mentioned.
        Past :data:`LIST_MAX` changes, the frame carries the count alone (``more``):
        listing every arrival to every member would cost a room filling up O(n²) bytes.
        A connection that joined after every change of the batch is not sent it: its
        ``joined`` told it all. Others may find themselves in ``joined``: entries are
        updates by username.
        """
        self._batch = None
        self._last_batch = asyncio.get_running_loop().time()
        changed, self._changed = self._changed, {}
        joiners, self._joiners = self._joiners, {}
        informed = {member for member, version in joiners.items() if version == self._version}
        joined: list[User] = []
        left: list[User] = []
        for name, before in changed.items():
            after = self._shown(name)
            if after is not None and after != before:
                joined.append(after)
            elif after is None and before is not None:
                left.append(before)
        if joined or left:
            if len(joined) + len(left) > LIST_MAX:  # a crowd came or went: say how many
                joined, left, more = [], [], True
            else:
                more = False
            presence = Presence(self.room, len(self), joined=joined, left=left, more=more)
            frame = encode(presence)
            for connection in self.connections():
                if connection not in informed:
                    connection.write(frame)

    def _seat(self, username: str, connections: dict[Member, None]) -> None:
        """Record ``username``'s connections here; announce and relay what that changes."""
        before = self._shown(username)
        entry = self._local.get(username)
        if connections:
            users = [member.user for member in connections]
            people = [user for user in users if not user.kernel]
            seat = people[-1] if people else users[-1]  # the newest identity (a rename)
            self._local[username] = (seat, connections)
            if entry is None or entry[0] != seat:
                self._backplane.present(self.room, seat, True)
        elif entry is not None:
            del self._local[username]
            self._backplane.present(self.room, entry[0], False)
        self._announce(username, before)

    def remote_presence(self, node: str, user: User, here: bool) -> None:
        """``user`` came to (``here``) or left this room in process ``node``."""
        name = user.username
        before = self._shown(name)
        nodes = self._remote.get(name)
        if here:
            self._remote.setdefault(name, {})[node] = user
        elif nodes is not None and node in nodes:
            del nodes[node]
            if not nodes:
                del self._remote[name]
        else:
            return
        if before is not None and self._shown(name) is None:
            self._typing_changed(before, False, relay=False)
        self._announce(name, before)

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
            self._announce(name, gone)

    def set_typing(self, user: User, active: bool) -> None:
        """Start (or refresh) or stop ``user``'s typing indicator; it expires by itself."""
        timer = self._typing.pop(user.username, None)
        if timer is not None:
            timer.cancel()
        if active:
            self._typing[user.username] = asyncio.get_running_loop().call_later(
                self._typing_timeout, self.set_typing, user, False
            )
        if active != (timer is not None):
            self._typing_changed(user, active, relay=True)

    def _typing_changed(self, user: User, active: bool, relay: bool) -> None:
        frame = encode(TypingEvent(room=self.room, user=user, active=active))
        self.remote_typing(user.username, frame)
        if relay:
            self._backplane.relay(self.room, frame)

    def remote_typing(self, username: str, frame: bytes) -> None:
        """Send a typing event of ``username`` to everyone else in the room."""
        exclude = self._local.get(username, (None, {}))[1]
        key = ("typing", self.room, username)
        for _, connections in self._local.values():
            if connections is not exclude:
                for connection in connections:
                    connection.write(frame, key)

    def close(self) -> None:
        """Cancel the typing timers and the batch of presence not yet sent."""
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
