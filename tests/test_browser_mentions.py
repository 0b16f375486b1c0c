"""Mentions and read markers in real browsers (#15, widget side).

alice in JupyterLab 4 talks in #planning. bob has two tabs of one browser (one
identity): his first shows #lobby only; his second also has #planning open in a tab it
does not show. A third person (a script) spoke in #planning. alice mentions bob with
the autocomplete; bob gets the badges, the count in the title and the list; opening the
mention from the list in his first tab reads it there, which clears it in the second.
The tests run in file order and share the pages; screenshots go to their tmp dirs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    Locator,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_notebook,
    start_lab,
)

PLANNING = ['from jupyter_chat_ext import Chat\nchat = Chat("planning")\nchat']
LOBBY = ['from jupyter_chat_ext import Chat\nchat = Chat("lobby")\nchat']
REVIEW = "can you review the plan?"
MENTION_TITLE = re.compile(r"^\(@1\) ")
NO_MENTION_TITLE = re.compile(r"^(?!\(@)")

# The browser's own notifications, recorded as the page creates them (a real one is
# still made: the recorder only watches).
RECORD_NOTIFICATIONS = """() => {
    window.__notices = [];
    const Real = window.Notification;
    window.Notification = class extends Real {
        constructor(title, options) {
            window.__notices.push({title, body: options.body, tag: options.tag});
            super(title, options);
        }
    };
}"""


def set_hidden(person: NotebookPage, hidden: bool) -> None:
    """What the browser does when the page's tab goes to the background (or comes back).

    Headless Chromium shows every page; this sets what a hidden one reports, then tells
    the page, as the browser would.
    """
    person.page.evaluate(
        """hidden => {
            Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
            Object.defineProperty(document, "visibilityState",
                                  {value: hidden ? "hidden" : "visible", configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    notebooks = {"alice.ipynb": PLANNING, "bob.ipynb": LOBBY, "bob2.ipynb": LOBBY}
    server = start_lab(tmp_path_factory.mktemp("lab"), notebooks, renamable=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speaker(lab: JupyterServer) -> Iterator[ChatClient]:
    """Someone who spoke in #planning from a script (a recent speaker, not a member)."""
    with ChatClient(url=lab.url, token=lab.token) as client:
        yield client


@pytest.fixture(scope="module")
def people(
    browser: Any, lab: JupyterServer
) -> Iterator[tuple[NotebookPage, NotebookPage, NotebookPage]]:
    """alice (JupyterLab), bob's first tab and bob's second tab (Notebook 7, one context)."""
    contexts = []
    alice_url = f"{lab.url}lab/tree/alice.ipynb?token={lab.token}"
    alice_context, alice = open_notebook(browser, alice_url)
    contexts.append(alice_context)
    alice.set_identity("Alice", "#7b1fa2")
    alice.run_cell(0)
    alice.wait_connected()
    bob_context, bob = open_notebook(browser, f"{lab.url}notebooks/bob.ipynb?token={lab.token}")
    contexts.append(bob_context)
    bob.set_identity("Bob", "#00796b")
    bob.page.evaluate(RECORD_NOTIFICATIONS)
    bob.run_cell(0)
    bob.wait_connected()
    second = NotebookPage(bob_context.new_page())
    second.page.goto(f"{lab.url}notebooks/bob2.ipynb?token={lab.token}")
    expect(second.cell(0)).to_be_visible(timeout=WAIT_MS)
    second.page.evaluate(RECORD_NOTIFICATIONS)
    second.run_cell(0)
    second.wait_connected()
    for tab in (bob, second):  # one browser, one person
        expect(tab.widget.locator(".jce-state-text")).to_have_text("connected as Bob")
    assert bob.username == second.username, (bob.username, second.username)
    yield alice, bob, second
    for context in contexts:
        context.close()


@pytest.fixture(autouse=True)
def evidence_on_failure(
    request: pytest.FixtureRequest,
    people: tuple[NotebookPage, NotebookPage, NotebookPage],
    tmp_path: Path,
) -> Iterator[None]:
    """When a test fails, save the three pages and what their widgets say, in its tmp dir."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for who, person in zip(("alice", "bob", "bob2"), people, strict=True):
        person.page.screenshot(path=str(tmp_path / f"FAILED-{who}.png"))
        state = {
            "title": person.page.title(),
            "error": person.widget.locator(".jce-error").inner_text(),
            "console": person.console[-50:],
        }
        (tmp_path / f"FAILED-{who}.json").write_text(json.dumps(state, indent=1))
        print(f"evidence: {tmp_path}")


def tab(person: NotebookPage, room: str) -> Locator:
    return person.widget.locator(f'.jce-tab[data-room="{room}"]')


def message(person: NotebookPage, body: str) -> Locator:
    items = person.widget.locator("ol.jce-messages:not(.jce-pending) > li.jce-msg")
    return items.filter(has=person.page.locator(":scope > .jce-body", has_text=body))


def mention_count(person: NotebookPage) -> Locator:
    return person.widget.locator(".jce-mentions-toggle .jce-mentions-count")


def test_alice_mentions_bob_with_the_autocomplete_and_the_keyboard(
    people: tuple[NotebookPage, NotebookPage, NotebookPage],
    speaker: ChatClient,
    tmp_path: Path,
) -> None:
    alice, bob, second = people
    # bob's second tab opens #planning, then goes back to #lobby: #planning stays in a tab
    second.widget.locator(".jce-join").fill("planning")
    second.widget.locator(".jce-join").press("Enter")
    expect(alice.member(second)).to_have_count(1, timeout=WAIT_MS)
    tab(second, "lobby").click()
    expect(tab(second, "lobby")).to_have_class(re.compile("jce-active"))
    room = speaker.join("planning")
    room.send("morning all")
    alice.expect_message("morning all")

    alice.composer.click()
    alice.composer.press_sequentially("@")
    options = alice.widget.locator(".jce-ac [role=option]")
    expect(options).to_have_count(2)
    speaker_name = speaker.user["display_name"]
    # the recent speaker first, then the members; never alice herself
    expect(options.locator(".jce-ac-name")).to_have_text([speaker_name, "Bob"])
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    alice.composer.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(options.nth(1).locator(".jce-ac-username")).to_have_text(f"@{bob.username}")
    alice.widget.screenshot(path=str(tmp_path / "autocomplete-light.png"))
    alice.composer.press("Enter")
    expect(alice.widget.locator(".jce-ac")).to_be_hidden()
    expect(alice.composer).to_have_value(f"@{bob.username} ")
    alice.composer.press_sequentially(REVIEW)
    alice.composer.press("Enter")
    expect(alice.composer).to_have_value("")

    # bob is told in both tabs, the one without #planning too
    badge = tab(second, "planning").locator(".jce-badge-mention")
    expect(badge).to_have_text("@1", timeout=WAIT_MS)
    expect(mention_count(bob)).to_have_text("1", timeout=WAIT_MS)
    # the body keeps @username; everyone sees bob's name, marked (more strongly for bob)
    tab(second, "planning").click()
    for person, mine in ((alice, False), (second, True)):
        mark = message(person, REVIEW).locator(".jce-mention")
        expect(mark).to_have_text("@Bob", timeout=WAIT_MS)
        expect(mark).to_have_attribute("title", f"@{bob.username}")
        assert ("jce-mention-me" in (mark.get_attribute("class") or "")) is mine
    # bob reads it in his second tab: it is read in the first one too
    expect(tab(second, "planning").locator(".jce-badge-mention")).to_have_text("", timeout=WAIT_MS)
    expect(mention_count(bob)).to_have_text("", timeout=WAIT_MS)
    tab(second, "lobby").click()
    expect(tab(second, "planning").locator(".jce-badge")).to_have_text("")


def test_bob_gets_the_badges_the_title_and_the_list_and_a_click_opens_the_message(
    people: tuple[NotebookPage, NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, bob, second = people
    alice.composer.press_sequentially("@Bo")
    expect(alice.widget.locator(".jce-ac [role=option]")).to_have_count(1)
    alice.composer.press("Tab")
    alice.composer.press_sequentially("and the budget, please")
    alice.composer.press("Enter")
    expect(alice.composer).to_have_value("")

    # the second tab has #planning open, not shown: a count, a mention badge, the title
    expect(tab(second, "planning").locator(".jce-badge")).to_have_text("1", timeout=WAIT_MS)
    expect(tab(second, "planning").locator(".jce-badge-mention")).to_have_text("@1")
    expect(second.page).to_have_title(MENTION_TITLE)
    # the first tab is not in #planning at all: the mentions button and the title say it
    expect(mention_count(bob)).to_have_text("1", timeout=WAIT_MS)
    expect(bob.page).to_have_title(MENTION_TITLE)
    expect(tab(bob, "planning")).to_have_count(0)
    bob.widget.locator(".jce-mentions-toggle").click()
    entries = bob.widget.locator(".jce-mention-item")
    expect(entries).to_have_count(1)
    expect(entries.locator(".jce-mention-room")).to_have_text("#planning")
    expect(entries.locator(".jce-mention-author")).to_have_text("Alice")
    expect(entries.locator(".jce-mention-text")).to_have_text("@Bob and the budget, please")
    bob.widget.screenshot(path=str(tmp_path / "mentions-light-bob.png"))
    second.widget.screenshot(path=str(tmp_path / "badges-light-bob2.png"))

    # a click opens #planning (joined now) at the message
    entries.first.click()
    expect(bob.widget.locator(".jce-mentions")).to_be_hidden()
    expect(tab(bob, "planning")).to_have_class(re.compile("jce-active"), timeout=WAIT_MS)
    opened = message(bob, "and the budget, please")
    expect(opened).to_have_class(re.compile("jce-flash"), timeout=WAIT_MS)
    expect(opened.locator(".jce-mention-me")).to_have_text("@Bob")
    # read there: the mention is gone from both tabs, and their titles are their own again
    expect(mention_count(bob)).to_have_text("", timeout=WAIT_MS)
    expect(bob.page).to_have_title(NO_MENTION_TITLE)
    expect(tab(second, "planning").locator(".jce-badge-mention")).to_have_text("", timeout=WAIT_MS)
    expect(tab(second, "planning").locator(".jce-badge")).to_have_text("")
    expect(second.page).to_have_title(NO_MENTION_TITLE)
    expect(mention_count(second)).to_have_text("")


def test_a_hidden_page_notifies_once_asked_by_a_click_and_reads_when_shown_again(
    people: tuple[NotebookPage, NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, bob, second = people
    assert bob.page.evaluate("Notification.permission") == "default"  # never asked on load
    bob.widget.locator(".jce-mentions-toggle").click()
    notify = bob.widget.locator(".jce-notify")
    expect(notify).to_be_visible()
    bob.page.context.grant_permissions(["notifications"])  # what the person answers
    notify.click()
    expect(notify).to_be_hidden()
    expect(bob.widget.locator(".jce-notify-note")).to_have_text(re.compile("notified of mentions"))
    bob.widget.locator(".jce-mentions-toggle").click()

    set_hidden(bob, True)  # bob's first tab goes to the background, #planning shown in it
    alice.composer.press_sequentially("@Bo")
    alice.composer.press("Tab")
    alice.composer.press_sequentially("one more thing")
    alice.composer.press("Enter")
    bob.expect_message("one more thing")
    expect(mention_count(bob)).to_have_text("1", timeout=WAIT_MS)  # hidden: not read
    expect(tab(second, "planning").locator(".jce-badge-mention")).to_have_text("@1")
    notices = bob.page.evaluate("window.__notices")
    assert [n["title"] for n in notices] == ["Alice mentioned you in #planning"], notices
    assert notices[0]["body"] == "@Bob one more thing"
    assert second.page.evaluate("window.__notices") == []  # that page is visible
    line = bob.widget.locator(".jce-unread-line")
    expect(message(bob, "one more thing").locator(".jce-unread-line")).to_have_count(1)

    set_hidden(bob, False)  # back: bob reads #planning, in both tabs
    expect(mention_count(bob)).to_have_text("", timeout=WAIT_MS)
    expect(tab(second, "planning").locator(".jce-badge-mention")).to_have_text("", timeout=WAIT_MS)
    expect(line).to_have_count(1)  # what came while away stays marked while bob is here
    bob.widget.screenshot(path=str(tmp_path / "unread-line-light.png"))


CONTRAST = """node => {
    const parse = (c) => {
        const v = c.match(/[\\d.]+/g).map(Number);
        return c.startsWith("color(") ? v.map((x, i) => (i < 3 ? x * 255 : x)) : v;
    };
    // What the text is drawn on: every background under it, blended from the page up.
    const layers = [];
    for (let n = node; n; n = n.parentElement) {
        layers.push(parse(getComputedStyle(n).backgroundColor));
    }
    let under = [255, 255, 255];
    for (const bg of layers.reverse()) {
        const a = bg.length === 4 ? bg[3] : 1;
        under = under.map((u, i) => bg[i] * a + u * (1 - a));
    }
    const fg = parse(getComputedStyle(node).color);
    const alpha = fg.length === 4 ? fg[3] : 1;
    const text = fg.slice(0, 3).map((v, i) => v * alpha + under[i] * (1 - alpha));
    const lum = (rgb) => {
        const [r, g, b] = rgb.map((v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [a, b] = [lum(text), lum(under)];
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


def readable(found: Locator, theme: str) -> None:
    """The first of ``found`` is text at least 4.5:1 against what it is drawn on."""
    ratio = found.first.evaluate(CONTRAST)
    assert ratio >= 4.5, (theme, found, ratio)


def mention_with_autocomplete(alice: NotebookPage, rest: str, theme: str, tmp_path: Path) -> None:
    """alice mentions bob: `@Bo`, Tab, the rest; the autocomplete read and shot first."""
    alice.composer.press_sequentially("@Bo")
    option = alice.widget.locator(".jce-ac [role=option]")
    expect(option).to_have_count(1)
    readable(option.locator(".jce-ac-name"), theme)
    readable(option.locator(".jce-ac-username"), theme)
    alice.widget.screenshot(path=str(tmp_path / f"autocomplete-{theme}.png"))
    alice.composer.press("Tab")
    alice.composer.press_sequentially(rest)
    alice.composer.press("Enter")
    expect(alice.composer).to_have_value("")
    readable(message(alice, rest).locator(".jce-mention"), theme)


def check_theme(
    people: tuple[NotebookPage, NotebookPage, NotebookPage], theme: str, text: str, tmp_path: Path
) -> None:
    """bob shows #lobby, alice mentions him in #planning: every part of it is readable."""
    alice, bob, _ = people
    mention_with_autocomplete(alice, text, theme, tmp_path)
    expect(mention_count(bob)).to_have_text("1", timeout=WAIT_MS)
    readable(mention_count(bob), theme)
    badge = tab(bob, "planning").locator(".jce-badge-mention")
    if badge.count():  # #planning open in a tab, not shown
        expect(badge).to_have_text("@1")
        readable(badge, theme)
    bob.widget.locator(".jce-mentions-toggle").click()
    entry = bob.widget.locator(".jce-mention-item")
    expect(entry).to_have_count(1)
    for part in (".jce-mention-room", ".jce-mention-author", ".jce-mention-text"):
        readable(entry.locator(part), theme)
    bob.widget.screenshot(path=str(tmp_path / f"mentions-{theme}.png"))
    entry.click()
    opened = message(bob, text)
    expect(opened).to_have_class(re.compile("jce-flash"), timeout=WAIT_MS)
    readable(opened.locator(".jce-mention-me"), theme)
    line = bob.widget.locator(".jce-unread-line")
    expect(line).to_have_count(1)
    readable(line, theme)
    expect(mention_count(bob)).to_have_text("", timeout=WAIT_MS)
    bob.widget.screenshot(path=str(tmp_path / f"opened-{theme}.png"))
    alice.widget.screenshot(path=str(tmp_path / f"alice-{theme}.png"))


def test_every_part_reads_in_light_and_dark(
    people: tuple[NotebookPage, NotebookPage, NotebookPage], lab: JupyterServer, tmp_path: Path
) -> None:
    alice, bob, _ = people
    tab(bob, "lobby").click()
    check_theme(people, "light", "last one, promise", tmp_path)

    settings = lab.home / "config" / "lab" / "user-settings" / "@jupyterlab"
    theme = settings / "apputils-extension" / "themes.jupyterlab-settings"
    theme.write_text('{"theme": "JupyterLab Dark"}')
    for person in (alice, bob):  # new pages: bob's widget shows #lobby only
        person.page.reload()
        person.dismiss_dialogs()
        expect(person.page.locator("body[data-jp-theme-light='false']")).to_have_count(
            1, timeout=WAIT_MS
        )
        person.run_cell(0)
        person.wait_connected()
    background = bob.widget.evaluate("n => getComputedStyle(n).backgroundColor")
    assert background != "rgb(255, 255, 255)", background
    check_theme(people, "dark", "see you tomorrow", tmp_path)
