"""The Chat widget in real browsers: JupyterLab 4 and Notebook 7 on one real server.

Two people, each in their own browser context (so each has their own identity):
alice in JupyterLab, bob in Notebook 7. The tests run in file order and share the
two pages, as two people sharing a chat would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    ARTIFACTS,
    WAIT_MS,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_people,
    start_lab,
)

CELLS = [
    'from jupyter_chat_ext import Chat\nchat = Chat("general")\nchat',
    'chat.publish("temperature", 21.5)\nchat.send("sent from a kernel")["seq"]',
    "import numpy as np, pandas as pd\n"
    'chat.publish("matrix", np.arange(12.0).reshape(3, 4))\n'
    'chat.publish("scores", pd.DataFrame({"name": ["ann", "bo"], "score": [0.9, 0.7]}))',
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    notebooks = {"alice.ipynb": CELLS, "bob.ipynb": CELLS}
    server = start_lab(
        tmp_path_factory.mktemp("lab"), notebooks, renamable=True, base_url="/user/alice/"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people(browser: Any, lab: JupyterServer) -> Iterator[tuple[NotebookPage, NotebookPage]]:
    opened = open_people(
        browser,
        lab,
        [
            ("lab/tree/alice.ipynb", "Alice", "#7b1fa2"),  # JupyterLab 4
            ("notebooks/bob.ipynb", "Bob", "#00796b"),  # Notebook 7
        ],
    )
    yield opened[0][1], opened[1][1]
    for context, _ in opened:
        context.close()


@pytest.fixture(autouse=True)
def evidence_on_failure(
    request: pytest.FixtureRequest, people: tuple[NotebookPage, NotebookPage]
) -> Iterator[None]:
    """When a test fails, save both pages and what their widgets show."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for who, person in zip(("alice", "bob"), people, strict=True):
        name = f"FAILED-{request.node.name}-{who}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        person.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        state = {
            "state": person.widget.locator(".jce-state").get_attribute("data-state"),
            "composer": person.composer.input_value(),
            "pending": person.widget.locator(".jce-pending").inner_text(),
            "error": person.widget.locator(".jce-error").inner_text(),
            "console": person.console[-50:],
        }
        (ARTIFACTS / f"{name}.json").write_text(json.dumps(state, indent=1))


def test_two_people_chat_see_each_other_typing_and_live_values(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    assert (alice.name, bob.name) == ("Alice", "Bob")
    assert alice.username != bob.username
    for person in people:
        expect(person.members()).to_have_count(2, timeout=WAIT_MS)
        for other in people:
            expect(person.member(other)).to_have_count(1)

    alice.composer.fill("hello bob, from JupyterLab")
    expect(bob.widget.locator(".jce-typing")).to_have_text(
        f"{alice.name} is typing…", timeout=WAIT_MS
    )
    alice.composer.press("Enter")
    bob.expect_message("hello bob, from JupyterLab")
    expect(bob.widget.locator(".jce-typing")).to_have_text("", timeout=WAIT_MS)

    bob.composer.fill("typing, then thinking better of it")
    expect(alice.widget.locator(".jce-typing")).to_have_text(
        f"{bob.name} is typing…", timeout=WAIT_MS
    )
    bob.composer.fill("")
    expect(alice.widget.locator(".jce-typing")).to_have_text("", timeout=WAIT_MS)
    bob.say("hi alice, from Notebook 7")
    alice.expect_message("hi alice, from Notebook 7")

    alice.run_cell(1)  # publishes and sends from alice's kernel, as alice
    value = bob.widget.locator('.jce-value[data-topic="temperature"] .jce-value-text')
    expect(value).to_have_text("21.5", timeout=WAIT_MS)
    bob.expect_message("sent from a kernel")
    from_kernel = bob.widget.locator(".jce-msg").filter(has_text="sent from a kernel")
    expect(from_kernel).to_have_attribute("data-username", alice.username)
    expect(from_kernel.locator(".jce-author")).to_have_text(alice.name)
    expect(from_kernel.locator(".jce-kernel")).to_have_text("kernel")
    expect(bob.widget.locator(".jce-value-meta")).to_contain_text(alice.name)
    for person in people:  # alice's kernel speaks as alice: still two members
        expect(person.members()).to_have_count(2)
    own = alice.widget.locator(".jce-msg.jce-own").filter(has_text="hello bob")
    expect(own).to_have_count(1)

    alice.screenshot("jupyterlab")
    bob.screenshot("notebook7")


XSS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    '<svg onload="window.__xss=1"></svg>',
    '<iframe src="javascript:window.__xss=1"></iframe>',
    '<a href="javascript:window.__xss=1">html link</a>',
    "[markdown link](javascript:window.__xss=1)",
    "[mixed case](JaVaScRiPt:window.__xss=1)",
    '![image](x" onerror="window.__xss=1)',
    '<details open ontoggle="window.__xss=1">details</details>',
    "[ok link](https://example.org/page)",
]


