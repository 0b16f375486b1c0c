"""Who shows as here: a person, their kernel, a rename (pure logic, no server)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import MemoryHistory
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

    async def send(self, frame: dict[str, Any]) -> None:
        await self.session.receive(json.dumps(frame).encode(), binary=False)
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
    await kernel.send({"op": "join", "room": "r", "id": "1"})
    await browser.send({"op": "join", "room": "r", "id": "1"})
    seen = [(p.get("joined") or p.get("left"), "left" in p) for p in bob.presence()]
    as_kernel = {**msgspec.to_builtins(ALICE), "kernel": True}
    assert seen == [(as_kernel, False), (msgspec.to_builtins(ALICE), False)]
    assert msgspec.to_builtins(ALICE) in browser.joined()["members"]

    browser.session.close()  # the browser closed; the kernel lives on
    await settle()
    assert bob.presence()[-1] == {"op": "presence", "room": "r", "joined": as_kernel}
    late = Connection(registry, BOB)
    await late.send({"op": "join", "room": "r", "id": "1"})
    assert as_kernel in late.joined()["members"]

    kernel.session.close()
    await settle()
    assert bob.presence()[-1] == {"op": "presence", "room": "r", "left": as_kernel}


async def test_a_rename_updates_the_member_entry() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings())
    bob = Connection(registry, BOB)
    await bob.send({"op": "join", "room": "r", "id": "1"})
    first = Connection(registry, ALICE)
    await first.send({"op": "join", "room": "r", "id": "1"})
    renamed = msgspec.structs.replace(ALICE, display_name="Alice Liddell")
    second = Connection(registry, renamed)  # a tab opened after the rename
    await second.send({"op": "join", "room": "r", "id": "1"})
    assert bob.presence()[-1]["joined"] == msgspec.to_builtins(renamed)
    assert [m["display_name"] for m in second.joined()["members"]] == ["Bob", "Alice Liddell"]
    first.session.close()
    await settle()
    assert bob.presence()[-1]["joined"] == msgspec.to_builtins(renamed)  # still here
