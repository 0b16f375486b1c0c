"""How ChatClient takes frames off its connection: handled in tornado's callback, in order.

The :class:`Inbox` unit tests pin the order and the hand-over; the live test shows that
a client whose callback is stuck neither loses the connection nor the newest value.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from jupyter_chat_ext import ChatClient
from jupyter_chat_ext.client.connect import Inbox

from helpers import Collector, JupyterServer


def test_frames_before_serve_wait_in_order_and_later_ones_are_handled_at_once() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        inbox("hello")
        inbox("mention 1")
        assert await inbox.first() == "hello"
        inbox("mention 2")
        handled: list[str | bytes] = []
        inbox.serve(handled.append)
        assert handled == ["mention 1", "mention 2"]  # the early ones, in order
        inbox(b"binary value")
        assert handled[-1] == b"binary value"  # within the call: no queue, no loop turn
        assert not inbox.closed.done()
        inbox(None)
        assert inbox.closed.done()
        inbox("late")  # after the close: never handled
        assert handled == ["mention 1", "mention 2", b"binary value"]

    asyncio.run(scenario())


def test_a_connection_closed_before_or_after_its_hello_ends_the_inbox() -> None:
    async def scenario() -> None:
        silent = Inbox()
        waiting = asyncio.ensure_future(silent.first())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing yet: first() waits
        silent(None)
        assert await waiting is None and silent.closed.done()

        greeted = Inbox()
        greeted("hello")
        greeted("mention")
        greeted(None)
        assert await greeted.first() == "hello"
        handled: list[str | bytes] = []
        greeted.serve(handled.append)
        assert handled == ["mention"] and greeted.closed.done()

    asyncio.run(scenario())


def test_a_client_whose_callback_is_stuck_keeps_its_connection_and_gets_the_newest_value(
    server: JupyterServer,
) -> None:
    with (
        ChatClient(url=server.url, token=server.token) as sender,
        ChatClient(url=server.url, token=server.token) as stuck,
    ):
        room = sender.join("stuck-callback")
        mine = stuck.join("stuck-callback")
        states = Collector()
        stuck.on_state(lambda state: states({"state": state}))
        gate, entered = threading.Event(), threading.Event()

        def slow(event: dict[str, Any]) -> None:
            entered.set()
            gate.wait(30)  # the client's loop thread is stuck here

        mine.on_data(slow)
        room.publish("counter", {"i": -1})
        assert entered.wait(30)
        for i in range(3_000):  # ~3 MB while the receiver handles nothing
            room.publish("counter", {"i": i, "pad": "x" * 900})
        newest = threading.Event()
        mine.on_data(lambda event: event["value"]["i"] == 2_999 and newest.set())
        gate.set()
        assert newest.wait(60)
        assert mine.values["counter"]["i"] == 2_999
        assert states.items == []  # never disconnected
