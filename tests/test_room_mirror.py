"""RoomState, the client's room mirror, fed frames directly: no server, no socket."""

from __future__ import annotations

import msgspec

from jupyter_chat_ext import protocol as p
from jupyter_chat_ext import values
from jupyter_chat_ext.client.mirror import RoomState

ALICE = p.User(username="alice", name="alice", display_name="Alice")
BOB = p.User(username="bob", name="bob", display_name="Bob")


def message(seq: int, body: str | None = None, ts: float | None = None) -> p.Message:
    return p.Message(
        room="r", seq=seq, id=f"m{seq}", user=ALICE, ts=ts or float(seq), body=body or f"b{seq}"
    )


def joined(epoch: str, history: list[p.Message], recovered: bool = False, **kw: object) -> p.Joined:
    seq = history[-1].seq if history else 0
    defaults: dict[str, object] = {"members": [ALICE], "values": {}}
    defaults.update(kw)
    return p.Joined(
        room="r", epoch=epoch, seq=seq, history=history, recovered=recovered, **defaults
    )


def data(topic: str, value: object, ts: float = 1.0) -> p.DataEvent:
    raw = msgspec.Raw(values.encode(value)[0])
    return p.DataEvent(room="r", topic=topic, value=raw, user=BOB, ts=ts, id=f"v{ts}")


def bodies(state: RoomState) -> list[str]:
    return [m["body"] for m in state.messages]


def test_first_join_is_history_not_news() -> None:
    state = RoomState("r")
    fresh = state.apply_joined(joined("e1", [message(1), message(2)]))
    assert fresh == []
    assert [m["body"] for m in state.history] == ["b1", "b2"]
    assert bodies(state) == ["b1", "b2"]
    assert (state.epoch, state.seq, state.joined) == ("e1", 2, True)
    assert state.members == [{"username": "alice", "name": "alice", "display_name": "Alice"}]


def test_duplicate_and_out_of_order_messages_are_ignored() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", [message(1)]))
    assert state.apply_message(message(2))["body"] == "b2"  # type: ignore[index]
    assert state.apply_message(message(2)) is None  # a duplicate
    assert state.apply_message(message(1)) is None  # older than what we hold
    assert state.apply_message(message(3)) is not None
    assert bodies(state) == ["b1", "b2", "b3"]
    assert state.seq == 3


def test_recovered_resume_adds_exactly_the_gap() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", [message(1), message(2)]))
    state.joined = False  # the connection dropped
    fresh = state.apply_joined(joined("e1", [message(2), message(3)], recovered=True))
    assert [m["body"] for m in fresh] == ["b3"]
    assert bodies(state) == ["b1", "b2", "b3"]
    assert state.seq == 3


def test_unrecovered_resume_from_a_new_epoch_resets_the_messages() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", [message(1, ts=10.0), message(2, ts=20.0)]))
    state.joined = False
    # The server's history was reset: seq starts again; only what is newer is news.
    reset = [message(1, "old", ts=15.0), message(2, "new", ts=30.0)]
    fresh = state.apply_joined(joined("e2", reset, recovered=False))
    assert [m["body"] for m in fresh] == ["new"]
    assert bodies(state) == ["old", "new"]  # replaced, not appended
    assert (state.epoch, state.seq) == ("e2", 2)


def test_unrecovered_resume_in_the_same_epoch_reports_past_our_seq() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", [message(1), message(2)]))
    state.joined = False
    fresh = state.apply_joined(joined("e1", [message(3), message(4)], recovered=False))
    assert [m["body"] for m in fresh] == ["b3", "b4"]
    assert bodies(state) == ["b3", "b4"]


def test_values_series_and_an_invalid_value() -> None:
    state = RoomState("r", series_length=2)
    state.apply_joined(joined("e1", []))
    for ts in (1.0, 2.0, 3.0):
        event = state.apply_data(data("loss", ts / 10, ts))
    assert event["value"] == 0.3 and event["user"]["username"] == "bob"
    assert state.values == {"loss": 0.3}
    assert state.series("loss") == [(2.0, 0.2), (3.0, 0.3)]  # series_length bounds it
    bad = p.DataEvent(room="r", topic="x", value=msgspec.Raw(b"{nope"), user=BOB, ts=4.0)
    assert isinstance(state.apply_data(bad)["value"], values.InvalidValue)
    assert isinstance(state.values["x"], values.InvalidValue)


def test_joined_values_come_with_their_series() -> None:
    snapshot = data("loss", 0.5, 9.0)
    snapshot.series = [(8.0, msgspec.Raw(b"0.6")), (9.0, msgspec.Raw(b"0.5"))]
    state = RoomState("r")
    state.apply_joined(joined("e1", [], values={"loss": snapshot}))
    assert state.values == {"loss": 0.5}
    assert state.series("loss") == [(8.0, 0.6), (9.0, 0.5)]


def test_presence_and_typing() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", []))
    assert state.apply_presence(p.Presence(room="r", count=2, joined=[BOB])) == [
        {"joined": {"username": "bob", "name": "bob", "display_name": "Bob"}}
    ]
    assert sorted(m["username"] for m in state.members) == ["alice", "bob"]
    assert state.member_count == 2
    state.apply_typing(p.TypingEvent(room="r", user=BOB, active=True))
    assert [u["username"] for u in state.typing_users] == ["bob"]
    [event] = state.apply_presence(p.Presence(room="r", count=1, left=[BOB]))
    assert event["left"]["username"] == "bob" and state.member_count == 1
    assert [m["username"] for m in state.members] == ["alice"]
    assert state.typing_users == []  # who leaves stops typing
    assert state.apply_presence(p.Presence(room="r", count=500, more=True)) == []
    assert state.member_count == 500 and [m["username"] for m in state.members] == ["alice"]


def test_a_message_ends_its_authors_typing() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", []))
    state.apply_typing(p.TypingEvent(room="r", user=ALICE, active=True))
    state.apply_message(message(1))
    assert state.typing_users == []


def test_earlier_pages_go_before_without_duplicates() -> None:
    state = RoomState("r")
    state.apply_joined(joined("e1", [message(3), message(4)]))
    page = p.HistoryPage(room="r", id="h", messages=[message(1), message(2), message(3)])
    older = state.apply_earlier(page)
    assert [m["body"] for m in older] == ["b1", "b2"]
    assert bodies(state) == ["b1", "b2", "b3", "b4"]


def test_access() -> None:
    state = RoomState("r")
    access = p.Access(room="r", owner="alice", members=["alice"])
    state.apply_joined(joined("e1", [], access=access))
    assert state.access == {"room": "r", "owner": "alice", "members": ["alice"]}
    state.apply_access(p.Access(room="r", owner="alice", members=["alice", "bob"], id="x"))
    assert state.access == {"room": "r", "owner": "alice", "members": ["alice", "bob"]}
