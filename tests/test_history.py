"""The history stores: gap-free seq, de-duplication, durability across reopen, changes.

The store-level tests run on every store: SQLite, memory and Redis (a real redis-server).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jupyter_core.utils import ensure_event_loop

from jupyter_chat_ext import history
from jupyter_chat_ext.backplane import Backplane
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.conversation import ChangeEntry
from jupyter_chat_ext.history import (
    WAL_SIZE_LIMIT,
    Entry,
    HistoryStore,
    MemoryHistory,
    SQLiteHistory,
)
from jupyter_chat_ext.protocol import Change, ChangeKind, Message, ProtocolError, User, encode
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.search import parse

from helpers import RedisServer

ALICE = User(username="alice", name="Alice", display_name="Alice A")
BOB = User(username="bob", name="Bob", display_name="Bob B")


CAROL = User(username="carol", name="Carol", display_name="Carol C")


@pytest.fixture(params=["sqlite", "memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        yield SQLiteHistory(tmp_path / "h.sqlite")
    elif request.param == "memory":
        yield MemoryHistory()
    else:
        from jupyter_chat_ext.redis import RedisBackplane, RedisHistory

        backplane = RedisBackplane(request.getfixturevalue("redis_server").url)
        yield RedisHistory(backplane)
        ensure_event_loop().run_until_complete(backplane.close())


def entry(room: str, i: int, user: User = ALICE) -> Entry:
    return Entry(room, f"id-{i}", user, float(i), f"body {i}")


async def test_concurrent_appends_get_gap_free_seqs_per_room(store: HistoryStore) -> None:
    log = await store.open_room("a", 10)
    assert (log.seq, log.recent) == (0, [])
    results = await asyncio.gather(
        *(store.append(entry("a" if i % 2 else "b", i)) for i in range(200))
    )
    for room in ("a", "b"):
        seqs = [r.message.seq for r in results if r.message.room == room]
        assert seqs == list(range(1, 101))
    fetched = await store.fetch("a", after=0, limit=1000)
    assert [m.seq for m in fetched] == list(range(1, 101))
    await store.close()


async def test_same_client_id_is_stored_once_per_user(store: HistoryStore) -> None:
    first = await store.append(entry("r", 1))
    again = await store.append(entry("r", 1))
    other_user = await store.append(entry("r", 1, BOB))
    assert not first.duplicate and again.duplicate and not other_user.duplicate
    assert again.message == first.message
    assert [m.seq for m in await store.fetch("r", after=0, limit=10)] == [1, 2]
    await store.close()


async def test_sends_repeated_within_one_burst_are_stored_once(store: HistoryStore) -> None:
    # 1,400 appends at once (more than one statement's worth in SQLite): each id twice,
    # from two users, and ids already stored before the burst.
    await store.append(entry("r", 0))
    burst = [entry("r", i % 350, user) for i in range(700) for user in (ALICE, BOB)]
    results = await asyncio.gather(*(store.append(e) for e in burst))
    assert sum(not r.duplicate for r in results) == 699  # 350 x 2 users, less alice's id-0
    first: dict[tuple[str, str], int] = {}
    for e, r in zip(burst, results, strict=True):
        assert (r.message.id, r.message.user.username) == (e.id, e.user.username)
        assert first.setdefault((e.id, e.user.username), r.message.seq) == r.message.seq
    fetched = await store.fetch("r", after=0, limit=2000)
    assert [m.seq for m in fetched] == list(range(1, 701))
    await store.close()


def test_retried_sends_are_found_through_the_index_not_a_scan() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(history._SCHEMA)
    query, params = history._stored_query([("r", "alice", f"id-{i}") for i in range(3)])
    plan = db.execute("EXPLAIN QUERY PLAN " + query, params).fetchall()
    details = [row[-1] for row in plan]
    assert any("USING INDEX messages_by_client_id" in d for d in details), details
    assert not any(d.startswith("SCAN m") or d == "SCAN messages" for d in details), details


async def test_fetch_before_and_after(store: HistoryStore) -> None:
    for i in range(1, 11):
        await store.append(entry("r", i))
    assert [m.seq for m in await store.fetch("r", before=5, limit=3)] == [2, 3, 4]
    assert [m.seq for m in await store.fetch("r", before=3, limit=10)] == [1, 2]
    assert [m.seq for m in await store.fetch("r", after=8, limit=10)] == [9, 10]
    log = await store.open_room("r", 3)
    assert [m.seq for m in log.recent] == [8, 9, 10]
    await store.close()


async def test_sqlite_history_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = SQLiteHistory(path)
    epoch = (await store.open_room("r", 0)).epoch
    for i in range(3):
        await store.append(entry("r", i))
    await store.close()
    reopened = SQLiteHistory(path)
    log = await reopened.open_room("r", 10)
    assert (log.epoch, log.seq) == (epoch, 3)
    assert [m.body for m in log.recent] == ["body 0", "body 1", "body 2"]
    assert log.recent[0].user == ALICE
    assert (await reopened.append(entry("r", 9))).message.seq == 4
    assert (await reopened.append(entry("r", 0))).duplicate
    await reopened.close()


async def test_sqlite_write_failure_is_reported_and_seq_stays_gap_free(tmp_path: Path) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    await store.append(entry("r", 1))
    bad = Entry("r", "id-bad", ALICE, 1.0, "\ud800")  # not encodable: the write fails
    with pytest.raises(UnicodeEncodeError):
        await store.append(bad)
    assert (await store.append(entry("r", 2))).message.seq == 2
    await store.close()


async def test_batches_are_written_on_the_loop_unless_the_thread_has_the_connection(
    tmp_path: Path,
) -> None:
    """A batch is committed on the loop's thread while the store's thread is idle.

    While the thread has a job (a read, here one held open), a batch never touches
    the connection from the loop: it waits its turn on the thread, and the reads
    queued after it see it committed.
    """
    store = SQLiteHistory(tmp_path / "h.sqlite")
    await store.open_room("r", 0)  # connected: the next batch may go on the loop
    writers: list[int] = []
    write_batch = store._write_batch_sync

    def recording(batch: Any, wait: bool = True) -> Any:
        writers.append(threading.get_ident())
        return write_batch(batch, wait)

    store._write_batch_sync = recording  # type: ignore[method-assign]
    assert (await store.append(entry("r", 1))).message.seq == 1
    assert writers == [threading.get_ident()]  # the loop's own thread

    gate = threading.Event()
    held = asyncio.ensure_future(store._run(gate.wait))  # the thread has the connection
    appends = [asyncio.ensure_future(store.append(entry("r", i))) for i in range(2, 6)]
    for _ in range(20):  # loop turns: the batch may not be written on the loop now
        await asyncio.sleep(0)
    assert not any(a.done() for a in appends) and len(writers) == 1
    read = asyncio.ensure_future(store.fetch("r", after=0, limit=10))  # queued after them
    gate.set()
    await held
    assert [a.message.seq for a in await asyncio.gather(*appends)] == [2, 3, 4, 5]
    assert writers[1] != threading.get_ident()  # written on the store's thread, in turn
    assert [m.seq for m in await read] == [1, 2, 3, 4, 5]
    await store.close()


async def test_a_batch_waits_for_another_writer_on_the_thread_not_the_loop(
    tmp_path: Path,
) -> None:
    """Another process writing (a second server on the same file) never stalls the loop."""
    store = SQLiteHistory(tmp_path / "h.sqlite")
    await store.open_room("r", 0)
    other = sqlite3.connect(tmp_path / "h.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    pending = asyncio.ensure_future(store.append(entry("r", 1)))
    for _ in range(20):  # loop turns: the batch tried the lock once and went to the thread
        await asyncio.sleep(0)
    assert not pending.done()
    other.execute("COMMIT")
    assert (await pending).message.seq == 1
    other.close()
    await store.close()


async def test_each_new_entry_is_handed_over_in_seq_order_before_its_append_returns(
    tmp_path: Path,
) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    handed: list[tuple[str, int]] = []
    store.stored = lambda stored: handed.append((stored.room, stored.seq))
    await store.append(entry("r", 1))
    assert handed == [("r", 1)]
    assert (await store.append(entry("r", 1))).duplicate and handed == [("r", 1)]  # a retry
    await asyncio.gather(*(store.append(entry("r" if i % 2 else "q", i)) for i in range(2, 12)))
    rooms = ["r" if i % 2 else "q" for i in range(2, 12)]  # q, r, q, ...: one batch
    assert handed[1:] == [
        (room, rooms[: n + 1].count(room) + (room == "r")) for n, room in enumerate(rooms)
    ]
    await store.change(change("react", 2, emoji="+1"), 10)
    assert handed[-1] == ("r", 7)
    await store.close()


async def test_with_fsync_each_batch_is_synced_before_it_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    store.fsync = True
    wal = tmp_path / "h.sqlite-wal"
    synced: list[int] = []  # the WAL's size at each fsync
    real_fsync = history.os.fsync

    def fsync(fd: int) -> None:
        synced.append(wal.stat().st_size)
        real_fsync(fd)

    monkeypatch.setattr(history.os, "fsync", fsync)
    for i in range(3):
        await store.append(entry("r", i))
        assert len(synced) == i + 1  # acknowledged once the WAL holding it was synced
        assert synced[-1] == wal.stat().st_size
    # Appends arriving while a sync is under way wait for it and share the next one.
    results = await asyncio.gather(*(store.append(entry("r", i)) for i in range(3, 203)))
    assert [r.message.seq for r in results] == list(range(4, 204))
    assert len(synced) < 3 + 200
    await store.close()
    reopened = SQLiteHistory(tmp_path / "h.sqlite")
    assert (await reopened.open_room("r", 0)).seq == 203
    await reopened.close()


def test_unusable_db_path_says_which_setting_to_change(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"ChatExtensionApp\.db_path"):
        SQLiteHistory(blocker / "chat.sqlite")


async def test_private_room_access_is_durable(tmp_path: Path) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    assert await store.get_access("r") is None
    await store.set_access("r", "alice", ["alice", "bob"])
    await store.close()
    reopened = SQLiteHistory(tmp_path / "h.sqlite")
    assert await reopened.get_access("r") == ("alice", ["alice", "bob"])
    await reopened.set_access("r", "alice", ["alice"])
    assert await reopened.get_access("r") == ("alice", ["alice"])
    await reopened.close()


async def test_only_a_new_room_can_be_made_private(store: HistoryStore) -> None:
    await store.open_room("new", 10)
    assert await store.create_private("new", "alice", ["alice"])
    assert not await store.create_private("new", "bob", ["bob"])  # private already
    assert await store.get_access("new") == ("alice", ["alice"])
    await store.append(entry("used", 1))
    assert not await store.create_private("used", "alice", ["alice"])  # has history
    assert await store.get_access("used") is None
    await store.close()


async def test_joining_new_names_writes_nothing_until_a_message(tmp_path: Path) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    logs = [await store.open_room(f"probe-{i}", 10) for i in range(200)]
    db = sqlite3.connect(tmp_path / "h.sqlite")
    assert db.execute("SELECT count(*) FROM rooms").fetchone() == (0,)
    stored = await store.append(entry("probe-7", 1))
    assert stored.message.seq == 1
    row = db.execute("SELECT epoch, seq FROM rooms WHERE name = 'probe-7'").fetchone()
    assert row == (logs[7].epoch, 1)  # the epoch a joiner was given is the one kept
    await store.close()
    reopened = SQLiteHistory(tmp_path / "h.sqlite")
    assert (await reopened.open_room("probe-7", 10)).epoch == logs[7].epoch
    await reopened.close()


async def test_the_wal_file_is_cut_back_after_a_burst(tmp_path: Path) -> None:
    store = SQLiteHistory(tmp_path / "h.sqlite")
    wal = tmp_path / "h.sqlite-wal"
    body = "x" * 16_000
    burst = [Entry("r", f"b-{i}", ALICE, float(i), body) for i in range(2_000)]  # ~32 MB
    await asyncio.gather(*(store.append(e) for e in burst))
    assert wal.stat().st_size > WAL_SIZE_LIMIT
    deadline = time.monotonic() + 30
    i = 0
    while wal.stat().st_size > WAL_SIZE_LIMIT:  # the checkpointer thread runs each second
        assert time.monotonic() < deadline, wal.stat().st_size
        i += 1
        await store.append(entry("r", 10_000 + i))
        await asyncio.sleep(0.2)  # polling a file that another thread shrinks
    await store.close()


def test_a_store_that_does_not_publish_is_refused_with_a_shared_backplane() -> None:
    """Append and publish are one contract: a shared backplane needs a store that publishes."""

    class Shared(Backplane):
        distributed = True

    with pytest.raises(ValueError, match="does not publish what it stores through Shared"):
        RoomRegistry(MemoryHistory(), ChatSettings(), Shared())
    RoomRegistry(MemoryHistory(), ChatSettings())  # one process: nothing to publish


# ------------------------------------------------------------------ conversation changes


def change(
    kind: ChangeKind,
    target: int,
    user: User = ALICE,
    change_id: str | None = None,
    *,
    emoji: str | None = None,
    body: str | None = None,
    moderator: bool = False,
    room: str = "r",
    mentions: tuple[str, ...] = (),
) -> ChangeEntry:
    return ChangeEntry(
        room,
        change_id or uuid.uuid4().hex,
        user,
        time.time(),
        kind,
        target,
        emoji=emoji,
        body=body,
        moderator=moderator,
        mentions=mentions,
    )


def reply(i: int, reply_to: int, user: User = BOB) -> Entry:
    return Entry("r", f"reply-{i}", user, float(i), f"reply {i}", reply_to=reply_to)


async def refusal(work: Any) -> str:
    with pytest.raises(ProtocolError) as refused:
        await work
    return refused.value.code


async def message_at(store: HistoryStore, seq: int) -> Message:
    (found,) = await store.fetch("r", after=seq - 1, limit=1)
    assert isinstance(found, Message)
    return found


async def stored_bytes(store: HistoryStore) -> bytes:
    """Everything the store keeps: its files, its Redis keys and their contents, its memory."""
    if isinstance(store, SQLiteHistory):
        files = sorted(store.path.parent.glob(store.path.name + "*"))
        return b"\n".join(path.read_bytes() for path in files)
    if isinstance(store, MemoryHistory):
        return repr(vars(store)).encode()
    redis: Any = store.publishes.redis  # type: ignore[union-attr]
    found: list[bytes] = []
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        found.append(key)
        if kind == "string":
            found.append(await redis.get(key))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                found += [field, value]
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                found.append(entry_id)
                for field, value in fields.items():
                    found += [field, value]
        elif kind == "zset":
            found += [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            found += list(await redis.smembers(key))
        elif kind == "list":
            found += await redis.lrange(key, 0, -1)
        else:
            raise AssertionError(f"{key!r} is a {kind}")
        found.append(await redis.dump(key))  # the serialized value too
    return b"\n".join(found)


async def test_a_reply_counts_on_its_parent_and_mentions_are_kept(store: HistoryStore) -> None:
    await store.append(entry("r", 1))
    first = (await store.append(reply(1, 1))).message
    second = (await store.append(reply(2, 1, CAROL))).message
    assert (first.reply_to, first.parent_replies) == (1, 1)
    assert (second.reply_to, second.parent_replies) == (1, 2)
    parent = await message_at(store, 1)
    assert (parent.replies, parent.rev) == (2, second.seq)
    assert (await store.append(reply(1, 1))).duplicate  # a retried reply counts once
    assert (await message_at(store, 1)).replies == 2

    mentioning = Entry("r", "m", ALICE, 1.0, "hi @bob", mentions=("bob",))
    assert (await store.append(mentioning)).message.mentions == ["bob"]
    assert (await message_at(store, 4)).mentions == ["bob"]

    assert await refusal(store.append(reply(3, 99))) == "not_found"
    await store.change(change("react", 4, emoji="x"), 10)  # seq 5 is a change
    assert await refusal(store.append(reply(4, 5))) == "not_found"
    await store.change(change("delete", 4), 10)
    assert await refusal(store.append(reply(5, 4))) == "message_deleted"
    assert [e.seq for e in await store.fetch("r", after=0, limit=100)] == list(range(1, 7))
    await store.close()


async def test_reacting_and_unreacting_are_idempotent(store: HistoryStore) -> None:
    await store.append(entry("r", 1))
    await store.change(change("react", 1, BOB, emoji="+1"), 2)
    again = await store.change(change("react", 1, BOB, emoji="+1"), 2)  # a new request
    assert not again.duplicate and again.change.seq == 3
    assert again.change.message.reactions == {"+1": ["bob"]}
    await store.change(change("react", 1, ALICE, emoji="+1"), 2)
    await store.change(change("react", 1, ALICE, emoji="tada"), 2)
    code = await refusal(store.change(change("react", 1, BOB, emoji="eyes"), 2))
    assert code == "too_many_reactions"
    assert (await message_at(store, 1)).reactions == {"+1": ["bob", "alice"], "tada": ["alice"]}
    for _ in range(2):
        await store.change(change("unreact", 1, BOB, emoji="+1"), 2)
    await store.change(change("unreact", 1, ALICE, emoji="tada"), 2)
    current = await message_at(store, 1)
    assert (current.reactions, current.rev) == ({"+1": ["alice"]}, 8)
    assert [e.seq for e in await store.fetch("r", after=0, limit=100)] == list(range(1, 9))
    await store.close()


async def test_only_the_author_edits_and_a_moderator_may_delete(store: HistoryStore) -> None:
    await store.append(entry("r", 1))  # alice's
    assert await refusal(store.change(change("edit", 1, BOB, body="mine now"), 10)) == "forbidden"
    assert await refusal(store.change(change("delete", 1, BOB), 10)) == "forbidden"
    assert (await message_at(store, 1)).body == "body 1"
    edited = await store.change(change("edit", 1, body="better"), 10)
    assert edited.change.message.body == "better" and edited.change.message.edited is not None
    deleted = await store.change(change("delete", 1, BOB, moderator=True), 10)
    assert deleted.change.kind == "delete" and deleted.change.user == BOB
    current = await message_at(store, 1)
    assert (current.deleted, current.body, current.rev) == (True, "", 3)
    assert await refusal(store.change(change("edit", 1, body="back"), 10)) == "message_deleted"
    assert await refusal(store.change(change("react", 1, emoji="x"), 10)) == "message_deleted"
    assert await refusal(store.change(change("edit", 9, body="?"), 10)) == "not_found"
    assert await refusal(store.change(change("react", 2, emoji="x"), 10)) == "not_found"
    await store.close()


async def test_a_deleted_body_is_gone_from_the_store(store: HistoryStore) -> None:
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    kept = f"kept-{uuid.uuid4().hex}"
    await store.append(Entry("r", "a", ALICE, 1.0, first))
    await store.append(Entry("r", "b", BOB, 2.0, kept))
    await store.append(reply(3, 1))
    await store.change(change("edit", 1, body=second), 10)
    await store.change(change("react", 1, BOB, emoji="+1"), 10)
    if isinstance(store, SQLiteHistory):
        await store.close()  # its files hold everything once it is closed
        store = SQLiteHistory(store.path)
    stored = await stored_bytes(store)
    assert second.encode() in stored and kept.encode() in stored  # the dump sees bodies

    await store.change(change("delete", 1), 10)
    entries = await store.fetch("r", after=0, limit=100)
    assert [type(e).__name__ for e in entries] == ["Message"] * 3 + ["Change"] * 3
    for found in entries:
        target = found.message if isinstance(found, Change) else found
        if target.seq == 1:
            assert (target.body, target.deleted, target.reactions) == ("", True, {})
    if isinstance(store, SQLiteHistory):
        await store.close()
        store = SQLiteHistory(store.path)
    stored = await stored_bytes(store)
    assert first.encode() not in stored
    assert second.encode() not in stored
    assert kept.encode() in stored
    await store.close()


async def test_a_retried_change_is_applied_once(store: HistoryStore) -> None:
    await store.append(entry("r", 1))
    react = change("react", 1, BOB, "x1", emoji="+1")
    results = await asyncio.gather(*(store.change(react, 10) for _ in range(3)))  # one burst
    assert sorted(r.duplicate for r in results) == [False, True, True]
    assert {r.change.seq for r in results} == {2}
    edit = change("edit", 1, ALICE, "e1", body="edited")
    assert (await store.change(edit, 10)).change.seq == 3
    await store.change(change("delete", 1), 10)
    retried = await store.change(edit, 10)  # after the deletion: the target as it is now
    assert retried.duplicate and retried.change.seq == 3 and retried.change.kind == "edit"
    assert (retried.change.message.deleted, retried.change.message.body) == (True, "")
    late = await store.change(react, 10)
    assert late.duplicate and late.change.message.rev == 4
    assert [e.seq for e in await store.fetch("r", after=0, limit=100)] == [1, 2, 3, 4]

    # An id is one request: a message's id cannot name a change, nor the other way round.
    error = await refusal(store.change(change("react", 1, ALICE, "id-1", emoji="x"), 10))
    assert error == "invalid_field"
    assert await refusal(store.append(Entry("r", "x1", BOB, 0.0, "hello"))) == "invalid_field"
    # ... nor another change: a different kind, target or emoji under a used id.
    for other in (
        change("unreact", 1, BOB, "x1", emoji="+1"),
        change("react", 1, BOB, "x1", emoji="-1"),
    ):
        assert await refusal(store.change(other, 10)) == "invalid_field"
    await store.close()


async def test_an_edit_batched_with_a_deletion_never_carries_the_erased_body(
    tmp_path: Path,
) -> None:
    """SQLite stores a burst in one transaction: the edit's answer comes after the erasure."""
    store = SQLiteHistory(tmp_path / "h.sqlite")
    await store.append(entry("r", 1))
    edit = change("edit", 1, ALICE, "e1", body="RACE-secret")
    edited, deleted = await asyncio.gather(  # one batch where the store batches
        store.change(edit, 10), store.change(change("delete", 1, ALICE, "d1"), 10)
    )
    assert deleted.change.message.deleted
    assert "RACE" not in edited.change.message.body
    await store.close()


