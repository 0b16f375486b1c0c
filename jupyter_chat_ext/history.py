"""Durable per-room message logs: the :class:`HistoryStore` interface and its stores.

A room's log is identified by an ``epoch`` (a new one whenever the log is created or
reset) and numbered by a gap-free ``seq``. The store assigns ``seq`` atomically with
the append and de-duplicates retried sends by ``(user, client id)``, so a message is
acknowledged only once it is durable and never posted twice.
"""

from __future__ import annotations

import abc
import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from .backplane import Backplane
from .protocol import Message, User, decode_user

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """A message to append, before the store gives it a ``seq``."""

    room: str
    id: str
    user: User
    ts: float
    body: str


@dataclass(frozen=True)
class Appended:
    """The result of an append: the stored message, and whether it was a retry."""

    message: Message
    duplicate: bool


@dataclass(frozen=True)
class RoomLog:
    """A room's log position and its most recent messages (oldest first)."""

    epoch: str
    seq: int
    recent: list[Message]


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

    @abc.abstractmethod
    async def open_room(self, room: str, recent: int) -> RoomLog:
        """Create the room's log if needed; return its position and last ``recent`` messages."""

    @abc.abstractmethod
    async def append(self, entry: Entry) -> Appended:
        """Store a message durably and return it with its ``seq``.

        If the same user already posted a message with the same client ``id`` in this
        room, return that message with ``duplicate=True`` instead of storing it again.
        """

    @abc.abstractmethod
    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Message]:
        """Return up to ``limit`` messages in seq order.

        With ``after``: the first messages with a greater seq. With ``before``: the
        last messages with a smaller seq.
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

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; pending appends are finished first."""


