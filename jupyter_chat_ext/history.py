"""Durable per-room message logs: the :class:`HistoryStore` interface and its stores.

A room's log is identified by an ``epoch`` (a new one whenever the log is created or
reset) and numbered by a gap-free ``seq``. The store assigns ``seq`` atomically with
the append and de-duplicates retried sends by ``(user, client id)``, so a message is
acknowledged only once it is durable and never posted twice.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from . import conversation
from .backplane import Backplane
from .conversation import ChangeEntry
from .protocol import Attachment, Change, Message, ProtocolError, User, decode_user
from .search import Query, indexed, newest_first

log = logging.getLogger(__name__)

LogEntry = Message | Change
SCAN_PAGE = 500  # messages read at a time by a search that scans a room

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A message to append, before the store gives it a ``seq``."""

    room: str
    id: str
    user: User
    ts: float
    body: str
    reply_to: int | None = None
    mentions: tuple[str, ...] = ()
    attachment: Attachment | None = None

    def message(self, seq: int, parent_replies: int | None = None) -> Message:
        """The message this entry becomes as entry ``seq`` of its room's log."""
        return Message(
            room=self.room,
            seq=seq,
            id=self.id,
            user=self.user,
            ts=self.ts,
            body=self.body,
            reply_to=self.reply_to,
            mentions=list(self.mentions),
            parent_replies=parent_replies,
            attachment=self.attachment,
        )


@dataclasses.dataclass(frozen=True)
class Appended:
    """The result of an append: the stored message, and whether it was a retry."""

    message: Message
    duplicate: bool


@dataclasses.dataclass(frozen=True)
class Changed:
    """The result of a change: its log entry (target as changed), and whether a retry.

    ``mentioned``: who the change newly mentions (an edit that adds ``@name``): they
    are told, as for a new message. ``released``: the attachment a deletion took from
    the message (its bytes are released). Both empty for a retry.
    """

    change: Change
    duplicate: bool
    mentioned: tuple[str, ...] = ()
    released: Attachment | None = None


def not_empty(room: str, seq: int, frame_id: str | None) -> ProtocolError:
    """The refusal of an import that does not continue the room's log where it is."""
    return ProtocolError(
        "room_not_empty",
        f"room {room!r} has {seq} log entries: an import goes into a room with no "
        "history (its first part with after=0, each next part with after= the last "
        "seq of the one before); choose a new room name",
        id=frame_id,
        room=room,
    )


def _reused(room: str, frame_id: str) -> ProtocolError:
    return ProtocolError(
        "invalid_field",
        f"id {frame_id!r} was already used for another request in room {room!r}; "
        "use a new id for each request",
        id=frame_id,
        room=room,
    )


@dataclasses.dataclass(frozen=True)
class RoomLog:
    """A room's log position and its most recent messages (oldest first)."""

    epoch: str
    seq: int
    recent: list[LogEntry]


class StoreUnavailable(Exception):
    """The store cannot be reached right now; nothing was changed, retrying is safe."""


def new_epoch() -> str:
    """Return a fresh, unique epoch identifier."""
    return uuid.uuid4().hex[:16]


