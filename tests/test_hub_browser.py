"""The Chat widget on a real JupyterHub: alice and bob, each on their own server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_hub import Hub, start_server

from conftest import require_module

require_module("playwright", "pip install playwright")
from playwright.sync_api import Page, expect  # noqa: E402

WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    """Replace pytest-jupyter's per-test loop: Playwright's sync API runs its own."""


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """No in-process server here."""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_module("jupyterhub", "pip install jupyterhub")
    instance = Hub(tmp_path_factory.mktemp("hub-browser")).start()
    instance.api("POST", "hub/api/users", {"usernames": ["alice", "bob"]})
    for user in ("alice", "bob"):
        home = instance.home / "home" / user
        home.mkdir(parents=True, exist_ok=True)
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell('from jupyter_chat_ext import Chat\nChat("lobby")')]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        nbformat.write(nb, home / "chat.ipynb")
        start_server(instance, user)
    yield instance
    instance.stop()


def open_chat(browser: Any, hub: Hub, user: str) -> Page:
    page: Page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{hub.url}hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "any password")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/user/**", timeout=WAIT_MS)
    page.goto(f"{hub.url}user/{user}/lab/tree/chat.ipynb")
    cell = page.locator(".jp-Notebook .jp-Cell").first
    expect(cell).to_be_visible(timeout=WAIT_MS)
    dialog = page.locator(".jp-Dialog")
    if dialog.count():  # e.g. "select a kernel" on a first visit
        dialog.locator(".jp-mod-accept").first.click()
    prompt = cell.locator(".jp-InputArea-prompt")
    for _ in range(10):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(prompt).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=5_000)
            break
        except AssertionError:
            continue
    state = page.locator(".jce-root .jce-state")
    expect(state).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
    return page


def test_alice_and_bob_on_separate_servers_chat_in_their_browsers(
    browser: Any, hub: Hub, tmp_path: Path
) -> None:
    alice = open_chat(browser, hub, "alice")
    bob = open_chat(browser, hub, "bob")
    expect(alice.locator(".jce-state-text")).to_have_text("connected as alice")
    expect(bob.locator(".jce-state-text")).to_have_text("connected as bob")
    for page in (alice, bob):
        expect(page.locator(".jce-member")).to_have_count(2, timeout=WAIT_MS)
    alice.fill(".jce-input", "hello bob, from alice's own server")
    alice.press(".jce-input", "Enter")
    message = bob.locator(".jce-msg").filter(has_text="hello bob, from alice's own server")
    expect(message).to_have_count(1, timeout=WAIT_MS)
    expect(message.locator(".jce-author")).to_have_text("alice")
    shots = Path(__file__).parent.parent / "test-artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(shots / "hub-bob.png"))
