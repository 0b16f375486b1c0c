"""Replies, reactions, edits and deletions in real browsers, between two people (#15).

alice in JupyterLab 4, bob in Notebook 7, each in their own browser context (their own
identity), on one real server. The tests run in file order and share the two pages:
each step is one person acting and the other seeing it. Screenshots go to the tests'
temporary directories.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    CONTRAST,
    WAIT_MS,
    Locator,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_people,
    start_lab,
)

CELLS = ['from jupyter_chat_ext import Chat\nchat = Chat("conversation")\nchat']
QUESTION = "what should we ship first?"
ANSWER = "the conversation widget"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    notebooks = {"alice.ipynb": CELLS, "bob.ipynb": CELLS}
    server = start_lab(tmp_path_factory.mktemp("lab"), notebooks, renamable=True)
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
    request: pytest.FixtureRequest, people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> Iterator[None]:
    """When a test fails, save both pages and what their widgets say, in its tmp dir."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for who, person in zip(("alice", "bob"), people, strict=True):
        person.page.screenshot(path=str(tmp_path / f"FAILED-{who}.png"))
        state = {
            "error": person.widget.locator(".jce-error").inner_text(),
            "console": person.console[-50:],
        }
        (tmp_path / f"FAILED-{who}.json").write_text(json.dumps(state, indent=1))
        print(f"evidence: {tmp_path}")


def listed(person: NotebookPage) -> Locator:
    """The list of the room's messages (not those being sent)."""
    return person.widget.locator("ol.jce-messages:not(.jce-pending)")


def message(person: NotebookPage, body: str) -> Locator:
    """The message whose own body says ``body`` (not a reply quoting it)."""
    items = listed(person).locator(":scope > li.jce-msg")
    return items.filter(has=person.page.locator(":scope > .jce-body", has_text=body))


def act(item: Locator, action: str) -> None:
    """Click one of a message's actions (shown while the pointer is on the message)."""
    item.hover()
    item.locator(f':scope > .jce-actions [data-action="{action}"]').click()


def reaction(item: Locator, emoji: str) -> Locator:
    return item.locator(".jce-reaction").filter(has_text=emoji)


def shoot(people: tuple[NotebookPage, NotebookPage], directory: Path, name: str) -> None:
    for who, person in zip(("alice", "bob"), people, strict=True):
        person.widget.screenshot(path=str(directory / f"{name}-{who}.png"))