class HistoryStore(abc.ABC):
    """Where rooms' messages are kept. Implementations must keep ``seq`` gap-free.

    Appends for one room resolve in ``seq`` order, so the caller may broadcast each
    message as soon as its append returns. Stores are constructed with one argument,
    the configured database path, which a store that keeps no file ignores.

    **Append and publish.** A store shared by several processes (``publishes`` is
    set) publishes every entry it stores through that backplane in the same atomic
    step as the append: an entry is stored if and only if the other processes are
    sent it (in ``seq`` order, as the backplane's frame for the room). The caller
    delivers it only to its own process. A store that keeps its log to one process
    publishes nothing, and may only be used with the do-nothing backplane.
    """

    #: The backplane every appended entry is published through, or None.
    publishes: Backplane | None = None

    #: Set by the room registry: a store that can calls it with each entry it has
    #: just stored (not a retry's), in ``seq`` order, as soon as it is committed and
    #: before the appends return, so that the copies go out a loop turn sooner than
    #: the caller could send them. Delivery is idempotent per ``seq``: the caller
    #: still delivers what its append returns (a store that does not call it).
    stored: Callable[[LogEntry], None] | None = None

    @abc.abstractmethod
    async def open_room(self, room: str, recent: int) -> RoomLog:
        """Create the room's log if needed; return its position and last ``recent`` messages."""

    @abc.abstractmethod
    async def append(self, entry: Entry) -> Appended:
        """Store a message durably and return it with its ``seq``.

        If the same user already posted a message with the same client ``id`` in this
        room, return that message with ``duplicate=True`` instead of storing it again.
        A reply (``reply_to``) also adds one to its parent's ``replies`` and takes the
        parent's new count as ``parent_replies``, in the same step
        (:func:`~jupyter_chat_ext.conversation.check_parent` decides); a refusal is
        raised as :class:`~jupyter_chat_ext.protocol.ProtocolError`, nothing stored.
        """

    @abc.abstractmethod
    async def change(self, entry: ChangeEntry, max_reactions: int) -> Changed:
        """Apply a change to message ``entry.target`` and log it, in one atomic step.

        :func:`conversation.apply <jupyter_chat_ext.conversation.apply>` decides what
        the message becomes (or raises the refusal); the store gives the change the
        next ``seq``, sets the message's ``rev`` to it and keeps the new state (a
        deleted body is erased). A retried request (same user and ``id``) returns the
        stored change with ``duplicate=True`` and the target as it is now.
        """

    @abc.abstractmethod
    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[LogEntry]:
        """Return up to ``limit`` log entries in seq order, messages in their current state.

        With ``after``: the first entries (messages and changes) with a greater seq,
        each change carrying its target as it is now. With ``before``: the last
        messages (only) with a smaller seq.
        """

    @abc.abstractmethod
    async def get_access(self, room: str) -> tuple[str, list[str]] | None:
        """The (owner, members) of a private room, or None for a public one."""

    @abc.abstractmethod
    async def set_access(self, room: str, owner: str, members: list[str]) -> None:
        """Make ``room`` private to ``members`` (the owner among them), durably."""

    @abc.abstractmethod
    async def create_private(self, room: str, owner: str, members: list[str]) -> bool:
        """Make ``room`` private to ``members`` only if it is new; False if it is not.

        New means: no message was ever stored in it and it is not private already.
        The check and the write are one atomic step, for every process on the store.
        """

    @abc.abstractmethod
    async def set_read(self, username: str, room: str, seq: int) -> int:
        """Move ``username``'s read marker in ``room`` forward to ``seq``; return it now."""

    @abc.abstractmethod
    async def get_read(self, username: str, room: str) -> int:
        """``username``'s read marker in ``room`` (0: nothing read)."""

    @abc.abstractmethod
    async def unread_mentions(self, username: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages mentioning ``username`` past their read marker, newest first.

        Deleted messages are not among them; the caller checks room access.
        """

    async def rooms(self) -> dict[str, tuple[str, list[str]] | None]:
        """Every room with history, with its stored access (as :meth:`get_access`).

        The server filters them with :mod:`~jupyter_chat_ext.access` for a search of
        every room a user may read.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list its rooms")

    #: Seconds one search may run; past them it is cut short and answers the matches
    #: found by then (a scan of a big room for a rare word, or a query of many short
    #: prefixes on a big index, would otherwise hold the process for seconds).
    search_budget = 1.0

    async def search(self, query: Query, rooms: list[str], limit: int) -> list[Message]:
        """Up to ``limit`` messages of ``rooms`` that ``query`` matches, newest first.

        Messages in their current state; deleted ones are never found. This default
        scans each room's messages, newest first, through :meth:`fetch` (``SCAN_PAGE``
        at a time), until it has ``limit`` of that room's or reaches its beginning:
        a word in recent messages is found quickly, a rare one costs reading every
        message of the rooms. Scans run one at a time in a process, each within
        :attr:`search_budget` seconds (then it answers what it found). A store with
        an index overrides it.
        """
        async with self._scanning():
            deadline = time.monotonic() + self.search_budget
            found: list[Message] = []
            for room in rooms:
                found += await self._scan(room, query, limit, deadline)
                if time.monotonic() > deadline:
                    break
        found.sort(key=lambda m: newest_first(m.ts, m.room, m.seq))
        return found[:limit]

    def _scanning(self) -> asyncio.Semaphore:
        """The lock that makes a process's scans take turns (made on first use)."""
        lock: asyncio.Semaphore | None = getattr(self, "_scan_lock", None)
        if lock is None:
            lock = self._scan_lock = asyncio.Semaphore(1)
        return lock

    async def _scan(self, room: str, query: Query, limit: int, deadline: float) -> list[Message]:
        """The newest ``limit`` messages of ``room`` that ``query`` matches (newest first)."""
        matched: list[Message] = []
        before: int | None = None
        while time.monotonic() <= deadline:
            page = await self.fetch(room, before=before, limit=SCAN_PAGE)
            for entry in reversed(page):
                if isinstance(entry, Message) and not entry.deleted and query.matches(entry.body):
                    matched.append(entry)
                    if len(matched) == limit:
                        return matched
            if len(page) < SCAN_PAGE:
                return matched
            before = page[0].seq
        log.info("chat: a search took over %g s: answered with what it found", self.search_budget)
        return matched

    async def import_messages(
        self, room: str, after: int, messages: list[Message], frame_id: str
    ) -> int:
        """Store imported ``messages`` after entry ``after`` of ``room``; return its last seq.

        One atomic step: refused with ``room_not_empty`` unless the room's last seq is
        ``after`` (0: no history yet). ``messages`` are numbered ``after + 1`` on, in
        order, each with its own author, time and state (edited, deleted, reactions,
        mentions); replies are counted here
        (:func:`~jupyter_chat_ext.conversation.count_replies`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot import messages")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; pending appends are finished first."""


def supports(store: HistoryStore, method: str) -> bool:
    """Whether ``store`` implements one of the optional methods (``rooms``, ``import_messages``)."""
    return getattr(type(store), method) is not getattr(HistoryStore, method)


class MemoryHistory(HistoryStore):
    """History kept in this process only: for tests and throwaway servers."""

    def __init__(self, path: str | Path | None = None) -> None:
        # room -> (epoch, entries): entry seq N at index N - 1, messages as they are now
        self._logs: dict[str, tuple[str, list[LogEntry]]] = {}
        self._ids: dict[tuple[str, str, str], int] = {}  # (room, user, id) -> seq
        self._access: dict[str, tuple[str, list[str]]] = {}
        self._reads: dict[tuple[str, str], int] = {}

    async def get_access(self, room: str) -> tuple[str, list[str]] | None:
        """See :meth:`HistoryStore.get_access`."""
        return self._access.get(room)

    async def set_read(self, username: str, room: str, seq: int) -> int:
        """See :meth:`HistoryStore.set_read`."""
        key = (username, room)
        self._reads[key] = max(self._reads.get(key, 0), seq)
        return self._reads[key]

    async def get_read(self, username: str, room: str) -> int:
        """See :meth:`HistoryStore.get_read`."""
        return self._reads.get((username, room), 0)

    async def unread_mentions(self, username: str, limit: int) -> list[Message]:
        """See :meth:`HistoryStore.unread_mentions`."""
        found = [
            entry
            for room, (_, entries) in self._logs.items()
            for entry in entries
            if isinstance(entry, Message)
            and username in entry.mentions
            and not entry.deleted
            and entry.seq > self._reads.get((username, room), 0)
        ]
        found.sort(key=lambda m: m.ts, reverse=True)
        return found[:limit]

    async def set_access(self, room: str, owner: str, members: list[str]) -> None:
        """See :meth:`HistoryStore.set_access`."""
        self._access[room] = (owner, list(members))

    async def create_private(self, room: str, owner: str, members: list[str]) -> bool:
        """See :meth:`HistoryStore.create_private`."""
        if room in self._access or self._logs.get(room, ("", []))[1]:
            return False
        self._access[room] = (owner, list(members))
        return True

    def _log(self, room: str) -> tuple[str, list[LogEntry]]:
        return self._logs.setdefault(room, (new_epoch(), []))

    def _message(self, room: str, seq: int) -> Message | None:
        entries = self._log(room)[1]
        found = entries[seq - 1] if 1 <= seq <= len(entries) else None
        return found if isinstance(found, Message) else None

    def _now(self, entry: LogEntry) -> LogEntry:
        """``entry`` with a change's target as it is now."""
        if isinstance(entry, Change):
            target = self._message(entry.room, entry.target)
            assert target is not None
            return msgspec.structs.replace(entry, message=target)
        return entry

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        epoch, entries = self._log(room)
        recent_entries = [self._now(e) for e in entries[-recent:]] if recent else []
        return RoomLog(epoch, len(entries), recent_entries)

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append`."""
        key = (entry.room, entry.user.username, entry.id)
        _, entries = self._log(entry.room)
        if key in self._ids:
            stored = entries[self._ids[key] - 1]
            if not isinstance(stored, Message):
                raise _reused(entry.room, entry.id)
            return Appended(stored, True)
        seq = len(entries) + 1
        parent_replies = None
        if entry.reply_to is not None:
            parent = conversation.check_parent(
                self._message(entry.room, entry.reply_to), entry.room, entry.reply_to, entry.id
            )
            entries[parent.seq - 1] = conversation.stamped(parent, seq)
            parent_replies = parent.replies
        message = entry.message(seq, parent_replies)
        entries.append(message)
        self._ids[key] = seq
        return Appended(message, False)

    async def change(self, entry: ChangeEntry, max_reactions: int) -> Changed:
        """See :meth:`HistoryStore.change`."""
        key = (entry.room, entry.user.username, entry.id)
        _, entries = self._log(entry.room)
        if key in self._ids:
            stored = self._now(entries[self._ids[key] - 1])
            if not isinstance(stored, Change) or not conversation.is_retry(entry, stored):
                raise _reused(entry.room, entry.id)
            return Changed(stored, True)
        seq = len(entries) + 1
        target = self._message(entry.room, entry.target)
        message = conversation.stamped(conversation.apply(target, entry, max_reactions), seq)
        change = conversation.change_frame(entry, seq, message)
        entries[entry.target - 1] = message
        # Kept without the target's body: _now gives every reader the target as it is
        # now, and a body kept here would outlive a later edit or deletion.
        entries.append(
            msgspec.structs.replace(change, message=msgspec.structs.replace(message, body=""))
        )
        self._ids[key] = seq
        return Changed(
            change,
            False,
            conversation.newly_mentioned(target, message),
            conversation.released(target, message),
        )

    async def rooms(self) -> dict[str, tuple[str, list[str]] | None]:
        """See :meth:`HistoryStore.rooms`."""
        logs = self._logs.items()
        return {room: self._access.get(room) for room, (_, entries) in logs if entries}

    async def import_messages(
        self, room: str, after: int, messages: list[Message], frame_id: str
    ) -> int:
        """See :meth:`HistoryStore.import_messages`."""
        _, entries = self._log(room)
        if len(entries) != after:
            raise not_empty(room, len(entries), frame_id)
        keys = [(room, m.user.username, m.id) for m in messages]
        if any(key in self._ids for key in keys):
            raise _reused(room, next(k for k in keys if k in self._ids)[2])
        new, parents = conversation.count_replies(
            messages, lambda seq: self._message(room, seq), room, frame_id
        )
        for parent in parents.values():
            entries[parent.seq - 1] = parent
        entries.extend(new)
        self._ids.update({key: m.seq for key, m in zip(keys, new, strict=True)})
        return len(entries)

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[LogEntry]:
        """See :meth:`HistoryStore.fetch`."""
        _, entries = self._log(room)
        if after is not None:
            return [self._now(e) for e in entries[after : after + limit]]
        end = len(entries) if before is None else max(0, min(before - 1, len(entries)))
        found: list[LogEntry] = []
        for index in range(end - 1, -1, -1):
            if len(found) == limit:
                break
            if isinstance(entries[index], Message):
                found.append(entries[index])
        return found[::-1]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    username TEXT NOT NULL,
    user TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL,
    state TEXT,
    kind TEXT,
    target INTEGER,
    emoji TEXT,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages (room, username, client_id);
CREATE TABLE IF NOT EXISTS access (
    room TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    members TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reads (
    username TEXT NOT NULL,
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (username, room)
);
CREATE TABLE IF NOT EXISTS mentions (
    username TEXT NOT NULL,
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (username, room, seq)
);
"""

# Columns added for conversation changes (a database made before them gains them).
# A message row: kind NULL, its current body, ``state`` its other changeable fields
# (JSON, NULL while they are all at their defaults). A change row: kind, target,
# emoji; no body (an edit's new body lives in its target's row only).
_ADDED_COLUMNS = {"state": "TEXT", "kind": "TEXT", "target": "INTEGER", "emoji": "TEXT"}


class _State(msgspec.Struct, omit_defaults=True):
    """The changeable fields of a message, as kept in its row's ``state``."""

    reply_to: int | None = None
    replies: int = 0
    edited: float | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = msgspec.field(default_factory=dict)
    mentions: list[str] = msgspec.field(default_factory=list)
    rev: int = 0
    parent_replies: int | None = None
    attachment: Attachment | None = None


_STATE_FIELDS = _State.__struct_fields__
_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(_State)
_NO_STATE = _State()


def _state_of(message: Message) -> str | None:
    state = _State(**{name: getattr(message, name) for name in _STATE_FIELDS})
    return None if state == _NO_STATE else _state_encoder.encode(state).decode()


_COLUMNS = "room, seq, client_id, user, ts, body, state, kind, target, emoji"
_M_COLUMNS = ", ".join(f"m.{name}" for name in _COLUMNS.split(", "))
_ROWS_PER_STATEMENT = 500  # 11 values a row: well under SQLite's 32,766 variables
_user_encoder = msgspec.json.Encoder()


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _values(rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A VALUES list of placeholders for ``rows``, and their values in that order."""
    row = "(" + ", ".join("?" * len(rows[0])) + ")"
    return ",".join([row] * len(rows)), [value for r in rows for value in r]


def _stored_query(keys: list[tuple[str, str, str]]) -> tuple[str, list[Any]]:
    """SELECT username and the columns of the messages with these (room, user, id)s.

    Joined to a VALUES list so that each is found through the unique index.
    """
    values, params = _values(keys)
    return (
        f"WITH k (room, username, client_id) AS (VALUES {values}) "
        f"SELECT m.username, {_M_COLUMNS} FROM k CROSS JOIN messages AS m "
        "ON m.room = k.room AND m.username = k.username AND m.client_id = k.client_id",
        params,
    )


Row = tuple[str, int, str, str, float, str, "str | None", "str | None", "int | None", "str | None"]


def _row_to_message(row: Row) -> Message:
    room, seq, client_id, user, ts, body, state, _, _, _ = row
    fields = msgspec.structs.asdict(_state_decoder.decode(state)) if state else {}
    return Message(
        room=room, seq=seq, id=client_id, user=decode_user(user), ts=ts, body=body, **fields
    )


def _row_to_change(row: Row, target: Message) -> Change:
    room, seq, client_id, user, ts, _, _, kind, target_seq, emoji = row
    assert kind is not None and target_seq is not None
    return Change(
        room=room,
        seq=seq,
        id=client_id,
        user=decode_user(user),
        ts=ts,
        kind=kind,  # type: ignore[arg-type]  # written from a ChangeKind
        target=target_seq,
        message=target,
        emoji=emoji,
    )


# The full-text index of message bodies: contentless (it holds only the folded words of
# each body that search.indexed() gives it, never a body), so a message is in it exactly
# while it is not deleted and has words. FTS5's ascii tokenizer splits the folded words
# on the spaces between them, and nothing else (search.py folds). Its rowid is the
# message's search key, which grows with the message's time: FTS5 gives the matches
# newest first by itself, and a search stops after ``limit`` of them.
_FTS = """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body, content='', tokenize='ascii', detail=none, columnsize=0
);
CREATE TABLE search_keys (
    key INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE UNIQUE INDEX search_keys_by_message ON search_keys (room, seq);
"""
_FTS_READD = (
    "INSERT INTO messages_fts (rowid, body) "
    "SELECT key, ? FROM search_keys WHERE room = ? AND seq = ?"
)
_FTS_REMOVE = (
    "INSERT INTO messages_fts (messages_fts, rowid, body) "
    "SELECT 'delete', key, ? FROM search_keys WHERE room = ? AND seq = ?"
)
_IN_ROOMS = "room IN (SELECT value FROM json_each(?))"
_KEY_TICKS = 1024  # search keys per millisecond: messages of one millisecond stay apart
_KEY_MAX_TS = 9e12  # seconds: a later (or negative) time is clamped, keys fit 63 bits


def _key_of(ts: float) -> int:
    """The search key a message posted at ``ts`` would like (free ones are taken)."""
    return int(min(max(ts, 0.0), _KEY_MAX_TS) * 1000) * _KEY_TICKS


def _new_keys(db: sqlite3.Connection, stamps: list[float]) -> list[int]:
    """Unused search keys for messages posted at ``stamps``, in order, each its own."""
    wanted = [_key_of(ts) for ts in stamps]
    found = db.execute(
        "SELECT key FROM search_keys WHERE key IN (SELECT value FROM json_each(?))",
        (json.dumps(wanted),),
    )
    taken = {row[0] for row in found}
    known = set(wanted)  # keys whose use in the database is known
    keys = []
    for key in wanted:
        while key in taken:  # rare: another message of the same millisecond
            key += 1
            if key not in known:
                known.add(key)
                if db.execute("SELECT 1 FROM search_keys WHERE key = ?", (key,)).fetchone():
                    taken.add(key)
        taken.add(key)
        keys.append(key)
    return keys


def _add_to_index(db: sqlite3.Connection, added: list[tuple[float, str, str, int]]) -> None:
    """Index messages (ts, words, room, seq) that are not in the index yet."""
    keys = _new_keys(db, [ts for ts, _, _, _ in added])
    db.executemany(
        "INSERT INTO search_keys (key, room, seq) VALUES (?, ?, ?)",
        [(key, room, seq) for key, (_, _, room, seq) in zip(keys, added, strict=True)],
    )
    db.executemany(
        "INSERT INTO messages_fts (rowid, body) VALUES (?, ?)",
        [(key, words) for key, (_, words, _, _) in zip(keys, added, strict=True)],
    )


def _head(message: Message) -> tuple[str, int, str, str, float, str]:
    """The first columns of a message's row: room, seq, client id, user, ts, body."""
    user = _user_encoder.encode(message.user).decode()
    return (message.room, message.seq, message.id, user, message.ts, message.body)


def _words_of(message: Message | None) -> str:
    """What the index holds for ``message``: its folded words ("" when none, or deleted)."""
    return "" if message is None or message.deleted else indexed(message.body)


FTS_SECURE_DELETE = (3, 42, 0)  # the SQLite whose FTS5 can erase deleted words itself
SEARCH_CHECK_EVERY = 1000  # SQLite VM steps between checks of a search's time budget
BUSY_TIMEOUT_MS = 5000  # how long the writer waits for a lock (sqlite3's default)
FTS_MERGE_EVERY = 10.0  # seconds between merges of the search index that drop deleted words
CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints (off the writer's path)
WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL file keeps once it starts over
NEW_ROOMS_REMEMBERED = 10_000  # epochs of opened rooms with no message yet


class _Locked(Exception):
    """Another connection holds the database's write lock (nothing was written)."""


# Entries waiting to be written: (entry, max_reactions, the future of its result).
_Batch = list[tuple[Entry | ChangeEntry, int, asyncio.Future[Any]]]


class _Current:
    """Messages as they are in a batch being written: changed here, else as stored."""

    def __init__(
        self, store: SQLiteHistory, db: sqlite3.Connection, changed: dict[tuple[str, int], Message]
    ) -> None:
        self._store = store
        self._db = db
        self.changed = changed
        self._read: dict[tuple[str, int], Message | None] = {}

    def get(self, room: str, seq: int) -> Message | None:
        key = (room, seq)
        if key in self.changed:
            return self.changed[key]
        if key not in self._read:
            self._read[key] = self._store._message_sync(self._db, room, seq)
        return self._read[key]

    def stored(self, room: str, seq: int) -> Message | None:
        """The message as it was stored before this batch (if the batch read it)."""
        return self._read.get((room, seq))


class SQLiteHistory(HistoryStore):
    """History in one SQLite file (WAL); appends written on the event loop's thread.

    The appends and changes that arrive in one turn of the event loop are committed
    together, in one transaction, at the end of that turn, on the loop's own thread:
    a commit in WAL mode with ``synchronous=NORMAL`` is a ``write()`` to the WAL (no
    fsync), a fraction of a millisecond, and a thread would cost far more: each SQLite
    statement it runs hands the GIL over and must win it back from the busy loop (up
    to a switch interval, 5 ms, each time). A committed message survives a crash of
    the process (the OS has it); with :attr:`fsync` set it also survives a power loss
    or an OS crash: the WAL is synced, on the store's thread, before the batch is
    acknowledged (appends arriving meanwhile are committed together next).

    Everything else that uses the database connection (reads, imports, merges of the
    search index, WAL truncations, the first connection) runs on the store's single
    thread, one job after another; a batch is written on the loop only while no such
    job is under way, else it is one more job for the thread, in turn. Checkpoints
    (copying the WAL into the database file, with its own fsync) run on a thread of
    their own, so that no append waits for one.

    Search goes through an FTS5 index of the bodies' words, kept in step with every
    insert, edit and deletion in the writer's transaction (a database made before it
    gains it, and is indexed once, when opened). Without FTS5 in the SQLite library
    (or with ``full_text`` off), a search scans the rooms' messages instead. Searches
    run on a read-only connection and a thread of their own, never the writer's (a
    costly query must not hold anyone's sends up), one at a time and each within
    :attr:`search_budget` seconds.
    """

    #: Index message bodies for search (FTS5); off: searches scan (for comparison).
    full_text = True

    #: Sync the WAL to disk before acknowledging (``history_fsync``): a power loss
    #: then loses no acknowledged message. Off, the last second's may be lost (never
    #: on a crash of the process alone; the database stays consistent either way).
    fsync = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"cannot create the chat history folder {self.path.parent}: {exc.strerror}; "
                "set c.ChatExtensionApp.db_path to a writable file path"
            ) from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-history")
        # Searches: their own thread and read-only connection, apart from the writer.
        self._searcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-search")
        self._search_db: sqlite3.Connection | None = None
        self._truncate_due = False  # a deletion's WAL truncation waits for a search to end
        self._searching = False  # a search is reading (on the search thread)
        self._db: sqlite3.Connection | None = None
        self._seqs: dict[str, int] = {}
        self._new_epochs: dict[str, str] = {}  # rooms opened but with no message yet
        self._pending: _Batch = []
        self._write_due = False  # a write of the pending entries is scheduled
        self._writing = False  # a batch is being written or synced on the thread
        self._thread_jobs = 0  # jobs given to the store's thread and not finished
        self._drained: asyncio.Future[None] | None = None  # close() waits for the writes
        self._wal_fd: int | None = None  # the WAL file, for fsync
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._fts = False  # the index exists (known once connected)
        self._fts_erases = False  # FTS5 erases deleted words itself (its secure-delete)
        self._merged_at = 0.0  # when the index was last merged to drop deleted words
        self._merge_due = False  # a deletion since then waits for the next merge
        self._merge_timer: asyncio.TimerHandle | None = None

    # All methods below whose name ends in _sync run on the store's single thread.

    def _connect_sync(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # A commit writes the WAL and does not sync it (that is `fsync`'s, on the
            # thread); a checkpoint syncs it first, then the database file.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            # Each time the WAL starts over, a file grown by a burst is cut back to this.
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.execute("PRAGMA secure_delete=ON")  # a deleted body's bytes are overwritten
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
            self._fts = self.full_text and self._index_sync(db)
            if self._fts and sqlite3.sqlite_version_info >= FTS_SECURE_DELETE:
                # Deleted words leave the index at once: no merge of it per deletion.
                # (An older SQLite cannot read its index then: it builds it again.)
                db.execute(
                    "INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1)"
                )
                self._fts_erases = True
            self._db = db
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="chat-history-checkpoint", daemon=True
            )
            self._checkpointer.start()
        return self._db

    def _index_sync(self, db: sqlite3.Connection) -> bool:
        """Have the full-text index (made and filled once, if new); False without FTS5."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'search_keys'").fetchone():
            try:
                db.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'a' LIMIT 1")
                return True
            except sqlite3.OperationalError as exc:  # written by a newer SQLite, say
                log.warning("chat: the search index cannot be read (%s): rebuilding it", exc)
                # FTS5 drops only a table of a format it knows: say it is one, then drop.
                db.execute("UPDATE messages_fts_config SET v = 4 WHERE k = 'version'")
                db.execute("DROP TABLE messages_fts")
                db.execute("DROP TABLE search_keys")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _FTS.split(";"):
                if statement.strip():
                    db.execute(statement)
        except sqlite3.OperationalError as exc:  # "no such module: fts5"
            db.execute("ROLLBACK")
            log.warning("chat: no full-text search index (%s): searches scan the messages", exc)
            return False
        try:
            rows = db.execute(
                "SELECT ts, body, room, seq FROM messages WHERE kind IS NULL AND body != ''"
            )
            while batch := rows.fetchmany(_ROWS_PER_STATEMENT * 10):
                added = [(ts, indexed(body), room, seq) for ts, body, room, seq in batch]
                _add_to_index(db, [each for each in added if each[1]])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def _reindex_sync(
        self,
        db: sqlite3.Connection,
        created: list[Message],
        changed: dict[tuple[str, int], Message],
        current: _Current,
    ) -> bool:
        """Keep the index in step with a batch; True if words of a deleted body left it."""
        add: list[tuple[float, str, str, int]] = []  # not in the index yet
        readd: list[tuple[str, str, int]] = []  # in it, with other words now
        remove: list[tuple[str, str, int]] = []  # the words it holds now
        unkey: list[tuple[str, int]] = []  # in it no more
        for message in created:
            words = _words_of(changed.get((message.room, message.seq), message))
            if words:
                add.append((message.ts, words, message.room, message.seq))
        new = {(m.room, m.seq) for m in created}
        erased = False
        for key, message in changed.items():
            before = current.stored(*key)
            if key in new or before is None:
                continue
            old, words = _words_of(before), _words_of(message)
            if old == words:
                continue  # a reaction or a reply: the words are the same
            if old:
                remove.append((old, *key))
                erased = erased or message.deleted
                if words:
                    readd.append((words, *key))
                else:
                    unkey.append(key)
            elif words:
                add.append((message.ts, words, *key))
        db.executemany(_FTS_REMOVE, remove)
        db.executemany(_FTS_READD, readd)
        db.executemany("DELETE FROM search_keys WHERE room = ? AND seq = ?", unkey)
        _add_to_index(db, add)
        return erased

    def _checkpoints(self) -> None:
        """Copy the WAL into the database every second, never blocking the writer.

        A WAL truncation a deletion could not do (a search was reading) is tried
        again here, without waiting for readers, until it is done.
        """
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY):
                try:
                    if self._truncate_due:
                        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                        self._truncate_due = bool(busy)
                    else:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or transient: the next round catches up
                    continue
        finally:
            db.close()

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(func, args, future.set_result, future.set_exception, future.cancelled)
        return await future

    def _submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        on_result: Callable[[T], object],
        on_error: Callable[[BaseException], object],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run ``func(*args)`` on the store's thread, after the jobs given to it before.

        Its outcome is handed to ``on_result`` or ``on_error`` on the loop, in the
        same callback that counts the job finished: only the thread's own end of a
        job frees the connection for a write on the loop (a caller that stopped
        waiting does not).
        """
        loop = asyncio.get_running_loop()

        def finished(done: concurrent.futures.Future[T]) -> None:
            self._thread_jobs -= 1
            if not cancelled():
                error = done.exception()
                if error is None:
                    on_result(done.result())
                else:
                    on_error(error)
            if self._pending and not self._write_due:
                self._write_pending()

        self._thread_jobs += 1
        job = self._executor.submit(func, *args)
        job.add_done_callback(lambda done: loop.call_soon_threadsafe(finished, done))

    def _open_room_sync(self, room: str, recent: int) -> RoomLog:
        db = self._connect_sync()
        row = db.execute("SELECT epoch, seq FROM rooms WHERE name = ?", (room,)).fetchone()
        if row is None:
            # Written with the room's first message: joining names writes nothing.
            row = (self._new_epochs.setdefault(room, new_epoch()), 0)
            while len(self._new_epochs) > NEW_ROOMS_REMEMBERED:
                del self._new_epochs[next(iter(self._new_epochs))]
        epoch, seq = row
        self._seqs[room] = seq
        return RoomLog(epoch, seq, self._fetch_sync(room, max(0, seq - recent), None, recent))

    def _write_batch_sync(
        self, batch: list[tuple[Entry | ChangeEntry, int]], wait: bool = True
    ) -> tuple[list[Appended | Changed | ProtocolError], bool]:
        """Commit a batch (on the loop, or on the thread when it had work under way).

        Returns each entry's result, and whether the batch deleted a body (the WAL
        is then cut before it is acknowledged). A few statements per batch, whatever
        its size: each one costs the loop time (or, on the thread, a GIL hand-off).
        Without ``wait``, raises :class:`_Locked` at once, nothing written, if another
        connection holds the write lock (on the loop, nothing may wait for it).
        """
        db = self._connect_sync()
        seqs: dict[str, int] = {}
        results: list[Appended | Changed | ProtocolError] = []
        rows: list[tuple[Any, ...]] = []
        changed: dict[tuple[str, int], Message] = {}  # messages whose state changed here
        mentioned: list[Message] = []  # new messages with mentions
        created: list[Message] = []  # new messages
        scrub = False
        self._begin_sync(db, wait)
        try:
            stored = self._stored_sync(db, [entry for entry, _ in batch])
            current = _Current(self, db, changed)
            for entry, max_reactions in batch:
                key = (entry.room, entry.user.username, entry.id)
                if key in stored:  # a retried request: the entry it already made
                    results.append(self._retried(entry, stored[key], current))
                    continue
                if entry.room not in seqs:
                    seqs[entry.room] = self._seqs.get(entry.room) or self._read_seq_sync(entry.room)
                seq = seqs[entry.room] + 1
                user = _user_encoder.encode(entry.user).decode()
                try:
                    if isinstance(entry, Entry):
                        message = self._new_message(entry, seq, current)
                        head = (entry.room, seq, entry.id, user, entry.ts, entry.body)
                        rows.append((*head, _state_of(message), None, None, None, key[1]))
                        result: Appended | Changed = Appended(message, False)
                        stored[key] = message
                        created.append(message)
                        if message.mentions:
                            mentioned.append(message)
                    else:
                        target = current.get(entry.room, entry.target)
                        new = conversation.apply(target, entry, max_reactions)
                        new = conversation.stamped(new, seq)
                        changed[(entry.room, entry.target)] = new
                        scrub = scrub or entry.kind == "delete"
                        change = conversation.change_frame(entry, seq, new)
                        head = (entry.room, seq, entry.id, user, entry.ts, "")
                        rows.append((*head, None, entry.kind, entry.target, entry.emoji, key[1]))
                        result = Changed(
                            change,
                            False,
                            conversation.newly_mentioned(target, new),
                            conversation.released(target, new),
                        )
                        stored[key] = change
                except ProtocolError as exc:
                    results.append(exc)
                    continue
                seqs[entry.room] = seq
                results.append(result)
            for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
                values, params = _values(chunk)
                db.execute(f"INSERT INTO messages ({_COLUMNS}, username) VALUES {values}", params)
            db.executemany(
                "UPDATE messages SET body = ?, state = ? WHERE room = ? AND seq = ?",
                [(m.body, _state_of(m), room, seq) for (room, seq), m in changed.items()],
            )
            # Who each message mentions now (an edit may change it; a deletion clears it).
            db.executemany(
                "DELETE FROM mentions WHERE room = ? AND seq = ?", [key for key in changed]
            )
            db.executemany(
                "INSERT OR IGNORE INTO mentions (username, room, seq) VALUES (?, ?, ?)",
                [
                    (name, m.room, m.seq)
                    for m in [*mentioned, *changed.values()]
                    for name in m.mentions
                ],
            )
            erased = self._fts and self._reindex_sync(db, created, changed, current)
            # A deleted body's words stay in the index's older segments until they
            # are merged (secure_delete zeroes the pages then): see _after_commit_sync.
            merge = erased and not self._fts_erases
            db.executemany(
                "INSERT INTO rooms (name, epoch, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                [(r, self._new_epochs.pop(r, None) or new_epoch(), s) for r, s in seqs.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._seqs.update(seqs)
        self._merge_due = self._merge_due or merge
        if scrub:  # an earlier change of a message this batch deleted carries no body
            results = [
                dataclasses.replace(r, change=msgspec.structs.replace(r.change, message=final))
                if isinstance(r, Changed)
                and (final := changed.get((r.change.room, r.change.target))) is not None
                and final.deleted
                else r
                for r in results
            ]
        return results, scrub

    @staticmethod
    def _begin_sync(db: sqlite3.Connection, wait: bool) -> None:
        """BEGIN IMMEDIATE: take the write lock, waiting for it only if ``wait``.

        In WAL mode the write lock is the only one a writer waits for: once it has it,
        its statements and COMMIT never wait for another connection.
        """
        if wait:
            db.execute("BEGIN IMMEDIATE")
            return
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if db.in_transaction or "locked" not in str(exc):
                raise
            raise _Locked from exc
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _after_commit_sync(self, scrub: bool) -> None:
        """What a committed batch waits for before it is acknowledged (on the thread).

        A merge of the search index that a deletion made due (it costs the whole
        index: at most one per FTS_MERGE_EVERY seconds, so that a stream of deletions
        cannot hold every send up; a later one waits for its timer); a deleted body's
        old page images copied out of the WAL and the WAL cut; with :attr:`fsync`,
        the WAL synced to disk.
        """
        db = self._connect_sync()
        if self._merge_due and time.monotonic() - self._merged_at >= FTS_MERGE_EVERY:
            self._merge_index_sync(db)
        if scrub:
            self._truncate_wal_sync(db)
        if self.fsync:
            if self._wal_fd is None:
                self._wal_fd = os.open(f"{self.path}-wal", os.O_RDWR)
            os.fsync(self._wal_fd)

    def _write_and_settle_sync(
        self, batch: list[tuple[Entry | ChangeEntry, int]]
    ) -> list[Appended | Changed | ProtocolError]:
        """A batch written on the thread: committed, then what the commit waits for."""
        results, scrub = self._write_batch_sync(batch)
        self._after_commit_sync(scrub)
        return results

    def _truncate_wal_sync(self, db: sqlite3.Connection) -> None:
        """Checkpoint the whole WAL and cut it, without waiting for a search to end.

        A search reading the WAL keeps it from being cut: waiting for it would hold
        the writer (and every send) up, so while one runs the checkpointer thread
        tries again later. Otherwise this waits as usual (for a checkpoint under way).
        """
        if not self._searching:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        db.execute("PRAGMA busy_timeout = 0")
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:  # locked by the checkpointer thread now
            busy = 1
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if busy:
            self._truncate_due = True

    @staticmethod
    def _new_message(entry: Entry, seq: int, current: _Current) -> Message:
        parent_replies = None
        if entry.reply_to is not None:
            parent = conversation.check_parent(
                current.get(entry.room, entry.reply_to), entry.room, entry.reply_to, entry.id
            )
            current.changed[(entry.room, parent.seq)] = conversation.stamped(parent, seq)
            parent_replies = parent.replies
        return entry.message(seq, parent_replies)

    @staticmethod
    def _retried(
        entry: Entry | ChangeEntry, stored: LogEntry, current: _Current
    ) -> Appended | Changed | ProtocolError:
        if isinstance(entry, Entry):
            if isinstance(stored, Message):
                return Appended(stored, True)
        elif isinstance(stored, Change) and conversation.is_retry(entry, stored):
            target = current.get(stored.room, stored.target)
            assert target is not None
            return Changed(msgspec.structs.replace(stored, message=target), True)
        return _reused(entry.room, entry.id)

    def _stored_sync(
        self, db: sqlite3.Connection, batch: list[Entry | ChangeEntry]
    ) -> dict[tuple[str, str, str], LogEntry]:
        """The entries already stored for the batch's (room, user, client id)s."""
        keys = list({(e.room, e.user.username, e.id) for e in batch})
        stored: dict[tuple[str, str, str], LogEntry] = {}
        for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
            for row in db.execute(*_stored_query(chunk)):
                found = self._entries_sync(db, [row[1:]])[0]
                stored[(found.room, row[0], found.id)] = found
        return stored

    def _message_sync(self, db: sqlite3.Connection, room: str, seq: int) -> Message | None:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq = ? AND kind IS NULL",
            (room, seq),
        ).fetchone()
        return None if row is None else _row_to_message(row)

    def _entries_sync(self, db: sqlite3.Connection, rows: list[Row]) -> list[LogEntry]:
        """Rows as log entries, each change carrying its target as it is now."""
        targets: dict[tuple[str, int], Message] = {}
        entries: list[LogEntry] = []
        for row in rows:
            if row[7] is None:
                message = _row_to_message(row)
                targets[(message.room, message.seq)] = message
        for row in rows:
            if row[7] is None:
                entries.append(targets[(row[0], row[1])])
                continue
            key = (row[0], row[8])
            assert key[1] is not None
            if key not in targets:
                found = self._message_sync(db, row[0], key[1])
                assert found is not None, "a change's target is always stored"
                targets[key] = found  # type: ignore[index]
            entries.append(_row_to_change(row, targets[key]))  # type: ignore[index]
        return entries

    def _read_seq_sync(self, room: str) -> int:
        db = self._connect_sync()
        row = db.execute("SELECT seq FROM rooms WHERE name = ?", (room,)).fetchone()
        return 0 if row is None else int(row[0])

    def _fetch_sync(
        self, room: str, after: int | None, before: int | None, limit: int
    ) -> list[LogEntry]:
        db = self._connect_sync()
        if after is not None:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room, after, limit),
            ).fetchall()
        else:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq < ? AND kind IS NULL "
                "ORDER BY seq DESC LIMIT ?",
                (room, before if before is not None else 2**62, limit),
            ).fetchall()
            rows.reverse()
        return self._entries_sync(db, rows)

    def _get_access_sync(self, room: str) -> tuple[str, list[str]] | None:
        db = self._connect_sync()
        row = db.execute("SELECT owner, members FROM access WHERE room = ?", (room,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def _set_access_sync(self, room: str, owner: str, members: list[str]) -> None:
        db = self._connect_sync()
        db.execute(
            "INSERT INTO access (room, owner, members) VALUES (?, ?, ?) "
            "ON CONFLICT (room) DO UPDATE SET owner = excluded.owner, members = excluded.members",
            (room, owner, json.dumps(members)),
        )

    def _create_private_sync(self, room: str, owner: str, members: list[str]) -> bool:
        db = self._connect_sync()
        cursor = db.execute(
            "INSERT INTO access (room, owner, members) SELECT ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM messages WHERE room = ?) "
            "AND NOT EXISTS (SELECT 1 FROM access WHERE room = ?)",
            (room, owner, json.dumps(members), room, room),
        )
        return cursor.rowcount == 1

    def _set_read_sync(self, username: str, room: str, seq: int) -> int:
        db = self._connect_sync()
        db.execute(
            "INSERT INTO reads (username, room, seq) VALUES (?, ?, ?) ON CONFLICT "
            "(username, room) DO UPDATE SET seq = max(seq, excluded.seq)",
            (username, room, seq),
        )
        return self._get_read_sync(username, room)

    def _get_read_sync(self, username: str, room: str) -> int:
        db = self._connect_sync()
        row = db.execute(
            "SELECT seq FROM reads WHERE username = ? AND room = ?", (username, room)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _unread_mentions_sync(self, username: str, limit: int) -> list[Message]:
        db = self._connect_sync()
        rows = db.execute(
            f"SELECT {_M_COLUMNS} FROM mentions AS x "
            "JOIN messages AS m ON m.room = x.room AND m.seq = x.seq "
            "LEFT JOIN reads AS r ON r.username = x.username AND r.room = x.room "
            "WHERE x.username = ? AND x.seq > coalesce(r.seq, 0) "
            "ORDER BY m.ts DESC LIMIT ?",
            (username, limit),
        ).fetchall()
        return [_row_to_message(row) for row in rows]

    def _rooms_sync(self) -> dict[str, tuple[str, list[str]] | None]:
        db = self._connect_sync()
        rows = db.execute(
            "SELECT r.name, a.owner, a.members FROM rooms AS r LEFT JOIN access AS a "
            "ON a.room = r.name"
        ).fetchall()
        return {n: None if owner is None else (owner, json.loads(m)) for n, owner, m in rows}

    def _search_db_sync(self) -> sqlite3.Connection:
        """The searches' read-only connection (made on the search thread, once)."""
        if self._search_db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA query_only = ON")
            self._search_db = db
        return self._search_db

    def _search_sync(self, query: Query, rooms: list[str], limit: int) -> list[Message]:
        db = self._search_db_sync()
        deadline = time.monotonic() + self.search_budget
        db.set_progress_handler(lambda: time.monotonic() > deadline, SEARCH_CHECK_EVERY)
        found: list[Message] = []
        self._searching = True
        try:
            self._matches_sync(db, query, rooms, limit, found)
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            log.info(
                "chat: a search took over %g s: answered with what it found", self.search_budget
            )
        finally:
            self._searching = False
            db.set_progress_handler(None, 0)
        return found

    def _matches_sync(
        self,
        db: sqlite3.Connection,
        query: Query,
        rooms: list[str],
        limit: int,
        found: list[Message],
    ) -> None:
        """Append to ``found`` the matches, newest first, as they come (up to ``limit``)."""
        order = "ORDER BY m.ts DESC, m.room, m.seq DESC"
        if self._fts:
            # Newest first straight from the index (its rowids follow time): no sort.
            cursor = db.execute(
                f"SELECT {_M_COLUMNS} FROM messages_fts "
                "JOIN search_keys AS k ON k.key = messages_fts.rowid "
                "JOIN messages AS m ON m.room = k.room AND m.seq = k.seq "
                f"WHERE messages_fts MATCH ? AND k.{_IN_ROOMS} "
                "ORDER BY messages_fts.rowid DESC LIMIT ?",
                (query.fts(), json.dumps(rooms), limit),
            )
            for row in cursor:
                message = _row_to_message(row)
                if not message.deleted:
                    found.append(message)
            return
        # No index: every message of the rooms, newest first, until enough match.
        cursor = db.execute(
            f"SELECT {_M_COLUMNS} FROM messages AS m WHERE m.kind IS NULL AND m.body != '' "
            f"AND m.{_IN_ROOMS} {order}",
            (json.dumps(rooms),),
        )
        try:
            for row in cursor:
                if query.matches(row[5]):
                    found.append(_row_to_message(row))
                    if len(found) == limit:
                        break
        finally:
            cursor.close()

    def _import_sync(self, room: str, after: int, messages: list[Message], frame_id: str) -> int:
        db = self._connect_sync()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT seq FROM rooms WHERE name = ?", (room,)).fetchone()
            seq = 0 if row is None else int(row[0])
            if seq != after:
                raise not_empty(room, seq, frame_id)
            current = _Current(self, db, {})
            new, parents = conversation.count_replies(
                messages, lambda target: current.get(room, target), room, frame_id
            )
            rows = [(*_head(m), _state_of(m), None, None, None, m.user.username) for m in new]
            for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
                values, params = _values(chunk)
                db.execute(f"INSERT INTO messages ({_COLUMNS}, username) VALUES {values}", params)
            db.executemany(
                "UPDATE messages SET state = ? WHERE room = ? AND seq = ?",
                [(_state_of(m), room, m.seq) for m in parents.values()],
            )
            db.executemany(  # imported mentions are unread, as in every store
                "INSERT OR IGNORE INTO mentions (username, room, seq) VALUES (?, ?, ?)",
                [(name, room, m.seq) for m in new if not m.deleted for name in m.mentions],
            )
            if self._fts:
                _add_to_index(db, [(m.ts, w, room, m.seq) for m in new if (w := _words_of(m))])
            last = after + len(new)
            db.execute(
                "INSERT INTO rooms (name, epoch, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                (room, self._new_epochs.pop(room, None) or new_epoch(), last),
            )
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            raise ProtocolError(
                "invalid_field",
                "an imported message has the id of another message of its author in "
                f"room {room!r}: each (user, id) may appear once",
                id=frame_id,
                room=room,
            ) from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._seqs[room] = last
        return last

    async def rooms(self) -> dict[str, tuple[str, list[str]] | None]:
        """See :meth:`HistoryStore.rooms`."""
        found: dict[str, tuple[str, list[str]] | None] = await self._run(self._rooms_sync)
        return found

    async def search(self, query: Query, rooms: list[str], limit: int) -> list[Message]:
        """See :meth:`HistoryStore.search`: through the full-text index (one query)."""
        await self._run(self._connect_sync)  # the schema and its index exist
        loop = asyncio.get_running_loop()
        found: list[Message] = await loop.run_in_executor(
            self._searcher, self._search_sync, query, rooms, limit
        )
        return found

    async def import_messages(
        self, room: str, after: int, messages: list[Message], frame_id: str
    ) -> int:
        """See :meth:`HistoryStore.import_messages` (one transaction on the writer's thread)."""
        last: int = await self._run(self._import_sync, room, after, messages, frame_id)
        return last

    async def set_read(self, username: str, room: str, seq: int) -> int:
        """See :meth:`HistoryStore.set_read`."""
        marker: int = await self._run(self._set_read_sync, username, room, seq)
        return marker

    async def get_read(self, username: str, room: str) -> int:
        """See :meth:`HistoryStore.get_read`."""
        marker: int = await self._run(self._get_read_sync, username, room)
        return marker

    async def unread_mentions(self, username: str, limit: int) -> list[Message]:
        """See :meth:`HistoryStore.unread_mentions`."""
        found: list[Message] = await self._run(self._unread_mentions_sync, username, limit)
        return found

    async def create_private(self, room: str, owner: str, members: list[str]) -> bool:
        """See :meth:`HistoryStore.create_private` (one statement on the store's thread)."""
        created: bool = await self._run(self._create_private_sync, room, owner, members)
        return created

    async def get_access(self, room: str) -> tuple[str, list[str]] | None:
        """See :meth:`HistoryStore.get_access`."""
        return await self._run(self._get_access_sync, room)

    async def set_access(self, room: str, owner: str, members: list[str]) -> None:
        """See :meth:`HistoryStore.set_access`."""
        await self._run(self._set_access_sync, room, owner, members)

    def _merge_index_sync(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
        self._merged_at = time.monotonic()
        self._merge_due = False

    def _merge_due_sync(self) -> None:
        """The merge a deletion left for later (its own transaction)."""
        if self._merge_due and self._db is not None:
            self._merge_index_sync(self._db)
            self._truncate_wal_sync(self._db)

    def _close_search_sync(self) -> None:
        if self._search_db is not None:
            self._search_db.close()
            self._search_db = None

    def _close_sync(self) -> None:
        self._merge_due_sync()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._db is not None:
            # No search reads any more: a truncation that waited for one is done now.
            mode = "TRUNCATE" if self._truncate_due else "PASSIVE"
            self._db.execute(f"PRAGMA wal_checkpoint({mode})")
            self._truncate_due = False
            self._db.close()
            self._db = None

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        log: RoomLog = await self._run(self._open_room_sync, room, recent)
        return log

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append`; batched with concurrent appends."""
        appended: Appended = await self._queue(entry, 0)
        return appended

    async def change(self, entry: ChangeEntry, max_reactions: int) -> Changed:
        """See :meth:`HistoryStore.change`; batched with concurrent appends."""
        changed: Changed = await self._queue(entry, max_reactions)
        return changed

    async def _queue(self, entry: Entry | ChangeEntry, max_reactions: int) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((entry, max_reactions, future))
        if not self._write_due:
            # At the end of this loop turn: what every connection sent in it, together.
            self._write_due = True
            loop.call_soon(self._write_pending)
        return await future

    def _write_pending(self) -> None:
        """Commit the pending entries: on the loop if the connection is free.

        While a batch is written or synced on the thread, the entries wait for it
        (and go together, next). While the thread has other work (a read), or
        another process holds the write lock, the batch is one more job for the
        thread, in turn (so that reads cannot starve writes, nor the loop wait).
        """
        self._write_due = False
        if not self._pending or self._writing:
            return
        batch, self._pending = self._pending, []
        work = [(entry, limit) for entry, limit, _ in batch]
        self._writing = True
        if self._thread_jobs or self._db is None:
            self._write_on_thread(batch, work)
            return
        try:
            results, scrub = self._write_batch_sync(work, wait=False)
        except _Locked:
            self._write_on_thread(batch, work)
            return
        except Exception as exc:
            self._fail(batch, exc)
            return
        if not (scrub or self.fsync or self._merge_due_now()):
            self._settle(batch, results)
            return
        self._submit(
            self._after_commit_sync,
            (scrub,),
            lambda _: self._settle(batch, results),
            lambda error: self._fail(batch, error),
        )

    def _write_on_thread(self, batch: _Batch, work: list[tuple[Entry | ChangeEntry, int]]) -> None:
        self._submit(
            self._write_and_settle_sync,
            (work,),
            lambda results: self._settle(batch, results),
            lambda error: self._fail(batch, error),
        )

    def _merge_due_now(self) -> bool:
        return self._merge_due and time.monotonic() - self._merged_at >= FTS_MERGE_EVERY

    def _settle(
        self,
        batch: _Batch,
        results: list[Appended | Changed | ProtocolError],
    ) -> None:
        """Deliver a committed batch, then answer its appends (in their rooms' seq order)."""
        self._writing = False
        if self.stored is not None:
            for result in results:
                if isinstance(result, Appended | Changed) and not result.duplicate:
                    entry = result.message if isinstance(result, Appended) else result.change
                    try:
                        self.stored(entry)
                    except Exception:  # one room's failure must not keep the others' answers
                        log.exception("chat: delivering %s/%s failed", entry.room, entry.seq)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ProtocolError):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._merge_due and self._merge_timer is None:
            wait = max(0.0, self._merged_at + FTS_MERGE_EVERY - time.monotonic())
            loop = asyncio.get_running_loop()
            self._merge_timer = loop.call_later(wait, self._merge_later)
        self._written()

    def _fail(
        self,
        batch: _Batch,
        error: BaseException,
    ) -> None:
        """A batch that could not be written (or synced): each append gets the error."""
        self._writing = False
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)
        self._written()

    def _written(self) -> None:
        """After a batch: write what waited for it; wake close() once nothing waits."""
        if self._pending and not self._write_due:
            self._write_pending()
        drained = self._drained
        if drained is not None and not drained.done() and not (self._pending or self._writing):
            drained.set_result(None)

    def _merge_later(self) -> None:
        self._merge_timer = None
        self._submit(
            self._merge_due_sync,
            (),
            lambda _: None,
            lambda error: log.warning("chat: merging the search index failed: %s", error),
        )

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[LogEntry]:
        """See :meth:`HistoryStore.fetch`."""
        entries: list[LogEntry] = await self._run(self._fetch_sync, room, after, before, limit)
        return entries

    async def close(self) -> None:
        """Finish pending appends, then close the database."""
        if self._pending or self._writing:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._merge_timer is not None:
            self._merge_timer.cancel()  # the merge is done now, by _close_sync
            self._merge_timer = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._searcher, self._close_search_sync)
        self._searcher.shutdown(wait=True)
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
