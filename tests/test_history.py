"""The history stores: gap-free seq, de-duplication, durability across reopen."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from jupyter_chat_ext import history
from jupyter_chat_ext.backplane import Backplane
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import (
    WAL_SIZE_LIMIT,
    Entry,
    HistoryStore,
    MemoryHistory,
    SQLiteHistory,
)
from jupyter_chat_ext.protocol import User
from jupyter_chat_ext.rooms import RoomRegistry

ALICE = User(username="alice", name="Alice", display_name="Alice A")
BOB = User(username="bob", name="Bob", display_name="Bob B")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> HistoryStore:
    if request.param == "sqlite":
        return SQLiteHistory(tmp_path / "h.sqlite")
    return MemoryHistory()


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