def test_the_live_panel_shows_arrays_and_tables_from_a_kernel(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    alice.run_cell(2)
    matrix = bob.widget.locator('.jce-value[data-topic="matrix"]')
    expect(matrix.locator(".jce-value-text")).to_have_text("float64 [3×4]", timeout=WAIT_MS)
    expect(matrix.locator(".jce-value-stats")).to_have_text("min 0 · mean 5.5 · max 11")
    scores = bob.widget.locator('.jce-value[data-topic="scores"]')
    expect(scores.locator(".jce-value-text")).to_have_text("table, 2 rows × 2 columns")
    cells = scores.locator("tbody tr").first.locator("td")
    expect(cells).to_have_text(["ann", "0.9"])
    bob.screenshot("notebook7-live-values")


def test_xss_payloads_show_as_text_and_run_nothing(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, _ = people
    for payload in XSS:
        alice.say(payload)
    for person in people:
        for payload in ("<img src=x onerror=", "<script>window.__xss=1</script>", "<svg onload"):
            expect(person.bodies().filter(has_text=payload)).to_have_count(1, timeout=WAIT_MS)
        expect(person.bodies().filter(has_text="ok link")).to_have_count(1, timeout=WAIT_MS)
        bodies = person.widget.locator(".jce-body")
        assert bodies.locator("img, script, svg, iframe, details").count() == 0
        for link in bodies.locator("a").all():
            href = link.get_attribute("href")
            assert href is None or href.startswith("https://"), href
            if href:
                assert link.get_attribute("target") == "_blank"
                assert "noopener" in (link.get_attribute("rel") or "")
            else:
                link.click()  # a neutralised javascript: link does nothing
        assert person.page.evaluate("window.__xss") is None


def test_keys_typed_in_the_chat_never_reach_notebook_shortcuts(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, _ = people
    cells = alice.page.locator(".jp-Notebook .jp-Cell")
    before = cells.count()
    alice.composer.click()
    alice.page.keyboard.press("Escape")  # would enter command mode in a cell editor
    alice.page.keyboard.type("abddmxyz")  # command-mode keys: insert, delete, cut, ...
    expect(alice.composer).to_have_value("abddmxyz")
    assert cells.count() == before
    alice.composer.fill("")


def test_clearing_the_output_closes_the_widget_socket(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    gone = bob.member(alice)
    # chat.close() closes the window (its socket) and the kernel's connection with the
    # last Chat, so nothing of alice's remains in the room.
    alice.set_cell_source(0, "chat.close()")
    alice.run_cell(0)
    expect(alice.page.locator(".jce-root")).to_have_count(0, timeout=WAIT_MS)
    expect(gone).to_have_count(0, timeout=WAIT_MS)
    alice.set_cell_source(0, CELLS[0])
    alice.run_cell(0)
    alice.wait_connected()
    expect(gone).to_have_count(1, timeout=WAIT_MS)


def test_shift_enter_is_a_new_line_and_rooms_have_tabs_with_unread_counts(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    alice.composer.fill("first line")
    alice.composer.press("Shift+Enter")
    alice.composer.type("second line")
    alice.composer.press("Enter")
    body = bob.bodies().filter(has_text="first line")
    expect(body).to_have_count(1, timeout=WAIT_MS)
    assert body.inner_text() == "first line\nsecond line"  # one message, two lines

    for person in people:  # both join #random by name; it opens as the active tab
        person.widget.locator(".jce-join").fill("random")
        person.widget.locator(".jce-join").press("Enter")
        expect(person.widget.locator(".jce-tab.jce-active")).to_have_attribute(
            "data-room", "random"
        )
    alice.widget.locator('.jce-tab[data-room="general"]').click()
    bob.say("anyone in random?")
    badge = alice.widget.locator('.jce-tab[data-room="random"] .jce-badge')
    expect(badge).to_have_text("1", timeout=WAIT_MS)
    bob.say("hello?")
    expect(badge).to_have_text("2", timeout=WAIT_MS)
    alice.widget.locator('.jce-tab[data-room="random"]').click()
    expect(badge).to_have_text("")
    alice.expect_message("anyone in random?")
    for person in people:  # back to #general, leaving #random
        person.widget.locator('.jce-tab[data-room="random"] .jce-tab-close').click()
        expect(person.widget.locator(".jce-tab")).to_have_count(1)
        expect(person.widget.locator(".jce-tab.jce-active")).to_have_attribute(
            "data-room", "general"
        )


def test_long_history_loads_earlier_pages_and_a_reader_who_scrolled_up_is_told(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer
) -> None:
    _, bob = people
    with ChatClient(url=lab.url, token=lab.token) as client:
        room = client.join("archive")
        for i in range(130):
            room.send(f"archived message {i}")
        bob.widget.locator(".jce-join").fill("archive")
        bob.widget.locator(".jce-join").press("Enter")
        bob.expect_message("archived message 129")
        for i in range(12):
            room.publish("series", i * i % 7)
        expect(bob.bodies()).to_have_count(100)  # history on join
        scroller = bob.widget.locator(".jce-scroller")
        scroller.evaluate("node => { node.scrollTop = 0; }")  # reading older messages
        bob.expect_message("archived message 0")  # every page loaded, none twice
        expect(bob.bodies()).to_have_count(130)
        expect(bob.widget.locator(".jce-earlier")).to_be_hidden()
        scroller.evaluate("node => { node.scrollTop = 0; }")
        room.send("a new message while bob reads old ones")
        pill = bob.widget.locator(".jce-new")
        expect(pill).to_be_visible(timeout=WAIT_MS)
        pill.click()
        expect(pill).to_be_hidden()
        at_bottom = "n => n.scrollHeight - n.scrollTop - n.clientHeight < 40"
        assert scroller.evaluate(at_bottom)
        chart = bob.widget.locator('.jce-value[data-topic="series"] svg.jce-sparkline polyline')
        expect(chart).to_have_count(1)
        assert len(chart.get_attribute("points").split()) == 12
    bob.widget.locator('.jce-tab[data-room="archive"] .jce-tab-close').click()


def test_server_restart_reconnects_and_shows_every_message_once(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer
) -> None:
    alice, bob = people
    bob.say("just before the restart")
    alice.expect_message("just before the restart")
    lab.stop()
    for person in people:
        state = person.widget.locator(".jce-state")
        expect(state).to_have_attribute(
            "data-state", re.compile("reconnecting|offline"), timeout=WAIT_MS
        )
        expect(person.composer).to_be_disabled()
    lab.start()
    for person in people:
        person.dismiss_dialogs()
        retry = person.widget.locator(".jce-retry")
        if retry.is_visible():  # offline after several attempts: don't wait for the backoff
            retry.click()
        person.wait_connected()
    alice.say("right after the restart")
    bob.say("bob is back too")
    expected = [
        "hello bob, from JupyterLab",
        "hi alice, from Notebook 7",
        "sent from a kernel",
        "just before the restart",
        "right after the restart",
        "bob is back too",
    ]
    for person in people:
        for text in expected:
            person.expect_message(text)  # shown exactly once
        texts = person.bodies().all_inner_texts()
        assert len(texts) == len(set(texts)), texts
        seqs = person.widget.locator("ol.jce-messages:not(.jce-pending) .jce-msg")
        numbers = [int(s) for s in seqs.evaluate_all("ns => ns.map(n => n.dataset.seq)")]
        assert numbers == sorted(set(numbers)), numbers


CONTRAST = """node => {
    const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const lum = (c) => {
        const [r, g, b] = rgb(c).map((v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const root = node.closest(".jce-root");
    const fg = lum(getComputedStyle(node).color);
    const bg = lum(getComputedStyle(root).backgroundColor);
    return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
}"""


def test_text_is_readable_in_light_and_dark_themes(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer
) -> None:
    alice, _ = people
    selectors = [".jce-body", ".jce-author", ".jce-input", ".jce-member span:last-child"]
    for selector in selectors:
        ratio = alice.widget.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, (selector, ratio)
    settings = lab.home / "config" / "lab" / "user-settings" / "@jupyterlab"
    theme = settings / "apputils-extension" / "themes.jupyterlab-settings"
    theme.write_text('{"theme": "JupyterLab Dark"}')
    alice.page.reload()
    alice.dismiss_dialogs()
    expect(alice.page.locator("body[data-jp-theme-light='false']")).to_have_count(
        1, timeout=WAIT_MS
    )
    alice.run_cell(0)
    alice.wait_connected()
    alice.expect_message("bob is back too")
    background = alice.widget.evaluate("n => getComputedStyle(n).backgroundColor")
    assert background != "rgb(255, 255, 255)", background
    for selector in selectors:
        ratio = alice.widget.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, (selector, ratio)
    alice.screenshot("jupyterlab-dark")


def test_a_rename_reaches_everyone_and_the_kernel_and_twins_are_told_apart(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    bob.say("so that what alice's kernel says next starts a new group")
    host = alice.widget.locator("xpath=..")
    lent = int(host.get_attribute("data-delegations") or 0)
    alice.widget.locator(".jce-rename").click()
    box = alice.widget.locator(".jce-rename-input")
    box.fill("Bob")  # bob's display name: everyone must still tell them apart
    box.press("Enter")
    expect(alice.widget.locator(".jce-state-text")).to_have_text(
        "connected as Bob", timeout=WAIT_MS
    )
    label = bob.member(alice).locator("span").last  # after the avatar's initials
    expect(label).to_have_text(f"Bob ({alice.username})", timeout=WAIT_MS)
    expect(bob.member(bob).locator("span").last).to_have_text(f"Bob ({bob.username}) (you)")
    expect(bob.member(alice)).to_have_attribute("title", alice.username)
    # The kernel got the new identity before the cell runs (the comm message is first).
    expect(host).not_to_have_attribute("data-delegations", str(lent), timeout=WAIT_MS)
    alice.set_cell_source(1, 'chat.send("said by the renamed kernel")["seq"]')
    alice.run_cell(1)
    bob.expect_message("said by the renamed kernel")
    said = bob.widget.locator(".jce-msg").filter(has_text="said by the renamed kernel")
    expect(said).to_have_attribute("data-username", alice.username)
    expect(said.locator(".jce-author")).to_have_text(f"Bob ({alice.username})")
    expect(said.locator(".jce-author")).to_have_attribute(
        "title", f"{alice.username} · sent from their kernel"
    )
    bob.screenshot("twins")
