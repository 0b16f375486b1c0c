"""Replies, reactions, edits and deletions: log entries through a real server and ChatClient."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError

from helpers import Collector, JupyterServer, TcpProxy, converse

Clients = Callable[..., ChatClient]
SECRET = "the launch code is 0000-SECRET"


def test_replies_reactions_and_edits_reach_everyone_and_late_joiners(clients: Clients) -> None:
    alice, bob = clients(), clients()
    a_room, b_room = alice.join("talk"), bob.join("talk")
    a_changes, b_changes = Collector(), Collector()
    a_room.on_change(a_changes)
    b_room.on_change(b_changes)
    question = a_room.send("lunch at noon?")
    reply = b_room.send("yes!", reply_to=question["seq"])
    assert reply["reply_to"] == question["seq"] and reply["replies"] == 0
    assert b_changes.wait_until(lambda seen: any(m["replies"] == 1 for m in seen))

    reacted = b_room.react(question["seq"], "👍")
    assert reacted["reactions"] == {"👍": [bob.user["username"]]}
    assert b_room.react(question["seq"], "👍")["reactions"] == reacted["reactions"]  # no twice
    a_room.react(question["seq"], "👍")
    edited = a_room.edit(question["seq"], "lunch at 12:30?")
    assert edited["body"] == "lunch at 12:30?" and edited["edited"] is not None
    assert edited["reactions"] == {"👍": [bob.user["username"], alice.user["username"]]}
    after = b_room.unreact(question["seq"], "👍")
    assert after["reactions"] == {"👍": [alice.user["username"]]}

    def settled(room: Any) -> dict[str, Any]:
        return next(m for m in room.messages if m["seq"] == question["seq"])

    for changes in (a_changes, b_changes):  # bob's unreact reaches alice too
        changes.wait_until(lambda seen: any(m["rev"] == after["rev"] for m in seen))
    assert settled(b_room) == settled(a_room) == after
    assert after["replies"] == 1 and after["rev"] > reply["seq"]
    late = clients().join("talk")
    assert late.messages == a_room.messages == b_room.messages
    assert [m["seq"] for m in late.messages] == [question["seq"], reply["seq"]]  # no changes


def test_only_the_author_edits_or_deletes_and_refusals_say_why(clients: Clients) -> None:
    alice, bob = clients(), clients()
    a_room, b_room = alice.join("rules"), bob.join("rules")
    mine = a_room.send("mine")
    change = a_room.react(mine["seq"], "🎉")
    for attempt in (
        lambda: b_room.edit(mine["seq"], "not yours"),
        lambda: b_room.delete(mine["seq"]),
    ):
        with pytest.raises(ChatError) as refused:
            attempt()
        assert refused.value.code == "forbidden" and "author" in str(refused.value)
    for seq in (999, change["rev"]):  # nothing there; a change entry is not a message
        with pytest.raises(ChatError) as missing:
            b_room.react(seq, "👍")
        assert missing.value.code == "not_found"
    with pytest.raises(ChatError) as bad:
        b_room.react(mine["seq"], "two words")
    assert bad.value.code == "invalid_field"
    with pytest.raises(ChatError) as bad_seq:
        b_room.react(0, "👍")
    assert bad_seq.value.code == "invalid_field"
    assert a_room.messages[0]["body"] == "mine"


def test_a_deleted_body_is_gone_from_everything(clients: Clients, server: JupyterServer) -> None:
    alice, bob = clients(), clients()
    a_room, b_room = alice.join("oops"), bob.join("oops")
    first = a_room.send("a secret first draft")
    a_room.edit(first["seq"], SECRET)
    a_room.react(first["seq"], "👀")
    reply = b_room.send("noted", reply_to=first["seq"])
    changes = Collector()
    b_room.on_change(changes)
    deleted = a_room.delete(first["seq"])
    assert deleted["deleted"] and deleted["body"] == "" and deleted["reactions"] == {}
    assert changes.wait_until(lambda seen: any(m["deleted"] for m in seen))
    assert a_room.delete(first["seq"])["deleted"]  # deleting twice changes nothing
    for attempt in (
        lambda: a_room.edit(first["seq"], "again"),
        lambda: b_room.react(first["seq"], "👍"),
        lambda: b_room.send("late reply", reply_to=first["seq"]),
    ):
        with pytest.raises(ChatError) as refused:
            attempt()
        assert refused.value.code == "message_deleted"

    # A joiner, a reconnecting client (whose gap holds the edit) and the file: no body.
    late = clients().join("oops")
    assert [m["body"] for m in late.messages] == ["", "noted"]
    assert late.messages[0]["deleted"] and late.messages[1]["reply_to"] == first["seq"]
    assert reply["seq"] in [m["seq"] for m in late.messages]
    text = "".join(str(m) for m in late.messages)
    assert "secret" not in text and "SECRET" not in text
    alice.close()
    server_files = [server.db_path, Path(f"{server.db_path}-wal")]
    for path in server_files:
        if path.exists():
            assert b"SECRET" not in path.read_bytes() and b"first draft" not in path.read_bytes()
    with sqlite3.connect(server.db_path) as db:
        bodies = [row[0] for row in db.execute("SELECT body FROM messages")]
    assert not any("SECRET" in body or "draft" in body for body in bodies)


FAST = ("--ChatExtensionApp.message_rate_limit=1000000", "--ChatExtensionApp.message_burst=100000")


def test_conversations_converge_under_connection_cuts(tmp_path: Path) -> None:
    """Three people reply, react, edit and delete at random through cut connections."""
    server = JupyterServer(
        tmp_path / "server",
        base_url="/user/alice/",
        args=(*FAST, "--ChatExtensionApp.history_on_join=5000"),
    ).start()
    proxy = TcpProxy(server.port).start()
    url = f"http://127.0.0.1:{proxy.port}{server.base_url}"
    people = [ChatClient(url=url, token=server.token, timeout=60) for _ in range(3)]
    stop = threading.Event()
    cuts = 0

    def cutter() -> None:
        nonlocal cuts
        while not stop.wait(0.3):
            cuts += proxy.cut()

    try:
        rooms = [person.join("storm") for person in people]
        arrivals = [Collector() for _ in rooms]
        for room, seen in zip(rooms, arrivals, strict=True):
            room.on_message(seen)
        thread = threading.Thread(target=cutter, daemon=True)
        thread.start()
        with ThreadPoolExecutor(3) as pool:
            done = pool.map(lambda i: converse(rooms[i], seed=i, steps=150), range(3))
            assert sum(done) > 300
        stop.set()
        thread.join()
        last = max(room.seq for room in rooms)
        marker = rooms[0].send("the end")
        for seen in arrivals:  # entries arrive in seq order: every change is in by then
            seen.wait_until(lambda got: any(m["body"] == "the end" for m in got), timeout=60)
        assert marker["seq"] > last
        fresh = ChatClient(url=server.url, token=server.token).join("storm")
        try:
            expected = fresh.messages
            assert expected[-1]["body"] == "the end"
            for room in rooms:
                assert room.messages == expected
            assert cuts >= 3
        finally:
            fresh.client.close()
    finally:
        stop.set()
        for person in people:
            person.close()
        proxy.stop()
        server.stop()
