"""The conversation rules as pure logic, and who may delete: a moderator in a real core."""

from __future__ import annotations

import json

import pytest

from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.conversation import MENTIONS_MAX, ChangeEntry, apply, mentions_in
from jupyter_chat_ext.history import MemoryHistory
from jupyter_chat_ext.protocol import Message, ProtocolError, User, is_reaction
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import Session

from helpers import ManualTransport, settle

ALICE = User(username="alice", name="Alice", display_name="Alice")
BOB = User(username="bob", name="Bob", display_name="Bob")
MOD = User(username="mod", name="Mod", display_name="Mod")
HELLO = Message(room="r", seq=1, id="m1", user=ALICE, ts=1.0, body="hello @bob")


def change(kind: str, user: User = BOB, **fields: object) -> ChangeEntry:
    return ChangeEntry(room="r", id="c", user=user, ts=2.0, kind=kind, target=1, **fields)  # type: ignore[arg-type]


def test_reactions_are_sets_per_user_in_order_and_bounded() -> None:
    once = apply(HELLO, change("react", emoji="👍"), max_reactions=2)
    assert apply(once, change("react", emoji="👍"), max_reactions=2) == once
    both = apply(once, change("react", ALICE, emoji="👍"), max_reactions=2)
    assert both.reactions == {"👍": ["bob", "alice"]}
    two = apply(both, change("react", emoji="🎉"), max_reactions=2)
    with pytest.raises(ProtocolError) as full:
        apply(two, change("react", emoji="👀"), max_reactions=2)
    assert full.value.code == "too_many_reactions"
    assert apply(two, change("react", ALICE, emoji="🎉"), max_reactions=2).reactions["🎉"] == [
        "bob",
        "alice",
    ]
    gone = apply(two, change("unreact", emoji="🎉"), max_reactions=2)
    assert gone.reactions == {"👍": ["bob", "alice"]}
    assert apply(gone, change("unreact", emoji="🎉"), max_reactions=2) == gone  # not there


def test_edits_are_the_authors_deletion_erases_and_is_final() -> None:
    with pytest.raises(ProtocolError) as forbidden:
        apply(HELLO, change("edit", body="mine now"), max_reactions=5)
    assert forbidden.value.code == "forbidden"
    edited = apply(HELLO, change("edit", ALICE, body="hi", mentions=("bob",)), max_reactions=5)
    assert (edited.body, edited.edited, edited.mentions) == ("hi", 2.0, ["bob"])
    with pytest.raises(ProtocolError):
        apply(edited, change("delete"), max_reactions=5)
    deleted = apply(edited, change("delete", moderator=True), max_reactions=5)
    assert (deleted.body, deleted.deleted, deleted.edited, deleted.mentions) == ("", True, None, [])
    for kind, fields in (("edit", {"body": "x"}), ("react", {"emoji": "👍"})):
        with pytest.raises(ProtocolError) as refused:
            apply(deleted, change(kind, ALICE, **fields), max_reactions=5)
        assert refused.value.code == "message_deleted"
    with pytest.raises(ProtocolError) as missing:
        apply(None, change("react", emoji="👍"), max_reactions=5)
    assert missing.value.code == "not_found"


def test_mentions_are_known_usernames_in_order_once() -> None:
    known = ["bob", "carol.x", "dave"]
    body = "@bob and @carol.x, mail bob@example.org, @@dave? @nobody @bob"
    assert mentions_in(body, known) == ["bob", "carol.x"]
    assert mentions_in("(@dave)", known) == ["dave"]
    crowd = [f"user{i}" for i in range(100)]
    assert mentions_in(" ".join(f"@{name}" for name in crowd), crowd) == crowd[:MENTIONS_MAX]


async def test_a_moderator_may_delete_anyones_message_others_may_not() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(moderators=["mod"]))
    sessions = {}
    for user in (ALICE, BOB, MOD):
        transport = ManualTransport()
        session = transport.session = Session(registry, user, transport)
        session.open()
        sessions[user.username] = (session, transport)
    for session, _ in sessions.values():
        await session.receive(json.dumps({"op": "join", "room": "r", "id": "j"}))
    alice, bob, mod = (sessions[name] for name in ("alice", "bob", "mod"))
    assert mod[1].frames[0]["moderator"] is True and "moderator" not in bob[1].frames[0]
    alice[0].receive(json.dumps({"op": "send", "room": "r", "id": "s", "body": "hi @bob"}))
    await settle()
    sent = next(f for f in bob[1].frames if f["op"] == "message")
    assert sent["mentions"] == ["bob"]
    bob[0].receive(json.dumps({"op": "delete", "room": "r", "id": "d1", "seq": 1}))
    await settle()
    refusal = next(f for f in bob[1].frames if f["op"] == "error")
    assert (refusal["code"], refusal["id"]) == ("forbidden", "d1")
    mod[0].receive(json.dumps({"op": "delete", "room": "r", "id": "d2", "seq": 1}))
    await settle()
    deleted = next(f for f in alice[1].frames if f["op"] == "change")
    assert deleted["kind"] == "delete" and deleted["user"]["username"] == "mod"
    assert deleted["message"]["deleted"] and deleted["message"]["body"] == ""
    registry_room = await registry.get("r")
    assert [m.body for m in registry_room.log.fresh_history()] == [""]