def test_a_reply_quotes_its_parent_which_counts_it_and_opens_its_thread(
    people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, bob = people
    alice.say(QUESTION)
    bob.expect_message(QUESTION)
    act(message(bob, QUESTION), "reply")
    replying = bob.widget.locator(".jce-replying")
    expect(replying).to_contain_text(f"Replying to Alice: {QUESTION}")
    bob.say(ANSWER)
    expect(replying).to_be_hidden()
    for person in people:
        reply = message(person, ANSWER)
        expect(reply).to_have_count(1, timeout=WAIT_MS)
        expect(reply.locator(".jce-quote")).to_contain_text(f"Alice{QUESTION}")
        count = message(person, QUESTION).locator(".jce-replies")
        expect(count).to_have_text("1 reply", timeout=WAIT_MS)

    # alice opens the thread and answers in it; bob sees the answer as a reply too
    message(alice, QUESTION).locator(".jce-replies").click()
    thread = alice.widget.locator(".jce-thread")
    expect(thread).to_be_visible()
    expect(thread.locator(".jce-thread-list > li")).to_have_count(2)
    expect(alice.widget.locator(".jce-replying")).to_contain_text("Replying in the thread of")
    alice.say("then the search")
    expect(thread.locator(".jce-thread-list > li")).to_have_count(3, timeout=WAIT_MS)
    later = message(bob, "then the search")
    expect(later.locator(".jce-quote")).to_contain_text(QUESTION, timeout=WAIT_MS)
    expect(message(bob, QUESTION).locator(".jce-replies")).to_have_text("2 replies")
    shoot(people, tmp_path, "thread")
    thread.locator(".jce-thread-close").click()
    expect(thread).to_be_hidden()

    # bob clicks the quote in a reply: the parent is shown and highlighted
    message(bob, ANSWER).locator(".jce-quote").click()
    expect(message(bob, QUESTION)).to_have_class("jce-msg jce-flash")


def test_reactions_are_counted_toggled_and_say_who(
    people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, bob = people
    act(message(bob, QUESTION), "react")
    picker = message(bob, QUESTION).locator(".jce-picker")
    common = ["👍", "❤️", "😄", "🎉", "👀", "🚀", "✅", "❌"]
    expect(picker.locator(".jce-pick")).to_have_text(common)
    picker.locator(".jce-pick").filter(has_text="🎉").click()
    expect(picker).to_have_count(0)

    party = reaction(message(alice, QUESTION), "🎉")
    expect(party.locator(".jce-reaction-count")).to_have_text("1", timeout=WAIT_MS)
    expect(party).to_have_attribute("title", "Bob reacted with 🎉")
    expect(party).to_have_attribute("aria-pressed", "false")
    party.click()  # alice adds hers
    for person in people:
        chip = reaction(message(person, QUESTION), "🎉")
        expect(chip.locator(".jce-reaction-count")).to_have_text("2", timeout=WAIT_MS)
        expect(chip).to_have_attribute("title", "Bob, Alice reacted with 🎉")
        expect(chip).to_have_attribute("aria-pressed", "true")
    reaction(message(bob, QUESTION), "🎉").click()  # bob takes his back
    for person, mine in ((alice, "true"), (bob, "false")):
        chip = reaction(message(person, QUESTION), "🎉")
        expect(chip.locator(".jce-reaction-count")).to_have_text("1", timeout=WAIT_MS)
        expect(chip).to_have_attribute("title", "Alice reacted with 🎉")
        expect(chip).to_have_attribute("aria-pressed", mine)
    act(message(alice, ANSWER), "react")
    message(alice, ANSWER).locator(".jce-pick").filter(has_text="👍").click()
    expect(reaction(message(bob, ANSWER), "👍")).to_have_attribute(
        "title", "Alice reacted with 👍", timeout=WAIT_MS
    )
    shoot(people, tmp_path, "reactions")


def test_an_edit_in_place_reaches_the_other_marked_edited(
    people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, _ = people
    # Esc cancels: nothing changes
    act(message(alice, QUESTION), "edit")
    editor = alice.widget.locator(".jce-edit-input")
    expect(editor).to_have_value(QUESTION)
    expect(editor).to_be_focused()
    editor.press("Escape")
    expect(editor).to_have_count(0)

    # Up arrow in the empty composer edits alice's last message; Enter saves it
    alice.composer.click()
    alice.composer.press("ArrowUp")
    expect(editor).to_have_value("then the search")
    editor.fill("then the search, and export")
    editor.press("Enter")
    for person in people:
        edited = message(person, "then the search, and export")
        expect(edited).to_have_count(1, timeout=WAIT_MS)
        expect(edited.locator(".jce-edited")).to_have_text("edited", timeout=WAIT_MS)
        expect(message(person, QUESTION).locator(".jce-edited")).to_have_count(0)
    # others' messages have no edit or delete action
    actions = message(alice, ANSWER).locator(".jce-actions")
    expect(actions.locator('[data-action="edit"], [data-action="delete"]')).to_have_count(0)
    expect(actions.locator('[data-action="reply"]')).to_have_count(1)
    shoot(people, tmp_path, "edited")


def test_a_deletion_is_confirmed_and_leaves_no_body_anywhere(
    people: tuple[NotebookPage, NotebookPage], tmp_path: Path
) -> None:
    alice, bob = people
    act(message(bob, ANSWER), "delete")
    confirm = bob.widget.locator(".jce-confirm")
    expect(confirm).to_contain_text("Delete this message for everyone?")
    confirm.locator(".jce-confirm-cancel").click()
    expect(confirm).to_have_count(0)
    expect(message(alice, ANSWER)).to_have_count(1)
    act(message(bob, ANSWER), "delete")
    confirm.locator(".jce-confirm-delete").click()
    for person in people:
        deleted = person.widget.locator(".jce-msg-deleted")
        expect(deleted).to_have_count(1, timeout=WAIT_MS)
        expect(deleted.locator(".jce-body")).to_have_text("message deleted")
        expect(deleted.locator(".jce-actions, .jce-reaction")).to_have_count(0)
        expect(listed(person)).not_to_contain_text(ANSWER)
    shoot(people, tmp_path, "deleted")


READABLE = [".jce-quote-author", ".jce-quote-text", ".jce-reaction-count", ".jce-replies"]
READABLE += [".jce-edited", ".jce-msg-deleted .jce-body"]


def test_a_late_joiner_sees_every_change_readable_in_light_and_dark(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer, tmp_path: Path
) -> None:
    alice, _ = people
    for selector in READABLE:
        ratio = alice.widget.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, ("light", selector, ratio)
    settings = lab.home / "config" / "lab" / "user-settings" / "@jupyterlab"
    theme = settings / "apputils-extension" / "themes.jupyterlab-settings"
    theme.write_text('{"theme": "JupyterLab Dark"}')
    alice.page.reload()  # a new page joins afresh: every change comes from the server
    alice.dismiss_dialogs()
    expect(alice.page.locator("body[data-jp-theme-light='false']")).to_have_count(
        1, timeout=WAIT_MS
    )
    alice.run_cell(0)
    alice.wait_connected()
    expect(message(alice, QUESTION).locator(".jce-replies")).to_have_text(
        "2 replies", timeout=WAIT_MS
    )
    expect(reaction(message(alice, QUESTION), "🎉")).to_have_attribute(
        "title", "Alice reacted with 🎉"
    )
    edited = message(alice, "then the search, and export")
    expect(edited.locator(".jce-edited")).to_have_text("edited")
    expect(edited.locator(".jce-quote")).to_contain_text(QUESTION)
    expect(alice.widget.locator(".jce-msg-deleted .jce-body")).to_have_text("message deleted")
    expect(listed(alice)).not_to_contain_text(ANSWER)
    background = alice.widget.evaluate("n => getComputedStyle(n).backgroundColor")
    assert background != "rgb(255, 255, 255)", background
    for selector in READABLE:
        ratio = alice.widget.locator(selector).first.evaluate(CONTRAST)
        assert ratio >= 4.5, ("dark", selector, ratio)
    act(message(alice, QUESTION), "react")  # the picker and actions, in the dark
    alice.widget.screenshot(path=str(tmp_path / "dark-alice.png"))
    assert (tmp_path / "dark-alice.png").stat().st_size > 0


def test_a_moderator_deletes_someone_elses_message_after_confirming(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer
) -> None:
    alice, bob = people
    spam = "buy cheap watches"
    bob.say(spam)
    expect(message(alice, spam)).to_have_count(1, timeout=WAIT_MS)
    actions = message(alice, spam).locator(":scope > .jce-actions")
    expect(actions.locator('[data-action="reply"]')).to_have_count(1)
    expect(actions.locator('[data-action="delete"]')).to_have_count(0)
    # Make alice a moderator: a restart with her username in `moderators` (one name per
    # option); both windows reconnect, and alice's hello now says moderator: true.
    lab.args = (*lab.args, f"--ChatExtensionApp.moderators={alice.username}")
    lab.restart(same_port=True)
    for person in people:
        person.dismiss_dialogs()
        retry = person.widget.locator(".jce-retry")
        if retry.is_visible():  # offline after several attempts: don't wait for the backoff
            retry.click()
        person.wait_connected()
    expect(actions.locator('[data-action="delete"]')).to_have_count(1, timeout=WAIT_MS)
    expect(actions.locator('[data-action="edit"]')).to_have_count(0)
    act(message(alice, spam), "delete")
    confirm = alice.widget.locator(".jce-confirm")
    expect(confirm).to_contain_text("Delete this message for everyone?")
    confirm.locator(".jce-confirm-delete").click()
    for person in people:
        expect(listed(person)).not_to_contain_text(spam, timeout=WAIT_MS)
        expect(person.widget.locator(".jce-msg-deleted")).to_have_count(2)
    # bob is no moderator: alice's messages show him no delete
    expect(message(bob, QUESTION).locator('[data-action="delete"]')).to_have_count(0)
