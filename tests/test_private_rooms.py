"""Private rooms: a non-member never reads one, and asking for one never lands you elsewhere.

Against the in-process server (pytest-jupyter) with raw WebSocket clients; the same
rules across Redis replicas are in test_redis.py.
"""

from __future__ import annotations

import asyncio

import pytest

from jupyter_chat_ext.access import Action, refusal, require
from jupyter_chat_ext.protocol import Access, ProtocolError

from conftest import RawConnect


async def test_a_join_during_creation_is_refused_and_reads_nothing(connect: RawConnect) -> None:
    for attempt in range(5):  # the race each time with a room that does not exist yet
        owner, outsider = await connect(), await connect()
        name = f"race-{attempt}"
        await asyncio.gather(
            owner.send({"op": "join", "room": name, "id": "mine", "private": True}),
            outsider.send({"op": "join", "room": name, "id": "peek"}),
        )
        joined = await owner.expect("joined", id="mine")
        assert joined["access"]["owner"] == owner.hello["user"]["username"]
        refused = await outsider.expect("error", id="peek")
        assert refused["code"] == "forbidden"
        await owner.send({"op": "send", "room": name, "id": "s", "body": "for my eyes"})
        await owner.expect("message", id="s")
        await outsider.send({"op": "history", "room": name, "id": "h", "before": 2})
        assert (await outsider.expect("error", id="h"))["code"] == "not_joined"


async def test_asking_for_a_private_room_never_lands_you_in_an_existing_one(
    connect: RawConnect,
) -> None:
    squatter, me, owner = await connect(), await connect(), await connect()
    await squatter.join("taken")  # a public room, created first by someone else
    await me.send({"op": "join", "room": "taken", "id": "p1", "private": True})
    refused = await me.expect("error", id="p1")
    assert refused["code"] == "room_exists" and "public" in refused["message"]

    await squatter.send({"op": "send", "room": "used", "id": "1", "body": "history"})
    await squatter.join("used")
    await squatter.send({"op": "send", "room": "used", "id": "2", "body": "then left"})
    await squatter.expect("message", id="2")
    await squatter.send({"op": "leave", "room": "used", "id": "bye"})
    await squatter.expect("left", id="bye")
    await me.send({"op": "join", "room": "used", "id": "p2", "private": True})
    assert (await me.expect("error", id="p2"))["code"] == "room_exists"  # empty, not new

    my_name = me.hello["user"]["username"]
    await owner.join("theirs", private=True, members=[my_name])
    await me.send({"op": "join", "room": "theirs", "id": "p3", "private": True})
    refused = await me.expect("error", id="p3")
    assert refused["code"] == "room_exists" and "private" in refused["message"]
    assert (await me.join("theirs"))["access"]["owner"] == owner.hello["user"]["username"]

    again = await owner.join("theirs", private=True)  # your own private room stays yours
    assert again["access"]["owner"] == owner.hello["user"]["username"]


PUBLIC = None
PRIVATE = Access(room="p", owner="olive", members=["olive", "mia"])
DIRECT = Access(room='dm:["dan","mia"]', members=["dan", "mia"])


@pytest.mark.parametrize(
    ("access", "user", "allowed"),
    [
        (PUBLIC, "anyone", {Action.READ, Action.POST, Action.PUBLISH, Action.TYPE}),
        (PRIVATE, "olive", set(Action)),
        (PRIVATE, "mia", {Action.READ, Action.POST, Action.PUBLISH, Action.TYPE}),
        (PRIVATE, "eve", set()),
        (DIRECT, "dan", {Action.READ, Action.POST, Action.PUBLISH, Action.TYPE}),
        (DIRECT, "eve", set()),
    ],
    ids=["public", "owner", "member", "outsider", "direct-member", "direct-outsider"],
)
def test_access_matrix(access: Access | None, user: str, allowed: set[Action]) -> None:
    for action in Action:
        reason = refusal(access, user, action)
        assert (reason is None) == (action in allowed), (action, reason)
        if reason is not None:
            with pytest.raises(ProtocolError) as refused:
                require(access, user, action, room="r", frame_id="f")
            assert refused.value.code == "forbidden" and refused.value.id == "f"