async def test_fetch_after_has_changes_in_their_current_state_before_only_messages(
    store: HistoryStore,
) -> None:
    for i in (1, 2, 3):
        await store.append(entry("r", i))
    await store.change(change("edit", 1, body="edit one"), 10)  # 4
    await store.change(change("react", 2, BOB, emoji="+1"), 10)  # 5
    await store.append(entry("r", 6))  # 6
    await store.change(change("edit", 1, body="edit two"), 10)  # 7

    entries = await store.fetch("r", after=0, limit=100)
    assert [(e.seq, isinstance(e, Change)) for e in entries] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
        (5, True),
        (6, False),
        (7, True),
    ]
    first_edit = entries[3]
    assert isinstance(first_edit, Change) and first_edit.target == 1
    assert (first_edit.message.body, first_edit.message.rev) == ("edit two", 7)  # as it is now
    assert entries[0] == first_edit.message
    assert [e.seq for e in await store.fetch("r", after=3, limit=2)] == [4, 5]

    page = await store.fetch("r", before=7, limit=2)  # messages only; limit counts messages
    assert [(type(e).__name__, e.seq) for e in page] == [("Message", 3), ("Message", 6)]
    page = await store.fetch("r", before=6, limit=10)
    assert [e.seq for e in page] == [1, 2, 3]
    assert isinstance(page[0], Message) and page[0].body == "edit two"
    assert [e.seq for e in await store.fetch("r", before=None, limit=3)] == [2, 3, 6]

    log = await store.open_room("r", 3)
    assert log.seq == 7
    assert [e.seq for e in log.recent] == [5, 6, 7]
    assert all(isinstance(e, Change) for e in (log.recent[0], log.recent[2]))
    assert msgspec.structs.asdict(log.recent[0])["message"].reactions == {"+1": ["bob"]}
    await store.close()


