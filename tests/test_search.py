"""Search: the matching rules, the same results from every store, and through a real server.

Store-level tests run on SQLite (its FTS5 index), SQLite without the index (the scan it
falls back to), memory and Redis (a real redis-server); the server tests use a real
``jupyter server`` and ChatClients.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jupyter_core.utils import ensure_event_loop

from jupyter_chat_ext import ChatClient, ChatError
from jupyter_chat_ext.conversation import ChangeEntry
from jupyter_chat_ext.history import Entry, HistoryStore, MemoryHistory, SQLiteHistory
from jupyter_chat_ext.protocol import Message, ProtocolError, User
from jupyter_chat_ext.search import folded, highlight, parse, words

from helpers import Collector, JupyterServer

Clients = Callable[..., ChatClient]
ALICE = User(username="alice", name="Alice", display_name="Alice A")
BOB = User(username="bob", name="Bob", display_name="Bob B")


class ScanningHistory(SQLiteHistory):
    """SQLite without the full-text index: searches scan (as before the index existed)."""

    full_text = False


@pytest.fixture(params=["sqlite", "sqlite-scan", "memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        yield SQLiteHistory(tmp_path / "h.sqlite")
    elif request.param == "sqlite-scan":
        yield ScanningHistory(tmp_path / "h.sqlite")
    elif request.param == "memory":
        yield MemoryHistory()
    else:
        from jupyter_chat_ext.redis import RedisBackplane, RedisHistory

        backplane = RedisBackplane(request.getfixturevalue("redis_server").url)
        yield RedisHistory(backplane)
        ensure_event_loop().run_until_complete(backplane.close())


def test_words_are_folded_and_spanned() -> None:
    text = "Café NAÏVE Straße ﬁne ＡＢＣ x² plot_data don't 数据"
    assert [w for w, _, _ in words(text)] == [
        "cafe",
        "naive",
        "strasse",
        "fine",
        "abc",
        "x2",
        "plot",
        "data",
        "don",
        "t",
        "数",
        "据",
    ]
    query = parse("CAFE plot* 数据 plot*")
    assert [(t.word, t.prefix) for t in query.terms] == [
        ("cafe", False),
        ("plot", True),
        ("数", False),
        ("据", False),
    ]
    body = "Plotting a café: 数据"
    assert query.matches(body) and not query.matches("plotting a cafeteria")
    assert query.marks(body) == [(0, 8), (11, 15), (17, 18), (18, 19)]
    assert highlight(body, query.marks(body), "[", "]") == "[Plotting] a [café]: [数][据]"
    for empty in ("", "  ", "?!", "*"):
        with pytest.raises(ProtocolError) as refused:
            parse(empty)
        assert refused.value.code == "invalid_field"


def test_the_fast_paths_agree_with_the_rules() -> None:
    """ASCII text takes shortcuts (one regex, a substring test first): same answers."""
    rng = random.Random(15)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n" + "éÉß数ﬁ"
    queries = [parse(q) for q in ("a", "ab*", "x1 b", "e", "ss", "数", "fi*", "Z9")]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        spelled = [word for word, _, _ in words(text)]
        assert folded(text) == spelled, text
        for query in queries:
            slow = all(any(term.matches(word) for word in spelled) for term in query.terms)
            assert query.matches(text) == slow, (text, query.text)


# (room, body) in the order posted; then edits and deletions (by index) change some.
CORPUS = [
    ("lab", "Plotting the loss curve"),
    ("lab", "the café is open: coffee at noon"),
    ("lab", "LOSS went down after the fix"),
    ("lab", "a secret draft about xylophones"),
    ("notes", "loss of data in run 7"),
    ("notes", "see $\\mathcal{L}$ loss, `plt.plot(x)`"),
    ("lab", "nothing to see here"),
    ("notes", "Cafe meeting moved"),
]
EDITS = {6: "the plot thickens"}  # index -> new body
DELETED = {3}
QUERIES = ["loss", "plot*", "cafe", "xylophones", "nothing", "the loss", "plt", "mathcal", "zzz"]


async def fill(store: HistoryStore) -> list[Message]:
    """Post CORPUS (ts = index), apply EDITS and DELETED; the messages as they are now."""
    posted = []
    for index, (room, body) in enumerate(CORPUS):
        posted.append(await store.append(Entry(room, f"m{index}", ALICE, float(index), body)))
    now = [appended.message for appended in posted]
    for index, body in EDITS.items():
        message = now[index]
        change = ChangeEntry(
            message.room, f"e{index}", ALICE, 100.0, "edit", message.seq, body=body
        )
        now[index] = (await store.change(change, 5)).change.message
    for index in DELETED:
        message = now[index]
        change = ChangeEntry(message.room, f"d{index}", ALICE, 101.0, "delete", message.seq)
        now[index] = (await store.change(change, 5)).change.message
    return now


async def test_every_store_finds_the_same_messages_newest_first(store: HistoryStore) -> None:
    now = await fill(store)
    for text in QUERIES:
        query = parse(text)
        expected = [
            (m.room, m.seq)
            for m in sorted(now, key=lambda m: -m.ts)
            if not m.deleted and query.matches(m.body)
        ]
        found = await store.search(query, ["lab", "notes"], 50)
        assert [(m.room, m.seq) for m in found] == expected, text
        assert all(m == now[int(m.id[1:])] for m in found)  # as they are now
    loss = await store.search(parse("loss"), ["lab", "notes"], 50)
    assert [m.body for m in loss] == [
        "see $\\mathcal{L}$ loss, `plt.plot(x)`",
        "loss of data in run 7",
        "LOSS went down after the fix",
        "Plotting the loss curve",
    ]
    assert [m.body for m in await store.search(parse("loss"), ["lab"], 2)] == [
        "LOSS went down after the fix",
        "Plotting the loss curve",
    ]
    assert await store.search(parse("xylophones"), ["lab"], 50) == []  # deleted
    assert await store.search(parse("nothing"), ["lab"], 50) == []  # edited away
    assert [m.body for m in await store.search(parse("thickens"), ["lab", "notes"], 9)] == [
        "the plot thickens"
    ]
    assert await store.search(parse("loss"), ["nowhere"], 50) == []
    assert set(await store.rooms()) == {"lab", "notes"}
    await store.close()


async def test_every_search_is_cut_short_at_its_budget_and_scans_take_turns(
    store: HistoryStore,
) -> None:
    for i in range(1, 1201):  # more than two scan pages; the rare word in the oldest
        body = "needle in the oldest" if i == 1 else f"hay {i}"
        await store.append(Entry("big", f"m{i}", ALICE, float(i), body))
    needle = parse("needle")
    assert [m.seq for m in await store.search(needle, ["big"], 5)] == [1]
    if type(store) is not SQLiteHistory:  # (an index's budget: test_a_costly_search...)
        store.search_budget = 0.0  # every scan is past its budget at once: cut short
        assert await store.search(needle, ["big"], 5) == []
    store.search_budget = 5.0
    if not isinstance(store, SQLiteHistory):  # (SQLite's searches take turns on a thread)
        # Scans take turns in a process: a search waits for the scan under way.
        async with store._scanning():
            task = asyncio.ensure_future(store.search(needle, ["big"], 5))
            done, _ = await asyncio.wait([task], timeout=0.2)
            assert not done
        assert [m.seq for m in await task] == [1]
    await store.close()


async def test_messages_of_the_same_moment_are_each_found(store: HistoryStore) -> None:
    """The index orders by time: messages of one millisecond still get a place each."""
    for batch in range(3):  # three writes, each with messages of the same time
        await asyncio.gather(
            *(
                store.append(Entry(f"r{i % 2}", f"{batch}-{i}", ALICE, 7.0, f"tick {batch} {i}"))
                for i in range(4)
            )
        )
    found = await store.search(parse("tick"), ["r0", "r1"], 50)
    assert sorted(m.body for m in found) == sorted(
        f"tick {b} {i}" for b in range(3) for i in range(4)
    )
    assert len(await store.search(parse("tick"), ["r1"], 50)) == 6
    await store.close()


async def test_an_older_database_gains_the_index_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    before = ScanningHistory(path)
    now = await fill(before)
    await before.close()
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchall()
    after = SQLiteHistory(path)
    assert [m.seq for m in await after.search(parse("loss"), ["lab", "notes"], 50)] == [
        m.seq for m in sorted(now, key=lambda m: -m.ts) if "loss" in m.body.lower()
    ]
    assert await after.search(parse("xylophones"), ["lab"], 50) == []  # deleted before
    await after.append(Entry("lab", "new", BOB, 50.0, "a brand new xylophone"))
    assert [m.body for m in await after.search(parse("xylophone"), ["lab"], 50)] == [
        "a brand new xylophone"
    ]
    await after.close()
    with sqlite3.connect(path) as db:
        indexed = db.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'loss'")
        assert indexed.fetchone() == (4,)  # indexed once, not twice


async def test_an_index_this_sqlite_cannot_read_is_built_again(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    store = SQLiteHistory(path)
    now = await fill(store)
    await store.close()
    with sqlite3.connect(path) as db:  # as FTS5 of a newer SQLite may leave it
        db.execute("UPDATE messages_fts_config SET v = 99 WHERE k = 'version'")
    store = SQLiteHistory(path)
    found = await store.search(parse("loss"), ["lab", "notes"], 50)
    assert [m.seq for m in found] == [
        m.seq for m in sorted(now, key=lambda m: -m.ts) if "loss" in m.body.lower()
    ]
    await store.close()


async def test_a_deleted_messages_words_leave_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    word = b"zygomorphicquartz"
    store = SQLiteHistory(path)
    for i in range(200):  # enough to give the index older segments
        await store.append(Entry("r", f"f{i}", ALICE, float(i), f"filler message {i}"))
    secret = await store.append(Entry("r", "s", ALICE, 300.0, f"{word.decode()} is the code"))
    for i in range(200, 400):
        await store.append(Entry("r", f"f{i}", ALICE, float(i), f"filler message {i}"))
    await store.close()
    files = [path, Path(f"{path}-wal")]
    assert any(word[2:] in p.read_bytes() for p in files if p.exists())  # the index holds it
    store = SQLiteHistory(path)
    delete = ChangeEntry("r", "d", ALICE, 500.0, "delete", secret.message.seq)
    await store.change(delete, 5)
    assert await store.search(parse(word.decode()), ["r"], 10) == []
    assert len(await store.search(parse("filler"), ["r"], 500)) == 400
    await store.close()
    for p in files:
        if p.exists():
            assert word[2:] not in p.read_bytes()


async def test_a_stream_of_deletions_merges_the_index_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    """A merge costs the whole index: deletions in a row share one, later or at close."""
    path = tmp_path / "h.sqlite"
    store = SQLiteHistory(path)
    words = [f"{chr(97 + i)}xyzzyplugh{chr(97 + i)}" for i in range(20)]  # no shared prefix
    seqs = [
        (await store.append(Entry("r", f"m{i}", ALICE, float(i), f"{w} here"))).message.seq
        for i, w in enumerate(words)
    ]
    for i, seq in enumerate(seqs[:10]):
        await store.change(ChangeEntry("r", f"d{i}", ALICE, 100.0 + i, "delete", seq), 5)
    if not store._fts_erases:  # this SQLite's FTS5 cannot erase by itself: merges
        assert store._merge_due  # the first deletion merged at once, the others wait
    assert await store.search(parse(words[3]), ["r"], 10) == []
    await store.close()  # the merge that waited is done before the file is closed
    for p in [path, Path(f"{path}-wal")]:
        if p.exists():
            data = p.read_bytes()
            assert all(w[2:].encode() not in data for w in words[:10])
            assert words[15][2:].encode() in data  # the search can see what it looks for


async def test_a_costly_search_never_holds_up_sends_and_is_cut_short(tmp_path: Path) -> None:
    """One user's searches must not stall everyone's messages (issue 13, class 2).

    A query of many short prefixes makes FTS5 merge the postings of most words in
    the index: seconds on a big room. It runs apart from the writer (sends are stored
    meanwhile) and within a time budget (cut short, it answers what it found by then).
    """
    store = SQLiteHistory(tmp_path / "h.sqlite")
    rng = random.Random(5)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "gu", "shi"]
    vocabulary = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(3000)]
    for start in range(0, 30_000, 2000):
        await asyncio.gather(
            *(
                store.append(
                    Entry("big", f"m{i}", ALICE, 1e9 + i, " ".join(rng.choices(vocabulary, k=12)))
                )
                for i in range(start, start + 2000)
            )
        )
    costly = parse(" ".join(f"{s}*" for s in syllables))
    search = asyncio.ensure_future(store.search(costly, ["big"], 50))
    await asyncio.sleep(0.01)  # the search is under way
    send = asyncio.ensure_future(store.append(Entry("lobby", "hi", BOB, 2e9, "hello")))
    done, _ = await asyncio.wait([search, send], return_when=asyncio.FIRST_COMPLETED)
    assert send in done and not search.done()  # stored while the search runs
    full = await search
    assert full and all(costly.matches(message.body) for message in full)
    budget = SQLiteHistory.search_budget
    try:
        SQLiteHistory.search_budget = 0.0
        cut = await store.search(costly, ["big"], 50)
    finally:
        SQLiteHistory.search_budget = budget
    assert len(cut) < len(full)  # cut short: what it found by then, no error
    await store.close()


# --------------------------------------------------------------------------- real server


def test_search_through_the_server_marks_words_newest_first(clients: Clients) -> None:
    alice, bob = clients(), clients()
    lab, notes = alice.join("lab"), bob.join("notes")
    first = lab.send("Plotting the loss curve")
    lab.send("coffee at noon")
    second = notes.send("LOSS of data, plotted")
    found = lab.search("loss")
    assert [m["seq"] for m in found] == [first["seq"]]
    assert found[0]["marks"] == [(13, 17)] and found[0]["room"] == "lab"
    everywhere = alice.search("loss plot*")  # rooms=None: every room alice may read
    assert [(m["room"], m["body"]) for m in everywhere] == [
        ("notes", second["body"]),
        ("lab", first["body"]),
    ]
    assert everywhere[0]["marks"] == [(0, 4), (14, 21)]
    assert highlight(everywhere[0]["body"], everywhere[0]["marks"]) == (
        "**LOSS** of data, **plotted**"
    )
    assert len(alice.search("loss", limit=1)) == 1
    edited = lab.edit(first["seq"], "the loss curve, smoothed")
    lab.react(first["seq"], "👍")
    again = bob.search("smoothed", rooms=["lab"])  # bob never joined lab: public, readable
    assert again[0]["body"] == edited["body"] and again[0]["reactions"] == {
        "👍": [alice.user["username"]]
    }
    with pytest.raises(ChatError) as refused:
        alice.search("?!")
    assert refused.value.code == "invalid_field"


def test_search_never_finds_a_private_or_direct_room_for_others(clients: Clients) -> None:
    alice, bob, carol = clients(), clients(), clients()
    secret = alice.join("plans", private=True, members=[bob.user["username"]])
    secret.send("classified pineapple plans")
    direct = alice.direct(bob.user["username"])
    direct.send("a pineapple between us")
    carol.join("public").send("pineapple pizza?")

    assert [m["room"] for m in carol.search("pineapple")] == ["public"]
    for named in (["plans"], [direct.name], ["public", "plans"]):
        with pytest.raises(ChatError) as refused:
            carol.search("pineapple", rooms=named)
        assert refused.value.code == "forbidden" and named[-1] in str(refused.value)
    for member in (alice, bob):
        rooms = {m["room"] for m in member.search("pineapple")}
        assert rooms == {"public", "plans", direct.name}
        assert [m["room"] for m in member.search("classified", rooms=["plans"])] == ["plans"]
    secret.remove(bob.user["username"])  # bob loses access: his searches at once
    assert {m["room"] for m in bob.search("pineapple")} == {"public", direct.name}
    with pytest.raises(ChatError) as removed:
        bob.search("classified", rooms=["plans"])
    assert removed.value.code == "forbidden"


def test_search_never_finds_a_deleted_message(clients: Clients, server: JupyterServer) -> None:
    alice = clients()
    room = alice.join("oops")
    gone = room.send("the password is hunter2swordfish")
    kept = room.send("swordfish recipes")
    assert [m["seq"] for m in room.search("hunter2swordfish")] == [gone["seq"]]
    assert room.search("hunter2swordfish recipes") == []  # every word must match
    room.delete(gone["seq"])
    assert room.search("hunter2swordfish") == []
    assert [m["seq"] for m in room.search("swordfish*")] == [kept["seq"]]
    alice.close()
    server.stop()  # the WAL is checkpointed: look at every byte of the files
    for path in (server.db_path, Path(f"{server.db_path}-wal")):
        if path.exists():
            assert b"nter2swordfish" not in path.read_bytes()


def test_load_around_opens_a_room_at_an_old_message(clients: Clients) -> None:
    writer = clients()
    room = writer.join("long")
    seqs = [room.send(f"message {i}")["seq"] for i in range(160)]
    room.react(seqs[10], "👀")  # a change entry among the messages
    late = clients().join("long")  # holds the newest entries (history_on_join: 100)
    start = seqs.index(late.messages[0]["seq"])
    assert start > 50 and [m["seq"] for m in late.messages] == seqs[start:]
    assert late.holes == []

    window = late.load_around(seqs[20], limit=10)
    assert [m["seq"] for m in window] == seqs[15:25]
    held = [m["seq"] for m in late.messages]
    assert held == sorted(set(held)) == seqs[15:25] + seqs[start:]
    assert late.holes == [(seqs[24], seqs[start])]

    late.load_around(seqs[12], limit=6)  # overlaps the window: extends it, no new hole
    assert [m["seq"] for m in late.messages][:3] == seqs[9:12]
    assert next(m for m in late.messages if m["seq"] == seqs[10])["reactions"] == {
        "👀": [writer.user["username"]]
    }
    assert late.holes == [(seqs[24], seqs[start])]

    filled = late.load_earlier(30, before=seqs[start])  # fills the hole from its newer end
    assert [m["seq"] for m in filled] == seqs[start - 30 : start]
    assert late.holes == [(seqs[24], seqs[start - 30])]
    rest = late.load_earlier(100, before=seqs[start - 30])  # the rest, and what is before
    assert [m["seq"] for m in rest] == seqs[:9] + seqs[25 : start - 30]
    assert late.holes == [] and [m["seq"] for m in late.messages] == seqs
    assert late.load_earlier() == []
    assert late.load_around(seqs[-1], limit=4) == []  # all held already
    with pytest.raises(ChatError) as bad:
        late.load_around(0)
    assert bad.value.code == "invalid_field"
    arrived = Collector()
    late.on_message(arrived)
    live = room.send("after the window")
    assert arrived.wait_until(lambda got: any(m["seq"] == live["seq"] for m in got))
    assert [m["seq"] for m in late.messages] == [*seqs, live["seq"]]
