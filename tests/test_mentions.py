"""Mentions that reach you anywhere (also offline, once); read markers shared by your tabs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_chat_ext import ChatClient

from helpers import Collector

Clients = Callable[..., ChatClient]


@pytest.fixture
def bob_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ChatClient made with remember_identity=True is the same person (bob)."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "bob-data"))


@pytest.mark.usefixtures("bob_identity")
def test_a_mention_reaches_an_offline_user_once_and_mark_read_clears_it_everywhere(
    clients: Clients,
) -> None:
    alice, bob = clients(), clients(remember_identity=True)
    a_room = alice.join("general")
    bob.join("general").send("I'm around")  # bob is known in the room now
    bob_name = bob.user["username"]
    bob.close()

    mention = a_room.send(f"@{bob_name} can you look at the plot?")
    assert mention["mentions"] == [bob_name]
    a_room.send("no mention here")

    again = clients(remember_identity=True)
    assert again.user["username"] == bob_name
    also = clients(remember_identity=True)  # a second tab of bob's, say
    for connection in (again, also):
        wait_for(lambda c=connection: [m["seq"] for m in c.mentions()] == [mention["seq"]])
    assert again.mentions()[0]["body"].startswith(f"@{bob_name}")

    live = Collector()
    also.on_mention(live)  # `also` has not joined the room: told all the same
    second = a_room.send(f"and @{bob_name}, the table too")
    assert live.wait_for(1)[0]["seq"] == second["seq"]

    b_room = again.join("general")
    assert b_room.unread == 3  # alice's three messages past bob's marker
    assert b_room.mark_read() == b_room.seq
    assert b_room.unread == 0 and again.mentions() == []
    wait_for(lambda: also.mentions() == [])  # cleared in bob's other connection too
    other = also.join("general")
    assert other.unread == 0
    assert clients(remember_identity=True).mentions() == []  # and at the next connect


def test_a_mention_never_reaches_someone_who_may_not_read_the_room(clients: Clients) -> None:
    alice, bob = clients(), clients()
    room = alice.join("plans", private=True, members=[bob.user["username"]])
    bob.join("plans").send("hi")  # bob is a recent author here
    seen = Collector()
    bob.on_mention(seen)
    room.remove(bob.user["username"])
    secret = room.send(f"@{bob.user['username']} the secret plan")
    marker = alice.join("lobby")
    marker_seen = Collector()
    bob.on_mention(marker_seen)
    bob.join("lobby").send("here")
    marker.send(f"@{bob.user['username']} ping")
    marker_seen.wait_until(lambda got: any(m["room"] == "lobby" for m in got))
    assert all(m["room"] != "plans" for m in seen.items)
    assert secret["seq"] not in [m["seq"] for m in bob.mentions() if m["room"] == "plans"]
    assert [m["room"] for m in bob.mentions()] == ["lobby"]


def test_an_edit_that_adds_a_mention_tells_only_the_newly_mentioned(clients: Clients) -> None:
    alice, bob, carol = clients(), clients(), clients()
    names = {c: c.user["username"] for c in (bob, carol)}
    for person in (bob, carol):
        person.join("edits").send("here")  # known in the room
    told = {person: Collector() for person in (bob, carol)}
    for person, seen in told.items():
        person.on_mention(seen)
    room = alice.join("edits")
    first = room.send(f"@{names[carol]} the plot")
    assert told[carol].wait_for(1)[0]["seq"] == first["seq"]
    room.edit(first["seq"], f"@{names[carol]} and @{names[bob]}, the plot")
    (got,) = told[bob].wait_for(1)
    assert got["seq"] == first["seq"] and got["edited"] is not None
    assert got["mentions"] == [names[carol], names[bob]]
    # A second edit keeping both mentions tells no one again; a new message to carol
    # arrives after it, so nothing from the edit is still on its way.
    room.edit(first["seq"], f"@{names[carol]} and @{names[bob]}: the plot, fixed")
    marker = room.send(f"@{names[carol]} done")
    told[carol].wait_until(lambda got: any(m["seq"] == marker["seq"] for m in got))
    assert [m["seq"] for m in told[carol].items] == [first["seq"], marker["seq"]]
    assert [m["seq"] for m in told[bob].items] == [first["seq"]]


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until ``condition()`` holds (state another thread changes, with no event)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError("condition not met in time")