async def test_concurrent_changes_to_one_message_are_all_applied(store: HistoryStore) -> None:
    await store.append(entry("r", 1))
    users = [User(username=f"u{i}", name=f"u{i}", display_name=f"U {i}") for i in range(30)]
    work = [store.change(change("react", 1, user, emoji="+1"), 10) for user in users]
    work += [store.append(entry("r", 100 + i)) for i in range(30)]
    results = await asyncio.gather(*work)
    assert sorted(r.change.seq if hasattr(r, "change") else r.message.seq for r in results) == list(
        range(2, 62)
    )
    reactions = (await message_at(store, 1)).reactions
    assert sorted(reactions["+1"]) == sorted(user.username for user in users)
    await store.close()


# ------------------------------------------------------------------ read markers and mentions


def mentioning(room: str, i: int, *names: str, ts: float | None = None) -> Entry:
    body = " ".join(f"@{name}" for name in names) + f" look {i}"
    return Entry(room, f"m-{i}", ALICE, float(i) if ts is None else ts, body, mentions=names)


async def unread(store: HistoryStore, username: str, limit: int = 100) -> list[tuple[str, int]]:
    return [(m.room, m.seq) for m in await store.unread_mentions(username, limit)]


async def test_read_markers_move_forward_only_per_user_and_room(store: HistoryStore) -> None:
    assert await store.get_read("bob", "r") == 0
    assert await store.set_read("bob", "r", 5) == 5
    assert await store.set_read("bob", "r", 3) == 5  # never back
    assert await store.set_read("bob", "r", 5) == 5
    assert await store.set_read("bob", "other", 2) == 2
    assert await store.set_read("carol", "r", 1) == 1
    assert [await store.get_read(*key) for key in [("bob", "r"), ("bob", "other")]] == [5, 2]
    assert await store.get_read("carol", "r") == 1
    assert await store.get_read("bob", "nowhere") == 0
    # Concurrent moves (two tabs): the furthest wins.
    await asyncio.gather(*(store.set_read("dave", "r", seq) for seq in (7, 9, 8, 3)))
    assert await store.get_read("dave", "r") == 9
    await store.close()


