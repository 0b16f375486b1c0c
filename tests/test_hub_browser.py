"""The Chat widget on a real JupyterHub: alice and bob, each on their own server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import png
from hubtools import Hub, start_server
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    write_notebook,
)


@pytest.fixture(scope="module")
def hub(hub: Hub) -> Hub:
    """The shared Hub (conftest), with alice's and bob's servers open on a Chat notebook."""
    for user in ("alice", "bob"):
        home = hub.home / "home" / user
        home.mkdir(parents=True, exist_ok=True)
        write_notebook(home / "chat.ipynb", ['from jupyter_chat_ext import Chat\nChat("lobby")'])
        start_server(hub, user)
    return hub


def open_chat(browser: Any, hub: Hub, user: str) -> NotebookPage:
    """Log in to the Hub as ``user``, open their notebook and run its Chat cell."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{hub.url}hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "any password")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/user/**", timeout=WAIT_MS)
    page.goto(f"{hub.url}user/{user}/lab/tree/chat.ipynb")
    person = NotebookPage(page)
    expect(person.cell(0)).to_be_visible(timeout=WAIT_MS)
    dialog = page.locator(".jp-Dialog")
    if dialog.count():  # e.g. "select a kernel" on a first visit
        dialog.locator(".jp-mod-accept").first.click()
    person.run_cell(0)
    person.wait_connected()
    return person


def test_alice_and_bob_on_separate_servers_chat_in_their_browsers(
    browser: Any, hub: Hub, tmp_path: Path
) -> None:
    alice = open_chat(browser, hub, "alice")
    bob = open_chat(browser, hub, "bob")
    assert (alice.name, bob.name) == ("alice", "bob")  # names from the Hub
    for person in (alice, bob):
        expect(person.members()).to_have_count(2, timeout=WAIT_MS)
    alice.say("hello bob, from alice's own server")
    bob.expect_message("hello bob, from alice's own server")
    message = bob.widget.locator(".jce-msg").filter(has_text="from alice's own server")
    expect(message.locator(".jce-author")).to_have_text("alice")
    # An image pasted by alice goes to the hub service (its cookie and XSRF token, not
    # her server's) and bob's browser fetches it from there.
    assert alice.paste_image(png(3, 2, seed=7), "from-alice.png")
    item = bob.widget.locator("li.jce-msg").filter(has_text="from-alice.png")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    item.scroll_into_view_if_needed()
    image = item.locator(".jce-attachment img.jce-att-image")
    expect(image).to_be_visible(timeout=WAIT_MS)
    assert image.evaluate("n => n.complete && n.naturalWidth") == 3
    bob.screenshot("hub-bob")
