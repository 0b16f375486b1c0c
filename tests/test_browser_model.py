"""One Chat widget shown twice in a real JupyterLab: its views share one connection.

The connection belongs to the widget model (anywidget's ``initialize``), not to a view
(``render``): showing ``chat`` in two outputs opens one WebSocket, which counts once
toward the server's per-user limit. Both views show the same room, follow the same
``chat.room``, and closing one leaves the other connected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, WebSocket

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    write_notebook,
)

CELLS = [
    'from jupyter_chat_ext import Chat\nchat = Chat("shared")\nchat',
    "display(chat)",
    'chat.send("said by the kernel")["seq"]',
    'chat.room = "other"',
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    home = tmp_path_factory.mktemp("model")
    write_notebook(home / "twice.ipynb", CELLS)
    server = JupyterServer(home).start()
    yield server
    server.stop()


class TwoViews:
    """Alice's notebook, with every chat WebSocket the page opens recorded."""

    def __init__(self, browser: Any, lab: JupyterServer) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 1400})
        page = self.context.new_page()
        self.sockets: list[WebSocket] = []
        page.on("websocket", self._opened)
        page.goto(f"{lab.url}lab/tree/twice.ipynb?token={lab.token}")
        self.person = NotebookPage(page)
        expect(self.person.cell(0)).to_be_visible(timeout=WAIT_MS)

    def _opened(self, socket: WebSocket) -> None:
        if "chat-ext/ws" in socket.url:
            self.sockets.append(socket)

    @property
    def views(self) -> Locator:
        return self.person.page.locator(".jce-root")

    def view(self, index: int) -> Locator:
        return self.views.nth(index)

    def expect_connected(self, index: int) -> None:
        state = self.view(index).locator(".jce-state")
        expect(state).to_have_attribute("data-state", "connected", timeout=WAIT_MS)

    def expect_message(self, index: int, text: str) -> None:
        bodies = self.view(index).locator("ol.jce-messages:not(.jce-pending) .jce-body")
        expect(bodies.filter(has_text=text)).to_have_count(1, timeout=WAIT_MS)

    def say(self, index: int, text: str) -> None:
        composer = self.view(index).locator(".jce-input")
        composer.fill(text)
        composer.press("Enter")
        expect(composer).to_have_value("", timeout=WAIT_MS)

    def expect_active_room(self, index: int, room: str) -> None:
        active = self.view(index).locator(".jce-tab.jce-active .jce-tab-name")
        expect(active).to_have_text(f"#{room}", timeout=WAIT_MS)

    def open_sockets(self) -> list[WebSocket]:
        return [socket for socket in self.sockets if not socket.is_closed()]


@pytest.fixture(scope="module")
def alice(browser: Any, lab: JupyterServer) -> Iterator[TwoViews]:
    views = TwoViews(browser, lab)
    yield views
    views.context.close()


def test_two_views_of_one_widget_share_one_connection(alice: TwoViews) -> None:
    alice.person.run_cell(0)
    alice.expect_connected(0)
    alice.person.run_cell(1)
    expect(alice.views).to_have_count(2, timeout=WAIT_MS)
    alice.expect_connected(1)

    alice.say(0, "typed in the first view")
    alice.say(1, "typed in the second view")
    for index in (0, 1):
        alice.expect_message(index, "typed in the first view")
        alice.expect_message(index, "typed in the second view")
        expect(alice.view(index).locator(".jce-member")).to_have_count(1)
    # Each view shows what the model lent the kernel; then the kernel speaks as alice.
    for index in (0, 1):
        host = alice.view(index).locator("xpath=..")
        expect(host).to_have_attribute("data-delegations", "1", timeout=WAIT_MS)
    alice.person.run_cell(2)
    for index in (0, 1):
        alice.expect_message(index, "said by the kernel")
    assert len(alice.sockets) == 1, [socket.url for socket in alice.sockets]


def test_setting_the_room_from_python_switches_every_view(alice: TwoViews) -> None:
    alice.person.run_cell(3)
    for index in (0, 1):
        alice.expect_active_room(index, "other")
    alice.say(1, "in the other room")
    alice.expect_message(0, "in the other room")
    expect(alice.view(0).locator(".jce-body").filter(has_text="typed in")).to_have_count(0)
    assert len(alice.sockets) == 1, [socket.url for socket in alice.sockets]


def test_closing_one_view_keeps_the_other_connected(alice: TwoViews) -> None:
    # Running the second cell again replaces its output: that view is closed.
    alice.person.set_cell_source(1, 'print("the second view is gone")')
    alice.person.run_cell(1)
    expect(alice.person.cell(1).locator(".jp-OutputArea-output")).to_have_text(
        "the second view is gone", timeout=WAIT_MS
    )
    expect(alice.views).to_have_count(1)
    alice.expect_connected(0)
    alice.say(0, "still here after the other view closed")
    alice.expect_message(0, "still here after the other view closed")
    # Back in the first room (its tab is still open): the history is all there.
    alice.view(0).locator('.jce-tab[data-room="shared"]').click()
    alice.expect_message(0, "said by the kernel")
    assert len(alice.sockets) == 1 and len(alice.open_sockets()) == 1