class MemoryHistory(HistoryStore):
    """History kept in this process only: for tests and throwaway servers."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._logs: dict[str, tuple[str, list[Message]]] = {}
        self._ids: dict[tuple[str, str, str], Message] = {}
        self._access: dict[str, tuple[str, list[str]]] = {}

    async def get_access(self, room: str) -> tuple[str, list[str]] | None:
        """See :meth:`HistoryStore.get_access`."""
        return self._access.get(room)

    async def set_access(self, room: str, owner: str, members: list[str]) -> None:
        """See :meth:`HistoryStore.set_access`."""
        self._access[room] = (owner, list(members))

    async def create_private(self, room: str, owner: str, members: list[str]) -> bool:
        """See :meth:`HistoryStore.create_private`."""
        if room in self._access or self._logs.get(room, ("", []))[1]:
            return False
        self._access[room] = (owner, list(members))
        return True

    def _log(self, room: str) -> tuple[str, list[Message]]:
        return self._logs.setdefault(room, (new_epoch(), []))

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        epoch, messages = self._log(room)
        return RoomLog(epoch, len(messages), messages[-recent:] if recent else [])

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append`."""
        key = (entry.room, entry.user.username, entry.id)
        if key in self._ids:
            return Appended(self._ids[key], True)
        _, messages = self._log(entry.room)
        message = Message(
            room=entry.room,
            seq=len(messages) + 1,
            id=entry.id,
            user=entry.user,
            ts=entry.ts,
            body=entry.body,
        )
        messages.append(message)
        self._ids[key] = message
        return Appended(message, False)

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Message]:
        """See :meth:`HistoryStore.fetch`."""
        _, messages = self._log(room)
        if after is not None:
            return messages[after : after + limit]
        end = len(messages) if before is None else max(0, min(before - 1, len(messages)))
        return messages[max(0, end - limit) : end]


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
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages (room, username, client_id);
CREATE TABLE IF NOT EXISTS access (
    room TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    members TEXT NOT NULL
);
"""

_COLUMNS = "room, seq, client_id, user, ts, body"
_M_COLUMNS = ", ".join(f"m.{name}" for name in _COLUMNS.split(", "))
_ROWS_PER_STATEMENT = 500  # 7 values a row: well under SQLite's 32,766 variables
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


def _row_to_message(row: tuple[str, int, str, str, float, str]) -> Message:
    room, seq, client_id, user, ts, body = row
    return Message(room=room, seq=seq, id=client_id, user=decode_user(user), ts=ts, body=body)


CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints (off the writer's path)
WAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL file keeps once it starts over
NEW_ROOMS_REMEMBERED = 10_000  # epochs of opened rooms with no message yet


class SQLiteHistory(HistoryStore):
    """History in one SQLite file (WAL), written by one thread off the event loop.

    Appends that arrive while a write is under way are committed together in the
    next transaction, so a burst costs one fsync, not one per message. Checkpoints
    (copying the WAL into the database file, with its own fsync) run on a thread of
    their own, so that no append waits for one.
    """

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
        self._db: sqlite3.Connection | None = None
        self._seqs: dict[str, int] = {}
        self._new_epochs: dict[str, str] = {}  # rooms opened but with no message yet
        self._pending: list[tuple[Entry, asyncio.Future[Appended]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # All methods below whose name ends in _sync run on the store's single thread.

    def _connect_sync(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            # Each time the WAL starts over, a file grown by a burst is cut back to this.
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.executescript(_SCHEMA)
            self._db = db
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="chat-history-checkpoint", daemon=True
            )
            self._checkpointer.start()
        return self._db

    def _checkpoints(self) -> None:
        """Copy the WAL into the database every second, never blocking the writer."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or transient: the next round catches up
                    continue
        finally:
            db.close()

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

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
        return RoomLog(epoch, seq, self._fetch_sync(room, None, seq + 1, recent))

    def _write_batch_sync(self, batch: list[Entry]) -> list[Appended]:
        # A few statements per batch, whatever its size: each statement hands the GIL
        # to SQLite and must win it back from a busy event loop (up to a switch
        # interval each time), so per-message statements made a burst slow to store.
        db = self._connect_sync()
        seqs: dict[str, int] = {}
        results: list[Appended] = []
        rows: list[tuple[str, int, str, str, float, str, str]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            stored = self._stored_sync(db, batch)
            for entry in batch:
                key = (entry.room, entry.user.username, entry.id)
                if key in stored:  # a retried send: the message it already made
                    results.append(Appended(stored[key], True))
                    continue
                if entry.room not in seqs:
                    seqs[entry.room] = self._seqs.get(entry.room) or self._read_seq_sync(entry.room)
                seqs[entry.room] += 1
                message = Message(
                    room=entry.room,
                    seq=seqs[entry.room],
                    id=entry.id,
                    user=entry.user,
                    ts=entry.ts,
                    body=entry.body,
                )
                stored[key] = message  # the same send twice in one batch is stored once
                user = _user_encoder.encode(message.user).decode()
                rows.append((entry.room, message.seq, entry.id, user, entry.ts, entry.body, key[1]))
                results.append(Appended(message, False))
            for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
                values, params = _values(chunk)
                db.execute(f"INSERT INTO messages ({_COLUMNS}, username) VALUES {values}", params)
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
        return results

    def _stored_sync(
        self, db: sqlite3.Connection, batch: list[Entry]
    ) -> dict[tuple[str, str, str], Message]:
        """The messages already stored for the batch's (room, user, client id)s."""
        keys = list({(e.room, e.user.username, e.id) for e in batch})
        stored: dict[tuple[str, str, str], Message] = {}
        for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
            for row in db.execute(*_stored_query(chunk)):
                message = _row_to_message(row[1:])
                stored[(message.room, row[0], message.id)] = message
        return stored

    def _read_seq_sync(self, room: str) -> int:
        db = self._connect_sync()
        row = db.execute("SELECT seq FROM rooms WHERE name = ?", (room,)).fetchone()
        return 0 if row is None else int(row[0])

    def _fetch_sync(
        self, room: str, after: int | None, before: int | None, limit: int
    ) -> list[Message]:
        db = self._connect_sync()
        if after is not None:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room, after, limit),
            ).fetchall()
        else:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (room, before if before is not None else 2**62, limit),
            ).fetchall()
            rows.reverse()
        return [_row_to_message(row) for row in rows]

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

    def _close_sync(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()
            self._db = None

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        log: RoomLog = await self._run(self._open_room_sync, room, recent)
        return log

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append`; batched with concurrent appends."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_pending())
        return await future

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run(self._write_batch_sync, [e for e, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Message]:
        """See :meth:`HistoryStore.fetch`."""
        messages: list[Message] = await self._run(self._fetch_sync, room, after, before, limit)
        return messages

    async def close(self) -> None:
        """Finish pending appends, then close the database."""
        if self._writer is not None:
            await self._writer
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
