"""Jumping to an old message in a long room loads the messages around it, once (#15, item 6).

A room holds a few thousand messages. alice, in JupyterLab 4, has it open at its newest;
she searches for an old one and clicks the result. The widget asks the server for the
history around that message in ONE request (counted on the WebSocket), shows it
highlighted in an island of the room's history, and from there "load later" and
scrolling down fill the hole toward the newest messages, which keep arriving meanwhile;
"jump to newest" takes her back to them. The buttons read in light and dark themes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers import JupyterServer, RawClient
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    CONTRAST,
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_notebook,
    write_notebook,
)

CELLS = ['from jupyter_chat_ext import Chat\nchat = Chat("lobby")\nchat']
ROOM = "archive"
COUNT = 3000  # messages in the room
NEEDLE_AT = 500  # the old message searched for, this many messages from the start
NEEDLE = "the needle in the haystack is a blue teapot"
PAGE = 100  # the server's history_page_size (its default)


def body(i: int) -> str:
    return NEEDLE if i == NEEDLE_AT else f"archived message {i:04d}"


async def _post(server: JupyterServer, bodies: list[str], reply_to: int | None) -> list[int]:
    """Send ``bodies`` to ROOM over one raw socket, pipelined; return their seqs."""
    url = server.url.replace("http://", "ws://") + "chat-ext/ws"
    request = HTTPRequest(url, headers={"Authorization": f"token {server.token}"})
    client = await RawClient(await websocket_connect(request)).start()
    await client.join(ROOM)
    ids = [f"post-{i}-{len(bodies)}" for i in range(len(bodies))]
    seqs: dict[str, int] = {}

    async def acknowledged() -> None:  # read while sending: a reader that stops is dropped
        wanted = set(ids)
        while len(seqs) < len(ids):
            frame = await client.recv(60)
            assert frame["op"] != "error", frame
            if frame["op"] == "message" and frame.get("id") in wanted:
                seqs[frame["id"]] = frame["seq"]

    reading = asyncio.ensure_future(acknowledged())
    for frame_id, text in zip(ids, bodies, strict=True):
        frame = {"op": "send", "room": ROOM, "id": frame_id, "body": text}
        if reply_to is not None:
            frame["reply_to"] = reply_to
        await client.send(frame)
    await reading
    client.close()
    return [seqs[frame_id] for frame_id in ids]


def post(server: JupyterServer, bodies: list[str], reply_to: int | None = None) -> list[int]:
    """:func:`_post` on an event loop of its own (Playwright's sync API runs one here)."""
    result: list[list[int]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_post(server, bodies, reply_to)))
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(300)
    if failure:
        raise failure[0]
    assert result, "posting did not finish"
    return result[0]


