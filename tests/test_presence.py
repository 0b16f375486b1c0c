"""Who shows as here: a person, their kernel, a rename (pure logic, no server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec

from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import MemoryHistory
from jupyter_chat_ext.presence import LIST_MAX
from jupyter_chat_ext.protocol import User
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import Session

from helpers import ManualTransport, settle

ALICE = User(username="alice", name="alice", display_name="Alice")
BOB = User(username="bob", name="bob", display_name="Bob")


class Connection:
    def __init__(self, registry: RoomRegistry, user: User) -> None:
        self.transport = ManualTransport()
        self.session = self.transport.session = Session(registry, user, self.transport)
        self.session.open()

    async def told(self, count: int) -> dict[str, Any]:
        """Wait for the ``count``-th presence frame (a room sends one per 0.1 s at most)."""
        await until(lambda: len(self.presence()) >= count)
        return self.presence()[count - 1]

    async def send(self, frame: dict[str, Any]) -> None:
        work = self.session.receive(json.dumps(frame).encode(), binary=False)
        if work is not None:
            await work
        self.transport.flush()
        await settle()

    def presence(self) -> list[dict[str, Any]]:
        return [f for f in self.transport.frames if f["op"] == "presence"]

    def joined(self) -> dict[str, Any]:
        return next(f for f in self.transport.frames if f["op"] == "joined")


async def test_a_person_whose_browser_left_shows_as_their_kernel() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    bob = Connection(registry, BOB)
    await bob.send({"op": "join", "room": "r", "id": "1"})
    browser = Connection(registry, ALICE)
    kernel = Connection(registry, msgspec.structs.replace(ALICE, kernel=True))
    as_kernel = {**msgspec.to_builtins(ALICE), "kernel": True}
    await kernel.send({"op": "join", "room": "r", "id": "1"})
    assert (await bob.told(1))["joined"] == [as_kernel]
    await browser.send({"op": "join", "room": "r", "id": "1"})
    assert (await bob.told(2))["joined"] == [msgspec.to_builtins(ALICE)]
    assert msgspec.to_builtins(ALICE) in browser.joined()["members"]

    browser.session.close()  # the browser closed; the kernel lives on
    assert await bob.told(3) == {"op": "presence", "room": "r", "count": 2, "joined": [as_kernel]}
    late = Connection(registry, BOB)
    await late.send({"op": "join", "room": "r", "id": "1"})
    assert as_kernel in late.joined()["members"]

    kernel.session.close()
    assert await bob.told(4) == {"op": "presence", "room": "r", "count": 1, "left": [as_kernel]}


async def test_a_rename_updates_the_member_entry() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    bob = Connection(registry, BOB)
    await bob.send({"op": "join", "room": "r", "id": "1"})
    first = Connection(registry, ALICE)
    await first.send({"op": "join", "room": "r", "id": "1"})
    await bob.told(1)
    renamed = msgspec.structs.replace(ALICE, display_name="Alice Liddell")
    second = Connection(registry, renamed)  # a tab opened after the rename
    await second.send({"op": "join", "room": "r", "id": "1"})
    assert (await bob.told(2))["joined"] == [msgspec.to_builtins(renamed)]
    assert [m["display_name"] for m in second.joined()["members"]] == ["Bob", "Alice Liddell"]
    first.session.close()
    await settle()
    assert len(bob.presence()) == 2  # still here, as renamed: nothing to tell


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Wait for ``condition()`` to hold (presence in a big room is sent on a timer)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def person(index: int) -> User:
    return User(username=f"u{index:04d}", name=f"u{index:04d}", display_name=f"U {index}")


async def test_a_big_room_announces_arrivals_in_batches_and_pages_its_members() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    watcher = Connection(registry, BOB)
    await watcher.send({"op": "join", "room": "big", "id": "1"})
    crowd = [Connection(registry, person(i)) for i in range(300)]
    for index, connection in enumerate(crowd):
        await connection.send({"op": "join", "room": "big", "id": "1"})
        if index == 150:
            await connection.send({"op": "send", "room": "big", "id": "m", "body": "hi"})
    await until(lambda: any(p["count"] == 301 for p in watcher.presence()))
    batches = watcher.presence()
    assert len(batches) < 300 / 2  # batched: far fewer frames than arrivals
    arrived = [user["username"] for batch in batches for user in batch.get("joined", [])]
    for batch in batches:  # each lists its arrivals, or (a crowd) gives the count alone
        listed = len(batch.get("joined", [])) + len(batch.get("left", []))
        assert (0 < listed <= LIST_MAX) != batch.get("more", False), batch
    crowds = [b["count"] for b in batches if b.get("more")]
    assert len(arrived) + sum(1 for _ in crowds) <= 300 and len(set(arrived)) == len(arrived)
    # Who joined after every change of a batch is not sent it: its `joined` said it all.
    assert crowd[-1].presence() == []

    late = Connection(registry, ALICE)
    await late.send({"op": "join", "room": "big", "id": "1"})
    joined = late.joined()
    assert joined["member_count"] == 302
    assert len(joined["members"]) == 100
    assert joined["members"][0]["username"] == "u0150"  # who spoke recently comes first

    seen: list[str] = []
    after = None
    while True:
        frame: dict[str, Any] = {"op": "members", "room": "big", "id": "p", "limit": 70}
        await late.send(frame if after is None else {**frame, "after": after})
        page = late.transport.frames[-1]
        assert page["op"] == "members" and page["count"] == 302
        seen += [user["username"] for user in page["members"]]
        if "next" not in page:
            break
        after = page["next"]
    assert seen == sorted(["alice", "bob", *(f"u{i:04d}" for i in range(300))])


async def test_a_member_page_is_asked_of_a_joined_room_within_bounds() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    alice = Connection(registry, ALICE)
    await alice.send({"op": "members", "room": "r", "id": "p"})
    assert alice.transport.frames[-1]["code"] == "not_joined"
    await alice.send({"op": "join", "room": "r", "id": "1"})
    for limit in (0, 501, "x"):
        await alice.send({"op": "members", "room": "r", "id": "p", "limit": limit})
        assert alice.transport.frames[-1]["op"] == "error", limit
    await alice.send({"op": "members", "room": "r", "id": "p", "after": "x" * 257})
    assert alice.transport.frames[-1]["op"] == "error"
    await alice.send({"op": "members", "room": "r", "id": "p", "after": "a"})
    page = alice.transport.frames[-1]
    assert [user["username"] for user in page["members"]] == ["alice"]
    assert page["count"] == 1 and "next" not in page


async def test_a_crowd_arriving_at_once_is_told_as_a_count() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    watcher = Connection(registry, BOB)
    await watcher.send({"op": "join", "room": "big", "id": "1"})
    crowd = [Connection(registry, person(i)) for i in range(LIST_MAX + 50)]
    await asyncio.gather(*(c.send({"op": "join", "room": "big", "id": "1"}) for c in crowd))
    total = LIST_MAX + 51
    await until(lambda: any(p["count"] == total for p in watcher.presence()))
    last = watcher.presence()[-1]
    assert last == {"op": "presence", "room": "big", "count": total, "more": True}
