"""Search and export in real browsers, between two people (#15, items 6 and 7).

alice in JupyterLab 4, bob in Notebook 7, each in their own browser context, on one real
server. bob speaks in a room alice has not joined, under many later messages; alice finds
his message with the widget's search box, a click takes her there (joining the room and
loading its earlier history), and she downloads the room as Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_people,
    start_lab,
)

CELLS = ['from jupyter_chat_ext import Chat\nchat = Chat("lobby")\nchat']
FOUND = "the flux capacitor needs recalibrating before Friday"
LATER = 150  # messages after it: more than a join's history, so the jump loads earlier ones


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    notebooks = {"alice.ipynb": CELLS, "bob.ipynb": CELLS}
    server = start_lab(tmp_path_factory.mktemp("lab"), notebooks)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people(browser: Any, lab: JupyterServer) -> Iterator[tuple[NotebookPage, NotebookPage]]:
    opened = open_people(
        browser,
        lab,
        [
            ("lab/tree/alice.ipynb", None, None),  # JupyterLab 4
            ("notebooks/bob.ipynb", None, None),  # Notebook 7
        ],
    )
    yield opened[0][1], opened[1][1]
    for context, _ in opened:
        context.close()


def test_search_finds_a_message_in_another_room_and_a_click_shows_it(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer, tmp_path: Path
) -> None:
    alice, bob = people
    bob.widget.locator(".jce-join").fill("engineering")
    bob.widget.locator(".jce-join").press("Enter")
    expect(bob.widget.locator(".jce-tab.jce-active")).to_have_attribute("data-room", "engineering")
    bob.say(FOUND)
    bob.expect_message(FOUND)
    with ChatClient(url=lab.url, token=lab.token) as client:
        room = client.join("engineering")
        for i in range(LATER):
            room.send(f"later message {i}")
    bob.expect_message(f"later message {LATER - 1}")

    search = alice.widget.locator(".jce-search-input")
    search.fill("capacitor recalibrat*")
    search.press("Enter")
    results = alice.widget.locator(".jce-search .jce-result")
    expect(results).to_have_count(1, timeout=WAIT_MS)
    result = results.first
    expect(result.locator(".jce-result-room")).to_have_text("#engineering")
    expect(result.locator(".jce-result-text")).to_have_text(FOUND)
    marks = result.locator("mark")
    expect(marks).to_have_count(2)
    assert marks.all_inner_texts() == ["capacitor", "recalibrating"]
    alice.widget.screenshot(path=str(tmp_path / "search-results.png"))

    result.click()
    expect(alice.widget.locator(".jce-search")).to_be_hidden()
    expect(alice.widget.locator(".jce-tab.jce-active")).to_have_attribute(
        "data-room", "engineering"
    )
    found = alice.widget.locator("ol.jce-messages:not(.jce-pending) > li.jce-msg").filter(
        has=alice.page.locator(":scope > .jce-body", has_text=FOUND)
    )
    expect(found).to_have_count(1, timeout=WAIT_MS)
    expect(found).to_have_class(re.compile(r"\bjce-flash\b"), timeout=WAIT_MS)  # for 1.6 s
    expect(found).to_be_in_viewport()
    alice.widget.screenshot(path=str(tmp_path / "search-jump.png"))


def test_export_downloads_the_whole_room_as_markdown(
    people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, _ = people
    expect(alice.widget.locator(".jce-tab.jce-active")).to_have_attribute(
        "data-room", "engineering"
    )
    with alice.page.expect_download(timeout=WAIT_MS) as info:
        alice.widget.locator(".jce-export").click()
    download = info.value
    assert download.suggested_filename == "engineering.md"
    path = tmp_path / "engineering.md"
    download.save_as(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# engineering\n")
    assert f"{LATER + 1} messages." in text
    assert f"\n{FOUND}\n" in text
    assert f"\nlater message {LATER - 1}\n" in text