async def test_unread_mentions_follow_edits_deletions_and_read_markers(
    store: HistoryStore,
) -> None:
    await store.append(mentioning("r", 1, "bob"))  # r 1
    await store.append(mentioning("s", 2, "bob", "carol"))  # s 1
    await store.append(mentioning("r", 3, "carol"))  # r 2
    await store.append(entry("r", 4))  # r 3: nobody
    await store.append(mentioning("s", 5, "bob"))  # s 2
    assert await unread(store, "bob") == [("s", 2), ("s", 1), ("r", 1)]  # newest first
    assert await unread(store, "bob", limit=2) == [("s", 2), ("s", 1)]
    assert await unread(store, "carol") == [("r", 2), ("s", 1)]
    assert await unread(store, "alice") == []
    (found,) = await store.unread_mentions("carol", 1)
    assert (found.room, found.seq, found.body) == ("r", 2, "@carol look 3")

    # An edit that drops bob, one that mentions carol instead, one that adds bob: each
    # says who it newly mentions (they are told live, as for a new message).
    assert (await store.change(edit("r", 1, "no one"), 10)).mentioned == ()  # r 4
    added = await store.change(edit("r", 1, "@carol now", "carol"), 10)  # r 5
    assert added.mentioned == ("carol",)
    adding_bob = edit("r", 2, "@bob and @carol", "bob", "carol")
    assert (await store.change(adding_bob, 10)).mentioned == ("bob",)  # r 6 (carol was)
    assert (await store.change(adding_bob, 10)).mentioned == ()  # a retry tells no one
    assert await unread(store, "bob") == [("s", 2), ("r", 2), ("s", 1)]
    assert await unread(store, "carol") == [("r", 2), ("s", 1), ("r", 1)]
    await store.change(change("react", 2, BOB, emoji="+1", room="r"), 10)  # r 7: no change
    assert await unread(store, "bob") == [("s", 2), ("r", 2), ("s", 1)]
    now = (await store.unread_mentions("bob", 100))[1]  # as it is now
    assert (now.body, now.mentions, now.reactions, now.rev) == (
        "@bob and @carol",
        ["bob", "carol"],
        {"+1": ["bob"]},
        7,
    )

    # A deletion clears them; a read marker reads its room's mentions up to it.
    await store.change(change("delete", 2, room="s"), 10)  # s 3
    assert await unread(store, "bob") == [("r", 2), ("s", 1)]
    await store.set_read("bob", "r", 2)
    assert await unread(store, "bob") == [("s", 1)]
    assert await unread(store, "carol") == [("r", 2), ("s", 1), ("r", 1)]  # bob's marker
    await store.set_read("carol", "s", 1)
    assert await unread(store, "carol") == [("r", 2), ("r", 1)]
    # A mention an edit adds at or before the marker is read; past it, unread.
    await store.change(edit("r", 1, "@bob @carol again", "bob", "carol"), 10)  # r 8
    assert await unread(store, "bob") == [("s", 1)]
    assert await unread(store, "carol") == [("r", 2), ("r", 1)]
    await store.append(mentioning("r", 9, "bob"))  # r 9
    await store.change(edit("r", 3, "@bob too", "bob"), 10)  # r 10
    assert await unread(store, "bob") == [("r", 9), ("r", 3), ("s", 1)]
    await store.set_read("bob", "r", 20)
    await store.set_read("bob", "s", 20)
    assert await unread(store, "bob") == []
    assert await unread(store, "carol") == [("r", 2), ("r", 1)]
    await store.close()


