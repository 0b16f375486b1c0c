"""A hostile user cannot break or freeze the Chat widget of the people who read a room.

Mallory speaks the protocol directly (a raw WebSocket, as any program on a shared Hub
can) and posts values shaped like the binary codec's markers, a binary frame whose
header claims far more rows than its bytes hold, JSON nested too deep, and Markdown
nested thousands of levels deep. Alice's widget, in a real JupyterLab, must still join,
show the ordinary messages and values, show the bad ones as invalid or plain text, and
stay responsive: both when she joins after the attack (it is in the room's history and
values) and while it happens.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_chat_ext.protocol import pack_binary

from helpers import JupyterServer, RawClient
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_notebook,
    write_notebook,
)

ROOM = "hostile"
HUGE_ROWS = 100_000_000  # claimed by a header that comes with 16 bytes
DEEP_MARKDOWN = ">" * 16_000 + " the deep one"


class Mallory:
    """A raw protocol client on its own event loop, driven from the (sync) test."""

    def __init__(self, server: JupyterServer) -> None:
        self.sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        url = server.url.replace("http://", "ws://") + "chat-ext/ws"
        request = HTTPRequest(url, headers={"Authorization": f"token {server.token}"})

        async def connect() -> RawClient:
            return await RawClient(await websocket_connect(request)).start()

        self.client = self._call(connect())
        self._call(self.client.join(ROOM))
        # Read (and drop) everything the room sends back: a client that stops reading is,
        # rightly, disconnected by the server as a slow reader.
        self._drain = asyncio.run_coroutine_threadsafe(self._read_all(), self._loop)

    async def _read_all(self) -> None:
        while await self.client.conn.read_message() is not None:
            pass

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def send_text(self, text: str) -> None:
        self._call(self.client.send(text))

    def publish(self, topic: str, value: Any) -> None:
        self.send_text(json.dumps({"op": "data", "room": ROOM, "topic": topic, "value": value}))

    def publish_raw(self, topic: str, value_json: str) -> None:
        """Publish a value given as JSON text (for what json.dumps would not write)."""
        head = json.dumps({"op": "data", "room": ROOM, "topic": topic})[:-1]
        self.send_text(f'{head}, "value": {value_json}}}')

    def publish_binary(self, topic: str, value: Any, buffers: list[bytes]) -> None:
        header = {"op": "data", "room": ROOM, "topic": topic, "value": value}
        header["buffers"] = [len(b) for b in buffers]
        self._call(self.client.send(pack_binary(json.dumps(header).encode(), buffers)))

    def say(self, body: str) -> None:
        self.sent += 1
        frame = {"op": "send", "room": ROOM, "id": f"mallory-{self.sent}", "body": body}
        self.send_text(json.dumps(frame))

    def attack(self, prefix: str) -> None:
        """Post every poisoned value and message, each topic starting with ``prefix``."""
        self.publish(f"{prefix}-marker", {"$ndarray": {"dtype": "<f8", "shape": [3], "buffer": 0}})
        self.publish(f"{prefix}-frame", {"$dataframe": {"columns": "x", "data": 7}})
        deep: Any = 1
        for _ in range(100):
            deep = [deep]
        self.publish(f"{prefix}-deep", deep)
        self.publish_raw(f"{prefix}-infinite", "1e999")
        column = {"$ndarray": {"dtype": "<f8", "shape": [HUGE_ROWS], "buffer": 0}}
        table = {"columns": ["x"], "data": [column], "index": {"$range": [0, HUGE_ROWS, 1]}}
        self.publish_binary(f"{prefix}-huge-table", {"$dataframe": table}, [bytes(16)])
        self.publish_binary(f"{prefix}-huge-array", column, [bytes(16)])
        honest = {"$ndarray": {"dtype": "<f8", "shape": [2], "buffer": 0}}
        table = {"columns": ["x"], "data": [honest], "index": {"$range": [0, HUGE_ROWS, 1]}}
        self.publish_binary(f"{prefix}-huge-index", {"$dataframe": table}, [bytes(16)])
        self.publish_binary(
            f"{prefix}-dims", {"$ndarray": {"dtype": "<f8", "shape": [-2, -1]}}, [bytes(16)]
        )
        self.say(DEEP_MARKDOWN)

    def close(self) -> None:
        # On its own loop's thread: the socket's buffers are that thread's (closing it
        # from here raced the reader there: "object cannot be re-sized").
        self._loop.call_soon_threadsafe(self.client.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    home = tmp_path_factory.mktemp("hostile")
    write_notebook(home / "alice.ipynb", [f'from jupyter_chat_ext import Chat\nChat("{ROOM}")'])
    server = JupyterServer(home).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mallory(lab: JupyterServer) -> Iterator[Mallory]:
    client = Mallory(lab)
    yield client
    client.close()


@pytest.fixture(scope="module")
def alice(browser: Any, lab: JupyterServer, mallory: Mallory) -> Iterator[NotebookPage]:
    """Alice opens the room after Mallory's first attack (then ordinary posts) is in it."""
    mallory.attack("early")
    mallory.say("an ordinary message after the attack")
    mallory.publish("normal", 42)
    mallory.publish_binary(
        "normal-array",
        {"$ndarray": {"dtype": "<f8", "shape": [2], "buffer": 0}},
        [bytes.fromhex("000000000000f03f0000000000000840")],  # 1.0 and 3.0, little-endian
    )
    context, person = open_notebook(browser, f"{lab.url}lab/tree/alice.ipynb?token={lab.token}")
    person.run_cell(0)
    person.wait_connected()
    yield person
    context.close()