class HistoryFrames:
    """The ``history`` requests a page's chat widget sends, read off its WebSockets."""

    def __init__(self, person: NotebookPage) -> None:
        self.sent: list[dict[str, Any]] = []
        person.page.on("websocket", self._opened)

    def _opened(self, socket: Any) -> None:
        if "chat-ext" in socket.url:
            socket.on("framesent", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict) and frame.get("op") == "history":
            self.sent.append(frame)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    home = tmp_path_factory.mktemp("jump")
    write_notebook(home / "alice.ipynb", CELLS)
    # thousands of messages from one connection in a few seconds: past the default burst
    server = JupyterServer(home, args=("--ChatExtensionApp.message_burst=100000",)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def needle(lab: JupyterServer) -> int:
    """The room of COUNT messages; returns the seq of the one searched for."""
    return post(lab, [body(i) for i in range(COUNT)])[NEEDLE_AT]


def open_alice(browser: Any, lab: JupyterServer) -> tuple[Any, NotebookPage, HistoryFrames]:
    context, alice = open_notebook(browser, f"{lab.url}lab/tree/alice.ipynb?token={lab.token}")
    frames = HistoryFrames(alice)  # before the widget's socket opens
    alice.run_cell(0)
    alice.wait_connected()
    return context, alice, frames


def join_room(person: NotebookPage, room: str) -> None:
    """Join ``room`` from the widget's join box; its tab is then the selected one."""
    box = person.widget.locator(".jce-join")
    box.fill(room)
    expect(box).to_have_value(room)
    box.press("Enter")
    tab = person.widget.locator(f'.jce-tab[data-room="{room}"]')
    expect(tab).to_have_attribute("aria-selected", "true", timeout=WAIT_MS)


def listed(person: NotebookPage, text: str) -> Any:
    """The message item in the list (not the pending ones) whose body has ``text``."""
    items = person.widget.locator("ol.jce-messages:not(.jce-pending) > li.jce-msg")
    return items.filter(has=person.page.locator(":scope > .jce-body", has_text=text))


def search_and_open(person: NotebookPage) -> Any:
    """Search for the needle and click the one result; returns its item in the list."""
    search = person.widget.locator(".jce-search-input")
    search.fill("needle blue teapot")
    search.press("Enter")
    results = person.widget.locator(".jce-search .jce-result")
    expect(results).to_have_count(1, timeout=WAIT_MS)
    expect(results.first.locator(".jce-result-text")).to_have_text(NEEDLE)
    results.first.click()
    found = listed(person, NEEDLE)
    expect(found).to_have_count(1, timeout=WAIT_MS)
    expect(found).to_have_class(re.compile(r"\bjce-flash\b"), timeout=WAIT_MS)  # for 1.6 s
    expect(found).to_be_in_viewport()
    return found


def test_a_search_result_far_back_loads_in_one_request_and_the_hole_fills_toward_the_newest(
    browser: Any, lab: JupyterServer, needle: int, tmp_path: Path
) -> None:
    context, alice, frames = open_alice(browser, lab)
    try:
        join_room(alice, ROOM)
        alice.expect_message(body(COUNT - 1))
        expect(alice.bodies()).to_have_count(PAGE)  # the join's history, the newest
        assert frames.sent == []

        search_and_open(alice)
        assert [(f["room"], f.get("around"), f.get("before")) for f in frames.sent] == [
            (ROOM, needle, None)
        ], frames.sent
        # an island: the messages around the needle, not the newest ones
        expect(alice.bodies()).to_have_count(PAGE)
        expect(listed(alice, body(NEEDLE_AT - PAGE // 2))).to_have_count(1)
        expect(listed(alice, body(NEEDLE_AT + PAGE // 2 - 1))).to_have_count(1)
        expect(listed(alice, body(COUNT - 1))).to_have_count(0)
        jump = alice.widget.locator(".jce-new")
        expect(jump).to_have_text("Jump to newest ↓")
        later = alice.widget.locator(".jce-later")
        expect(later).to_be_visible()
        expect(alice.widget.locator(".jce-earlier")).to_be_visible()
        for selector in (".jce-later", ".jce-new", ".jce-earlier"):
            ratio = alice.widget.locator(selector).evaluate(CONTRAST)
            assert ratio >= 4.5, ("light", selector, ratio)
        alice.widget.screenshot(path=str(tmp_path / "jump-island.png"))
        assert len(frames.sent) == 1, frames.sent

        later.click()  # the window after the island: half of it new
        expect(listed(alice, body(NEEDLE_AT + PAGE - 1))).to_have_count(1, timeout=WAIT_MS)
        assert len(frames.sent) == 2
        assert frames.sent[1].get("around") == needle + PAGE // 2, frames.sent[1]
        scroller = alice.widget.locator(".jce-scroller")
        scroller.evaluate("n => { n.scrollTop = n.scrollHeight; }")  # scrolling down loads on
        expect(listed(alice, body(NEEDLE_AT + PAGE * 3 // 2 - 1))).to_have_count(1, timeout=WAIT_MS)
        expect(alice.bodies()).to_have_count(PAGE * 2)
        assert listed(alice, NEEDLE).evaluate("n => n.isConnected")

        # the newest messages go on arriving, into their segment, not the island
        post(lab, ["a fresh message while alice reads old ones"])
        expect(jump).to_have_text("1 new · Jump to newest ↓", timeout=WAIT_MS)
        expect(listed(alice, "a fresh message")).to_have_count(0)
        jump.click()
        fresh = listed(alice, "a fresh message while alice reads old ones")
        expect(fresh).to_be_in_viewport(timeout=WAIT_MS)
        expect(listed(alice, body(COUNT - 1))).to_have_count(1)
        expect(listed(alice, NEEDLE)).to_have_count(0)
        expect(later).to_be_hidden()
        expect(jump).to_be_hidden()
        at_bottom = "n => n.scrollHeight - n.scrollTop - n.clientHeight < 40"
        assert scroller.evaluate(at_bottom)
        alice.widget.screenshot(path=str(tmp_path / "jump-newest.png"))
        assert not [line for line in alice.console if line.startswith("error")], alice.console
    finally:
        context.close()


def test_an_island_that_reaches_the_newest_joins_them_and_it_reads_in_the_dark(
    browser: Any, lab: JupyterServer, needle: int, tmp_path: Path
) -> None:
    settings = lab.home / "config" / "lab" / "user-settings" / "@jupyterlab"
    theme = settings / "apputils-extension" / "themes.jupyterlab-settings"
    theme.parent.mkdir(parents=True, exist_ok=True)
    theme.write_text('{"theme": "JupyterLab Dark"}')
    context, alice, frames = open_alice(browser, lab)
    try:
        expect(alice.page.locator("body[data-jp-theme-light='false']")).to_have_count(
            1, timeout=WAIT_MS
        )
        search_and_open(alice)  # joins the room, and opens it at the needle
        expect(listed(alice, body(NEEDLE_AT + 1))).to_have_count(1)
        for selector in (".jce-later", ".jce-new", ".jce-earlier"):
            ratio = alice.widget.locator(selector).evaluate(CONTRAST)
            assert ratio >= 4.5, ("dark", selector, ratio)
        alice.widget.screenshot(path=str(tmp_path / "jump-island-dark.png"))
        assert len(frames.sent) == 1, frames.sent

        # A reply to a message a little older than the newest held: its quote opens
        # the messages around it, which reach the newest: one segment again, no island.
        parent_at = COUNT - PAGE - 10
        post(lab, ["about that one"], reply_to=needle - NEEDLE_AT + parent_at)
        jump = alice.widget.locator(".jce-new")
        expect(jump).to_have_text("1 new · Jump to newest ↓", timeout=WAIT_MS)
        jump.click()
        reply = listed(alice, "about that one")
        expect(reply).to_be_in_viewport(timeout=WAIT_MS)
        expect(reply.locator(".jce-quote")).to_contain_text("an earlier message")
        reply.locator(".jce-quote").click()
        parent = listed(alice, body(parent_at))
        expect(parent).to_have_class(re.compile(r"\bjce-flash\b"), timeout=WAIT_MS)
        expect(parent).to_be_in_viewport()
        assert [f.get("around") for f in frames.sent] == [needle, needle - NEEDLE_AT + parent_at]
        expect(reply.locator(".jce-quote")).to_contain_text(body(parent_at))
        expect(listed(alice, body(COUNT - 1))).to_have_count(1)  # the newest, in the same list
        expect(alice.widget.locator(".jce-later")).to_be_hidden()
        expect(jump).to_be_hidden()
        alice.widget.screenshot(path=str(tmp_path / "jump-joined-dark.png"))
    finally:
        context.close()
        theme.unlink()