def edit(room: str, target: int, body: str, *mentions: str) -> ChangeEntry:
    return change("edit", target, body=body, room=room, mentions=mentions)


async def test_redis_mentions_sets_are_kept_in_step_with_the_messages(
    redis_server: RedisServer,
) -> None:
    """The per-user sets themselves (unread_mentions would hide a stale entry)."""
    from jupyter_chat_ext.redis import RedisBackplane, RedisHistory

    backplane = RedisBackplane(redis_server.url)
    redis: Any = backplane.redis
    store = RedisHistory(backplane)

    async def mentions(username: str) -> list[tuple[bytes, float]]:
        key = f"chat-ext:user:{username}:mentions"
        return list(await redis.zrevrange(key, 0, -1, withscores=True))

    try:
        await store.append(mentioning("r", 1, "bob", "carol", ts=100.5))  # r 1
        await store.append(mentioning("r:x", 2, "bob"))  # r:x 1 (a colon in a room name)
        assert await mentions("bob") == [(b"1:r", 100.5), (b"1:r:x", 2.0)]
        assert await unread(store, "bob") == [("r", 1), ("r:x", 1)]
        await store.change(edit("r", 1, "@carol only", "carol"), 10)
        assert await mentions("bob") == [(b"1:r:x", 2.0)]
        assert await mentions("carol") == [(b"1:r", 100.5)]
        await store.change(change("react", 1, BOB, emoji="+1"), 10)
        await store.change(change("delete", 1), 10)
        assert await mentions("carol") == []
        assert await store.set_read("bob", "r:x", 1) == 1
        assert await redis.hgetall("chat-ext:user:bob:reads") == {b"r:x": b"1"}
        assert await mentions("bob") == [(b"1:r:x", 2.0)]  # read, until next met
        assert await unread(store, "bob") == []
        assert await mentions("bob") == []
    finally:
        await store.close()
        await backplane.close()


