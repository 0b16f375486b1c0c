"""The Chat widget's layout in a real browser, in a short widget at three widths.

One person in Notebook 7 (no side bar, so the widget is about as wide as the window
minus the cell's prompt): a 360px high widget, as in the live-values demo. The tests
run in file order and share the page; each width is checked by geometry (what a
person would see: nothing clipped, nothing overlapped) and saved as a screenshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_notebook,
    write_notebook,
)

CELLS = [
    'from jupyter_chat_ext import Chat\nchat = Chat("general", height="360px")\nchat',
    "import numpy as np, pandas as pd\n"
    'chat.publish("matrix", np.arange(12.0).reshape(3, 4))\n'
    'chat.publish("scores", pd.DataFrame({"name": ["ann", "bo"], "score": [0.9, 0.7],'
    ' "runs": [12, 7]}))\n'
    'chat.publish("temperature", 21.5)\n'
    'chat.send("the numbers are in the panel")["seq"]',
]
NARROW_PX = 600  # below this widget width the panel stacks under the messages
SIDE_MIN_PX = 260  # beside the messages, the panel is at least this wide by default

GEOMETRY = """root => {
    const box = (node) => {
        const r = node.getBoundingClientRect();
        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                width: r.width, height: r.height};
    };
    const q = (selector) => root.querySelector(selector);
    const label = q('.jce-tab[data-room="general"] .jce-tab-name');
    const r = label.getBoundingClientRect();
    const y = (r.top + r.bottom) / 2;
    const seen = [r.left + 1, (r.left + r.right) / 2, r.right - 1].map((x) => {
        const node = document.elementFromPoint(x, y);
        return node !== null && label.contains(node);
    });
    return {
        root: box(root), tabs: box(q(".jce-tabs")), label: box(label), labelSeen: seen,
        join: box(q(".jce-join")), pane: box(q(".jce-pane")), side: box(q(".jce-side")),
        summaries: [...root.querySelectorAll(".jce-value-text")].map((node) => ({
            text: node.textContent, lines: node.getClientRects().length,
            right: node.getBoundingClientRect().right,
        })),
        tables: [...root.querySelectorAll(".jce-table")].map((n) => [n.scrollWidth, n.clientWidth]),
    };
}"""


def resize(person: NotebookPage, width: int) -> None:
    """Set the window's width and wait for Notebook 7's panels (laid out by Lumino on the
    next animation frame, not by CSS) to take it."""
    person.page.set_viewport_size({"width": width, "height": 900})
    person.page.wait_for_function(
        "() => document.querySelector('#main-panel').getBoundingClientRect().width"
        " === document.documentElement.clientWidth"
    )


def disjoint(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["right"] <= b["left"]
        or b["right"] <= a["left"]
        or a["bottom"] <= b["top"]
        or b["bottom"] <= a["top"]
    )


@pytest.fixture(scope="module")
def person(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookPage]:
    home = tmp_path_factory.mktemp("layout")
    write_notebook(home / "layout.ipynb", CELLS)
    server = JupyterServer(home).start()
    url = f"{server.url}notebooks/layout.ipynb?token={server.token}"
    context, person = open_notebook(browser, url, width=1200)
    person.run_cell(0)
    person.wait_connected()
    person.run_cell(1)
    expect(person.widget.locator(".jce-value")).to_have_count(3, timeout=WAIT_MS)
    person.expect_message("the numbers are in the panel")
    yield person
    context.close()
    server.stop()


@pytest.mark.parametrize("viewport", [1200, 760, 420])
def test_at_each_width_nothing_is_clipped_or_overlapped(
    person: NotebookPage, viewport: int
) -> None:
    resize(person, viewport)
    widget = person.widget
    widget.scroll_into_view_if_needed()
    g = widget.evaluate(GEOMETRY)
    width = g["root"]["width"]
    where = f"viewport {viewport}px, widget {width:.0f}px"

    label, tabs = g["label"], g["tabs"]
    assert all(g["labelSeen"]), f"{where}: the #general tab is covered: {g}"
    assert tabs["left"] <= label["left"] and label["right"] <= tabs["right"], where
    assert disjoint(label, g["join"]), f"{where}: the join box overlaps the tab"

    pane, side = g["pane"], g["side"]
    if width >= NARROW_PX:
        assert side["left"] >= pane["right"] - 1, f"{where}: the panel is not beside"
        assert side["width"] >= SIDE_MIN_PX, f"{where}: the panel is {side['width']}px"
    else:
        assert side["top"] >= pane["bottom"] - 1, f"{where}: the panel is not under"
        assert side["width"] >= width - 4, f"{where}: the stacked panel is not full width"
    assert side["right"] <= g["root"]["right"], where

    assert len(g["summaries"]) == 3, g["summaries"]
    for summary in g["summaries"]:
        assert summary["lines"] == 1, f"{where}: {summary['text']!r} wraps"
        assert summary["right"] <= side["right"], f"{where}: {summary['text']!r} is cut"
    for scroll, client in g["tables"]:
        assert scroll <= client, f"{where}: a table is cut ({scroll} > {client}px)"
    person.screenshot(f"layout-{viewport}")


def side_size(person: NotebookPage) -> float:
    return float(person.widget.locator(".jce-side").evaluate("n => n.offsetWidth"))


def test_the_panel_collapses_and_opens_by_mouse_and_keyboard(person: NotebookPage) -> None:
    resize(person, 760)
    widget = person.widget
    toggle, side = widget.locator(".jce-side-toggle"), widget.locator(".jce-side")
    pane = widget.locator(".jce-pane")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(side).to_be_visible()
    narrow = pane.evaluate("n => n.offsetWidth")

    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(side).to_be_hidden()
    expect(widget.locator(".jce-splitter")).to_be_hidden()
    main = widget.locator(".jce-main").evaluate("n => n.clientWidth")
    assert pane.evaluate("n => n.offsetWidth") == main > narrow  # the messages take it all
    person.screenshot("layout-760-collapsed")

    toggle.focus()
    person.page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(side).to_be_visible()
    person.page.keyboard.press("Space")
    expect(side).to_be_hidden()
    person.page.keyboard.press("Space")
    expect(side).to_be_visible()


def test_the_panel_is_resized_by_dragging_or_with_the_arrow_keys(person: NotebookPage) -> None:
    resize(person, 1200)
    splitter = person.widget.locator(".jce-splitter")
    expect(splitter).to_have_attribute("aria-orientation", "vertical")
    before = side_size(person)
    box = splitter.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    mouse = person.page.mouse
    mouse.move(x, y)
    mouse.down()
    mouse.move(x - 150, y, steps=5)
    mouse.up()
    assert abs(side_size(person) - (before + 150)) <= 2, (before, side_size(person))

    widened = side_size(person)
    splitter.focus()
    person.page.keyboard.press("ArrowRight")
    assert side_size(person) < widened
    person.page.keyboard.press("ArrowLeft")
    assert side_size(person) == widened
    valuenow = int(splitter.get_attribute("aria-valuenow") or -1)
    main = person.widget.locator(".jce-main").evaluate("n => n.clientWidth")
    assert abs(valuenow - round(100 * (main - widened) / main)) <= 1, valuenow
    box = splitter.bounding_box()
    assert box is not None
    x = box["x"] + box["width"] / 2
    mouse.move(x, y)  # dragging far right leaves the panel its smallest width, not none
    mouse.down()
    mouse.move(x + 2000, y, steps=2)
    mouse.up()
    assert side_size(person) >= 180

    person.page.keyboard.press("Enter")  # on the splitter: hides the panel
    expect(person.widget.locator(".jce-side")).to_be_hidden()
    expect(person.widget.locator(".jce-side-toggle")).to_be_focused()
    person.page.keyboard.press("Enter")

    resize(person, 420)  # stacked: it drags up
    expect(splitter).to_have_attribute("aria-orientation", "horizontal")
    side = person.widget.locator(".jce-side")
    height = side.evaluate("n => n.offsetHeight")
    splitter.focus()
    person.page.keyboard.press("ArrowUp")
    assert side.evaluate("n => n.offsetHeight") > height
