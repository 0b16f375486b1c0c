"""Shared by the browser tests: a notebook page with a Chat widget, driven by Playwright."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest

from conftest import require_module
from helpers import JupyterServer

require_module("playwright", "pip install playwright")
from playwright.sync_api import Locator, Page, expect  # noqa: E402

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "screenshots"
WAIT_MS = 30_000


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    """Replace pytest-jupyter's per-test loop: Playwright's sync API runs its own."""


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """No in-process server here: the server under test is a separate process."""


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, path)


# Paste a PNG into the composer as a browser does (a ClipboardEvent with a file).
_PASTE = """([b64, name]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, {type: "image/png"}));
    const composer = document.querySelector(".jce-root .jce-input");
    composer.focus();
    const init = {clipboardData: data, bubbles: true, cancelable: true};
    const event = new ClipboardEvent("paste", init);
    composer.dispatchEvent(event);
    return event.defaultPrevented;
}"""


# The contrast ratio (WCAG) of a node's text against what it is drawn on, for
# page.evaluate: for the readability checks in light and dark themes.
CONTRAST = """node => {
    // The text's colour (its alpha blended) against the background it is drawn on.
    // rgb(255, 0, 0) or rgba(...), or color(srgb 1 0 0 / 0.5) for a color-mix()
    const parse = (c) => {
        const v = c.match(/[\\d.]+/g).map(Number);
        return c.startsWith("color(") ? v.map((x, i) => (i < 3 ? x * 255 : x)) : v;
    };
    let under = null;
    for (let n = node; n && !under; n = n.parentElement) {
        const bg = parse(getComputedStyle(n).backgroundColor);
        if (bg.length === 3 || bg[3] > 0.5) under = bg.slice(0, 3);
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


class NotebookPage:
    """One person's notebook page with a Chat widget in its first cell's output."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))

    def cell(self, index: int) -> Locator:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, index: int) -> None:
        """Shift+Enter in a cell; retried while the kernel is still attaching."""
        prompt = self.cell(index).locator(".jp-InputArea-prompt")
        for _ in range(10):
            self.dismiss_dialogs()  # e.g. a kernel choice that a busy machine asks late
            self.cell(index).locator(".jp-InputArea-editor").click()
            self.page.keyboard.press("Shift+Enter")
            try:
                expect(prompt).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=5_000)
                return
            except AssertionError:
                continue
        raise AssertionError(f"cell {index} never started running")

    def set_cell_source(self, index: int, source: str) -> None:
        self.cell(index).locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.insert_text(source)

    @property
    def widget(self) -> Locator:
        return self.page.locator(".jce-root").first

    @property
    def composer(self) -> Locator:
        return self.widget.locator(".jce-input")

    @property
    def name(self) -> str:
        text = self.widget.locator(".jce-state-text").inner_text()
        return text.removeprefix("connected as ")

    @property
    def username(self) -> str:
        return self.widget.get_attribute("data-username") or ""

    def set_identity(self, display_name: str, color: str) -> None:
        """Name this person through jupyter_server's own identity API (PATCH /api/me)."""
        status = self.page.evaluate(
            """async ([display_name, color]) => {
                const xsrf = document.cookie.match(/(?:^|;\\s*)_xsrf=([^;]*)/);
                const node = document.getElementById("jupyter-config-data");
                const config = JSON.parse(node.textContent);
                const response = await fetch(`${config.baseUrl}api/me`, {
                    method: "PATCH",
                    headers: {"X-XSRFToken": xsrf ? decodeURIComponent(xsrf[1]) : ""},
                    body: JSON.stringify({display_name, name: display_name, color,
                                          initials: display_name.slice(0, 1)}),
                });
                return response.status;
            }""",
            [display_name, color],
        )
        assert status == 200, status

    def wait_connected(self) -> None:
        expect(self.widget.locator(".jce-state")).to_have_attribute(
            "data-state", "connected", timeout=WAIT_MS
        )

    def dismiss_dialogs(self) -> None:
        """Close JupyterLab dialogs (e.g. "kernel died" after a server restart)."""
        dialogs = self.page.locator(".jp-Dialog")
        while count := dialogs.count():
            dialog = dialogs.first
            self.console.append(f"dialog: {dialog.inner_text()[:200]!r}")
            buttons = dialog.locator(".jp-Dialog-button")
            reject = dialog.locator(".jp-Dialog-button.jp-mod-reject")
            accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
            if dialog.locator("select").count() and accept.count():
                accept.first.click()  # a kernel choice: take the one offered
            else:
                (reject if reject.count() else buttons).first.click()
            expect(dialogs).to_have_count(count - 1, timeout=10_000)

    def say(self, text: str) -> None:
        self.composer.fill(text)
        for _ in range(3):
            self.composer.press("Enter")
            try:
                expect(self.composer).to_have_value("", timeout=5_000)
                return
            except AssertionError:
                # A JupyterLab dialog that popped up meanwhile takes keys on the document
                # in its capture phase, before any widget sees them: close it and retry.
                self.dismiss_dialogs()
        raise AssertionError(f"the composer did not send {text!r}")

    def bodies(self) -> Locator:
        return self.widget.locator("ol.jce-messages:not(.jce-pending) .jce-body")

    def expect_message(self, text: str) -> None:
        expect(self.bodies().filter(has_text=text)).to_have_count(1, timeout=WAIT_MS)

    def members(self) -> Locator:
        return self.widget.locator(".jce-member")

    def member(self, other: NotebookPage) -> Locator:
        return self.widget.locator(f'.jce-member[data-username="{other.username}"]')

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        self.widget.screenshot(path=str(ARTIFACTS / f"{name}-widget.png"))

    def paste_image(self, data: bytes, name: str) -> bool:
        """Paste a PNG into the composer, as a browser does (a ClipboardEvent with a file).

        True if the widget took it (the event's default was prevented).
        """
        return bool(self.page.evaluate(_PASTE, [base64.b64encode(data).decode(), name]))


def open_notebook(
    browser: Any, url: str, width: int = 1280, height: int = 900
) -> tuple[Any, NotebookPage]:
    """Open ``url`` in a new browser context; return it and the page once cell 0 shows."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url)
    person = NotebookPage(page)
    expect(person.cell(0)).to_be_visible(timeout=WAIT_MS)
    return context, person


# Server flags that let a page name its person (PATCH /api/me, NotebookPage.set_identity).
RENAMABLE = tuple(
    f"--IdentityProvider.updatable_fields={field}"
    for field in ("display_name", "name", "initials", "color")
)


def start_lab(
    home: Path, notebooks: dict[str, list[str]], *, renamable: bool = False, **kwargs: Any
) -> JupyterServer:
    """A server in ``home`` holding ``notebooks`` (file name: cells' sources).

    ``renamable``: pages may set their person's name and colour; ``kwargs`` go to
    JupyterServer (base_url, args).
    """
    for name, cells in notebooks.items():
        write_notebook(home / name, cells)
    if renamable:
        kwargs["args"] = (*RENAMABLE, *kwargs.get("args", ()))
    return JupyterServer(home, **kwargs).start()


def open_people(
    browser: Any, lab: JupyterServer, people: Sequence[tuple[str, str | None, str | None]]
) -> list[tuple[Any, NotebookPage]]:
    """Open each person's page at once, then run its cell 0; return them once connected.

    ``people``: (path under the server, e.g. "lab/tree/alice.ipynb", name, colour), a
    browser context each (so a person each); a name and colour are set before the cell
    runs, when given. The pages load, and their kernels start, side by side.
    """
    opened = []
    for path, _, _ in people:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        person = NotebookPage(page)
        page.goto(f"{lab.url}{path}?token={lab.token}", wait_until="commit")
        opened.append((context, person))
    for (_, name, color), (_, person) in zip(people, opened, strict=True):
        expect(person.cell(0)).to_be_visible(timeout=WAIT_MS)
        if name is not None and color is not None:
            person.set_identity(name, color)
        person.run_cell(0)
    for _, person in opened:
        person.wait_connected()
    return opened