async def test_a_redis_log_of_the_previous_version_is_converted(
    redis_server: RedisServer,
) -> None:
    """Before changes, each stream entry held its message's JSON (body and all) in 'm'."""
    from jupyter_chat_ext.redis import RedisBackplane, RedisHistory

    backplane = RedisBackplane(redis_server.url)
    redis: Any = backplane.redis
    bodies = [f"old body {seq} {uuid.uuid4().hex}" for seq in (1, 2, 3)]
    for seq, body in enumerate(bodies, 1):
        old = Message(room="r", seq=seq, id=f"m{seq}", user=ALICE, ts=float(seq), body=body)
        await redis.xadd("chat-ext:room:r:log", {"m": encode(old)}, id=f"{seq}-0")
        await redis.hset("chat-ext:room:r:ids", f"alice\0m{seq}", seq)
    await redis.hset("chat-ext:room:r:meta", mapping={"epoch": "e-old", "seq": 3})
    store = RedisHistory(backplane)
    try:
        log = await store.open_room("r", 10)
        assert (log.epoch, log.seq) == ("e-old", 3)
        assert [(m.seq, m.body) for m in log.recent] == list(enumerate(bodies, 1))
        assert (await store.append(Entry("r", "m1", ALICE, 9.0, "again"))).duplicate
        replied = await store.append(reply(4, 1))
        assert (replied.message.seq, replied.message.parent_replies) == (4, 1)
        await store.change(change("edit", 2, body="new"), 10)
        await store.change(change("delete", 2), 10)

        entries = await store.fetch("r", after=0, limit=10)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
        assert isinstance(entries[0], Message) and entries[0].replies == 1
        assert isinstance(entries[5], Change) and entries[5].message.deleted
        assert [e.seq for e in await store.fetch("r", before=None, limit=10)] == [1, 2, 3, 4]
        stream = await redis.xrange("chat-ext:room:r:log")
        assert all(b"m" not in fields for _, fields in stream)  # no message JSON in the log
        stored = await stored_bytes(store)
        assert bodies[1].encode() not in stored
        assert bodies[0].encode() in stored and bodies[2].encode() in stored
    finally:
        await store.close()
        await backplane.close()