def value(person: NotebookPage, topic: str) -> Any:
    return person.widget.locator(f'.jce-value[data-topic="{topic}"]')


def expect_poison_shown_as_invalid(person: NotebookPage, prefix: str, deep_messages: int) -> None:
    for topic, reason in (
        ("marker", "buffer 0, but 0 came"),
        ("frame", "columns or data are not lists"),
        ("deep", "nested more than 64 levels"),
        ("huge-table", f"needs {8 * HUGE_ROWS} bytes, but 16 came"),
        ("huge-index", f"index has {HUGE_ROWS}"),
        ("huge-array", f"needs {8 * HUGE_ROWS} bytes, but 16 came"),
        ("dims", "shape [-2, -1] is not a list"),
    ):
        entry = value(person, f"{prefix}-{topic}")
        expect(entry).to_have_class("jce-value jce-value-invalid", timeout=WAIT_MS)
        text = entry.locator(".jce-value-text")
        expect(text).to_have_text(re.compile(rf"^invalid value: .*{re.escape(reason)}"))
    expect(value(person, f"{prefix}-infinite").locator(".jce-value-text")).to_have_text("Infinity")
    deep = person.bodies().filter(has_text="the deep one")
    expect(deep).to_have_count(deep_messages, timeout=WAIT_MS)
    expect(deep.locator("p.jce-plain")).to_have_count(deep_messages)
    expect(deep.locator("blockquote")).to_have_count(0)
    assert deep.last.locator(".jce-plain").get_attribute("title") == (
        "Shown as plain text: nested 16000 levels deep (more than 20)"
    )


def expect_responsive(person: NotebookPage, text: str) -> None:
    """The page answers a script at once, and the widget still sends and receives."""
    assert person.page.evaluate("() => 6 * 7") == 42
    person.say(text)
    person.expect_message(text)


def test_a_reader_who_joins_after_an_attack_sees_the_room(
    alice: NotebookPage, mallory: Mallory
) -> None:
    alice.expect_message("an ordinary message after the attack")
    expect(value(alice, "normal").locator(".jce-value-text")).to_have_text("42")
    array = value(alice, "normal-array")
    expect(array.locator(".jce-value-text")).to_have_text("float64 [2]", timeout=WAIT_MS)
    expect(array.locator(".jce-value-stats")).to_have_text("min 1 · mean 2 · max 3")
    expect_poison_shown_as_invalid(alice, "early", deep_messages=1)
    expect_responsive(alice, "alice is still here")


def test_an_attack_while_reading_breaks_nothing(alice: NotebookPage, mallory: Mallory) -> None:
    mallory.attack("live")
    mallory.say("an ordinary message after the live attack")
    mallory.publish("normal", 43)
    alice.expect_message("an ordinary message after the live attack")
    expect(value(alice, "normal").locator(".jce-value-text")).to_have_text("43", timeout=WAIT_MS)
    expect_poison_shown_as_invalid(alice, "live", deep_messages=2)
    expect_responsive(alice, "alice is still here after the live attack")