async def test_changes_never_crowd_messages_out_of_a_joiners_history() -> None:
    """A reaction toggled many times (each a log entry) hides no message from joiners."""
    store = MemoryHistory()
    settings = ChatSettings(history_on_join=100, message_burst=10_000, message_rate_limit=1e6)
    registry = RoomRegistry(store, settings)
    alice = ManualTransport()
    session = alice.session = Session(registry, ALICE, alice)
    session.open()
    await session.receive(json.dumps({"op": "join", "room": "r", "id": "j"}))
    for i in range(50):
        session.receive(json.dumps({"op": "send", "room": "r", "id": f"m{i}", "body": f"m{i}"}))
    await settle()
    for i in range(1100):  # past the room's cache of recent entries (at least 1,000)
        op = "react" if i % 2 == 0 else "unreact"
        frame = {"op": op, "room": "r", "id": f"t{i}", "seq": 1, "emoji": "👍"}
        session.receive(json.dumps(frame))
        if i % 100 == 0:
            await settle()
    await settle()
    for joiner_registry in (registry, RoomRegistry(store, settings)):  # cached, then reloaded
        bob = ManualTransport()
        joiner = bob.session = Session(joiner_registry, BOB, bob)
        joiner.open()
        await joiner.receive(json.dumps({"op": "join", "room": "r", "id": "j"}))
        joined = next(f for f in bob.frames if f["op"] == "joined")
        assert [m["body"] for m in joined["history"]] == [f"m{i}" for i in range(50)]
        assert joined["seq"] == 1150 and "reactions" not in joined["history"][0]


def test_reactions_are_visible_emoji_not_invisible_or_bidi_tricks() -> None:
    for good in ["👍", "❤️", "👍🏽", "👨\u200d👩\u200d👧", "🏴\U000e0067\U000e0062\U000e007f", "+1"]:
        assert is_reaction(good), good
    bad = ["\u202eevil", "\u200b", "\u200d" * 32, "a" + "\u0301" * 31, "👍\u200b", "\ufeff"]
    for hostile in [*bad, "a b", "\u0301a", "", "x" * 33]:
        assert not is_reaction(hostile), repr(hostile)


async def test_a_private_rooms_member_list_is_bounded() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(max_room_members=10))
    transport = ManualTransport()
    session = transport.session = Session(registry, ALICE, transport)
    session.open()
    crowd = [f"user{i}" for i in range(10)]  # with alice: 11
    join = {"op": "join", "room": "big", "id": "j1", "private": True, "members": crowd}
    await session.receive(json.dumps(join))
    assert transport.frames[-1]["code"] == "too_many_members"
    join = {**join, "id": "j2", "members": crowd[:8]}
    await session.receive(json.dumps(join))
    assert transport.frames[-1]["op"] == "joined"
    for frame in (
        {"op": "access", "room": "big", "id": "a1", "add": ["x", "y"]},
        {"op": "access", "room": "big", "id": "a2", "add": ["bad\u202ename"]},
    ):
        await session.receive(json.dumps(frame))
        assert transport.frames[-1]["code"] in ("too_many_members", "invalid_field")
        assert transport.frames[-1]["id"] == frame["id"]
    await session.receive(json.dumps({"op": "access", "room": "big", "id": "a3", "add": ["x"]}))
    assert len(transport.frames[-1]["members"]) == 10


async def test_a_flood_of_mentions_neither_swamps_nor_hides_the_others() -> None:
    settings = ChatSettings(message_burst=10_000, message_rate_limit=1e6)
    registry = RoomRegistry(MemoryHistory(), settings)
    people = {}
    for user in (ALICE, BOB, MOD):
        transport = ManualTransport()
        session = transport.session = Session(registry, user, transport)
        session.open()
        people[user.username] = (session, transport)
    (alice, _), (bob, bob_seen), (mallory, _) = people["alice"], people["bob"], people["mod"]
    await bob.receive(json.dumps({"op": "join", "room": "lobby", "id": "j"}))
    for session in (alice, mallory):
        await session.receive(json.dumps({"op": "join", "room": "lobby", "id": "j"}))
    await mallory.receive(
        json.dumps({"op": "join", "room": "trap", "id": "t", "private": True, "members": ["bob"]})
    )
    alice.receive(json.dumps({"op": "send", "room": "lobby", "id": "a", "body": "@bob look"}))
    await settle()
    for i in range(200):
        frame = {"op": "send", "room": "trap", "id": f"m{i}", "body": f"@bob spam {i}"}
        mallory.receive(json.dumps(frame))
    await settle()
    pushed = [f for f in bob_seen.frames if f["op"] == "mention"]
    assert pushed[0]["room"] == "lobby"  # alice's, then up to the burst one person is pushed
    assert 30 <= len(pushed) <= 35 < 201
    again = ManualTransport()
    fresh = again.session = Session(registry, BOB, again)
    fresh.open()
    await settle()
    listed = next(f for f in again.frames if f["op"] == "mentions")["mentions"]
    rooms = [m["room"] for m in listed]
    assert "lobby" in rooms and rooms.count("trap") == 20  # alice's is not pushed out