async def test_imports_count_replies_and_go_only_into_a_room_without_history(
    store: HistoryStore,
) -> None:
    first = [
        Message(
            room="x",
            seq=1,
            id="a",
            user=ALICE,
            ts=1.0,
            body="question @bob",
            mentions=["bob"],
            edited=1.5,
            reactions={"+1": ["bob", "carol"]},
        ),
        Message(room="x", seq=2, id="b", user=BOB, ts=2.0, body="one", reply_to=1),
        Message(room="x", seq=3, id="d", user=CAROL, ts=2.5, body="", deleted=True),
    ]
    assert await store.import_messages("x", 0, first, "i1") == 3
    second = [Message(room="x", seq=4, id="c", user=BOB, ts=3.0, body="two", reply_to=1)]
    assert await store.import_messages("x", 3, second, "i2") == 4
    stored = await store.fetch("x", after=0, limit=10)
    messages = [m for m in stored if isinstance(m, Message)]
    assert len(messages) == len(stored) == 4
    assert [(m.seq, m.replies, m.rev, m.parent_replies) for m in messages] == [
        (1, 2, 4, None),
        (2, 0, 0, 1),
        (3, 0, 0, None),
        (4, 0, 0, 2),
    ]
    assert [(m.id, m.user, m.ts, m.body) for m in messages] == [
        ("a", ALICE, 1.0, "question @bob"),
        ("b", BOB, 2.0, "one"),
        ("d", CAROL, 2.5, ""),
        ("c", BOB, 3.0, "two"),
    ]
    assert (messages[0].edited, messages[0].reactions, messages[0].mentions) == (
        1.5,
        {"+1": ["bob", "carol"]},
        ["bob"],
    )
    assert messages[2].deleted and not messages[1].deleted
    log = await store.open_room("x", 2)
    assert (log.seq, [m.seq for m in log.recent]) == (4, [3, 4])
    assert [(m.room, m.seq) for m in await store.unread_mentions("bob", 10)] == [("x", 1)]
    # A part that does not continue the log where it is, or reuses a (user, id): refused.
    for after in (0, 3):
        with pytest.raises(ProtocolError) as refused:
            await store.import_messages("x", after, second, "i3")
        assert refused.value.code == "room_not_empty"
    again = [Message(room="x", seq=5, id="c", user=BOB, ts=4.0, body="three")]
    with pytest.raises(ProtocolError) as reused:
        await store.import_messages("x", 4, again, "i6")
    assert reused.value.code == "invalid_field"
    await store.append(Entry("y", "live", ALICE, 5.0, "hello"))
    with pytest.raises(ProtocolError) as busy:
        await store.import_messages("y", 0, first, "i4")
    assert busy.value.code == "room_not_empty"
    orphan = [Message(room="z", seq=1, id="o", user=ALICE, ts=1.0, body="hi", reply_to=1)]
    with pytest.raises(ProtocolError) as missing:
        await store.import_messages("z", 0, orphan, "i5")
    assert missing.value.code == "not_found"
    assert await store.fetch("z", after=0, limit=10) == []  # nothing stored
    assert [m.seq for m in await store.fetch("x", after=0, limit=10)] == [1, 2, 3, 4]
    # The log goes on from the import: a live reply counts on an imported parent.
    reply = await store.append(Entry("x", "live", ALICE, 6.0, "three", reply_to=1))
    assert (reply.message.seq, reply.message.parent_replies) == (5, 3)
    assert [m.body for m in await store.search(parse("two"), ["x"], 5)] == ["two"]
    await store.close()
