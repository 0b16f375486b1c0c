"""Session flow control as pure logic: a transport whose writes we flush by hand."""

from __future__ import annotations

import json

from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import MemoryHistory, RoomLog, StoreUnavailable
from jupyter_chat_ext.protocol import User
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import CLOSE_SLOW_READER, Session

from helpers import ManualTransport, settle

ALICE = User(username="alice", name="Alice", display_name="Alice")


async def test_a_slow_reader_gets_conflated_values_then_is_closed() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(max_send_queue=64 * 1024))
    transport = ManualTransport()
    session = transport.session = Session(registry, ALICE, transport)
    session.open()
    assert transport.frames[0]["op"] == "hello"
    message = json.dumps({"op": "message", "body": "x" * 1000}).encode()

    while session.queued_bytes <= 16 * 1024:  # a quarter of the bound: conflation starts
        session.write(message)
    sent = len(transport.frames)
    for value in range(100):
        session.write(f'{{"op":"data","value":{value}}}'.encode(), key=("data", "r", "t"))
        session.write(b'{"op":"typing"}', key=("typing", "r", "bob"))
    session.write(message)  # chat messages are never held back or dropped
    assert len(transport.frames) == sent + 1
    assert transport.frames[-1]["op"] == "message"

    transport.flush()
    await settle()
    assert 0 < session.queued_bytes < 100  # only the two conflated frames are queued now
    newest = [f for f in transport.frames[sent + 1 :] if f["op"] == "data"]
    assert newest == [{"op": "data", "value": 99}]  # only the latest value, once
    assert [f["op"] for f in transport.frames[sent + 1 :]].count("typing") == 1

    transport.flush()
    await settle()
    while transport.closed is None:
        session.write(message)
        assert session.queued_bytes <= 64 * 1024
    assert transport.closed[0] == CLOSE_SLOW_READER
    await settle()
    assert session.closed


async def test_one_large_frame_always_fits_an_empty_queue() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(max_send_queue=65_536))
    transport = ManualTransport()
    session = transport.session = Session(registry, ALICE, transport)
    session.write(b'"' + b"x" * 200_000 + b'"')
    assert transport.closed is None and len(transport.frames) == 1


class UnreachableStore(MemoryHistory):
    """A history store whose backend is down (as Redis can be for the hub service)."""

    async def open_room(self, room: str, recent: int) -> RoomLog:
        raise StoreUnavailable("the store is down")


async def test_a_join_refused_below_the_session_keeps_its_id() -> None:
    registry = RoomRegistry(UnreachableStore(), ChatSettings())
    transport = ManualTransport()
    session = transport.session = Session(registry, ALICE, transport)
    session.open()
    await session.receive(json.dumps({"op": "join", "room": "r", "id": "j1"}))
    error = transport.frames[-1]
    assert (error["op"], error["code"], error["id"]) == ("error", "unavailable", "j1")
