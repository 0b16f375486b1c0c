"""Shared results in real browsers, between two people (#16): math and code that read
well, figures and tables as attachments, an image pasted into the composer, and no
script from any of them running in either page.

alice in JupyterLab 4, bob in Notebook 7, each in their own browser context, on one real
server. The tests run in file order and share the two pages. An attachment with exactly
chosen bytes (a hostile SVG, an HTML bundle) is shared by the person's own page over the
protocol (HTTP upload, then ``send`` on a socket of its own), as a kernel would share it.
Screenshots go to test-artifacts/screenshots (light and dark).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import JupyterServer
from notebook_page import (  # the two jp_* fixtures replace pytest-jupyter's here
    WAIT_MS,
    Locator,
    NotebookPage,
    expect,
    jp_asyncio_loop,  # noqa: F401
    jp_server_cleanup,  # noqa: F401
    open_notebook,
    write_notebook,
)

ROOM = "results"
CELLS = [f'from jupyter_chat_ext import Chat\nchat = Chat("{ROOM}")\nchat']
VALUE_MIME = "application/vnd.jupyter-chat-ext.value"
BUNDLE_MIME = "application/vnd.jupyter-chat-ext.bundle+json"
PWNED = "window.__pwned"  # what every payload tries to set; asserted never set

# Share an attachment from this page: upload over HTTP, then `send` it on a socket of its
# own (as the person, by their login cookie). Returns the message's seq, or the refusal.
SHARE = """async ([room, name, mime, b64, kind, preview, caption]) => {
    const config = JSON.parse(document.getElementById("jupyter-config-data").textContent);
    const base = new URL(config.baseUrl, location.href);
    const headers = {"Content-Type": mime, "X-Chat-Name": encodeURIComponent(name)};
    const xsrf = document.cookie.match(/(?:^|;\\s*)_xsrf=([^;]*)/);
    if (xsrf) headers["X-XSRFToken"] = decodeURIComponent(xsrf[1]);
    if (config.token) headers.Authorization = `token ${config.token}`;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const url = new URL(`chat-ext/attachments?room=${encodeURIComponent(room)}`, base);
    const answer = await fetch(url, {method: "POST", headers, body: bytes});
    if (answer.status !== 201) return {refused: answer.status, body: await answer.text()};
    const {upload} = await answer.json();
    const ws = new WebSocket(new URL("chat-ext/ws", base).toString().replace(/^http/, "ws"));
    const id = `share-${Math.random().toString(16).slice(2)}`;
    try {
        return await new Promise((resolve) => {
            ws.onmessage = (event) => {
                const frame = JSON.parse(event.data);
                if (frame.op === "hello") ws.send(JSON.stringify({op: "join", room, id: "j"}));
                if (frame.op === "joined") {
                    const attachment = {upload, kind};
                    if (preview) attachment.preview = preview;
                    ws.send(JSON.stringify({op: "send", room, id, body: caption, attachment}));
                }
                if (frame.op === "message" && frame.id === id) resolve({seq: frame.seq});
                if (frame.op === "error") resolve({refused: frame.code, body: frame.message});
            };
        });
    } finally {
        ws.close();
    }
}"""


def png(width: int, height: int) -> bytes:
    """A real PNG: a colour gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def table_bytes() -> bytes:
    """A DataFrame packed as a value attachment is (jupyter_chat_ext.values.pack)."""
    pandas = pytest.importorskip("pandas")
    from jupyter_chat_ext.values import pack

    frame = pandas.DataFrame({"run": ["b", "c", "a"], "loss": [0.25, 0.125, 0.5]})
    return pack(frame)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    home = tmp_path_factory.mktemp("share")
    write_notebook(home / "alice.ipynb", CELLS)
    write_notebook(home / "bob.ipynb", CELLS)
    server = JupyterServer(home).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people(browser: Any, lab: JupyterServer) -> Iterator[tuple[NotebookPage, NotebookPage]]:
    opened = []
    for url, name, color in (
        (f"{lab.url}lab/tree/alice.ipynb?token={lab.token}", "Alice", "#7b1fa2"),  # JupyterLab 4
        (f"{lab.url}notebooks/bob.ipynb?token={lab.token}", "Bob", "#00796b"),  # Notebook 7
    ):
        context, person = open_notebook(browser, url)
        person.set_identity(name, color)
        person.run_cell(0)
        person.wait_connected()
        opened.append((context, person))
    yield opened[0][1], opened[1][1]
    for context, _ in opened:
        context.close()


@pytest.fixture(autouse=True)
def nothing_ran(people: tuple[NotebookPage, NotebookPage]) -> Iterator[None]:
    """After every test: no payload ran in either page, nor in any frame of it."""
    yield
    for person in people:
        for frame in person.page.frames:
            try:
                ran = frame.evaluate(f"() => {PWNED} !== undefined")
            except Exception:  # a sandboxed frame without scripts cannot even be asked
                continue
            assert ran is False, f"a payload ran in {frame.url}"


def share(person: NotebookPage, name: str, mime: str, data: bytes, kind: str, **extra: Any) -> int:
    answer = person.page.evaluate(
        SHARE,
        [
            ROOM,
            name,
            mime,
            base64.b64encode(data).decode(),
            kind,
            extra.get("preview"),
            extra.get("caption", ""),
        ],
    )
    assert "seq" in answer, answer
    return int(answer["seq"])


def attachment(person: NotebookPage, seq: int) -> Locator:
    return person.widget.locator(f'li.jce-msg[data-seq="{seq}"] .jce-attachment')


def test_math_and_code_render_for_the_other_person(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, _ = people
    alice.composer.fill(
        "the loss is $L = \\frac{1}{n}\\sum_i (y_i - \\hat y_i)^2$, and `$HOME` stays code:\n"
        "```python\nimport numpy as np\nloss = np.mean((y - y_hat) ** 2)\n```"
    )
    alice.composer.press("Enter")
    for person in people:
        body = person.bodies().filter(has_text="the loss is")
        expect(body.locator(".katex")).to_have_count(1, timeout=WAIT_MS)
        expect(body.locator(".katex .mfrac")).to_have_count(1)
        expect(body.locator("p code")).to_have_text("$HOME")
        keyword = body.locator("pre code.hljs .hljs-keyword").first
        expect(keyword).to_have_text("import")
        colour = keyword.evaluate("n => getComputedStyle(n).color")
        plain = body.locator("pre code").evaluate("n => getComputedStyle(n).color")
        assert colour != plain, "the keyword is not coloured"
        expect(body.locator(".jce-copy")).to_have_count(1)


def test_katex_href_to_javascript_runs_nothing(people: tuple[NotebookPage, NotebookPage]) -> None:
    alice, bob = people
    alice.say(
        f"click $\\href{{javascript:{PWNED}=1}}{{here}}$ or $$\\url{{javascript:{PWNED}=2}}$$"
    )
    for person in people:
        body = person.bodies().filter(has_text="click")
        expect(body.locator(".katex").first).to_be_visible(timeout=WAIT_MS)
        expect(body.locator("a")).to_have_count(0)
        for node in body.locator(".katex").all():
            node.click()
    expect(bob.widget.locator('[href^="javascript" i]')).to_have_count(0)


def test_a_figure_shows_as_an_image_and_enlarges(people: tuple[NotebookPage, NotebookPage]) -> None:
    alice, bob = people
    seq = share(
        bob,
        "loss.png",
        "image/png",
        png(160, 90),
        "figure",
        preview={"width": 160, "height": 90},
        caption="loss curve",
    )
    for person in people:
        image = attachment(person, seq).locator("img.jce-att-image")
        expect(image).to_be_visible(timeout=WAIT_MS)
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        assert image.evaluate("n => n.complete && n.naturalWidth") == 160
    attachment(alice, seq).locator("img").click()
    overlay = alice.page.locator(".jce-overlay")
    expect(overlay.locator("img")).to_be_visible()
    alice.page.keyboard.press("Escape")
    expect(overlay).to_have_count(0)


def test_a_table_shows_as_a_table_whose_columns_sort(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    seq = share(alice, "runs", VALUE_MIME, table_bytes(), "table", caption="runs")
    table = attachment(bob, seq).locator("table")
    expect(table).to_be_visible(timeout=WAIT_MS)
    cells = table.locator("tbody tr td:nth-child(3)")
    expect(cells).to_have_text(["0.25", "0.125", "0.5"])
    table.locator("thead th").nth(2).locator("button").click()
    expect(cells).to_have_text(["0.125", "0.25", "0.5"])
    table.locator("thead th").nth(1).locator("button").click()
    expect(table.locator("tbody tr td:nth-child(2)")).to_have_text(["a", "b", "c"])
    expect(attachment(bob, seq).locator(".jce-att-csv")).to_be_visible()


def test_an_image_pasted_in_the_composer_reaches_the_other_person(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    alice, bob = people
    assert alice.paste_image(png(48, 32), "pasted.png")
    item = bob.widget.locator("li.jce-msg").filter(has_text="pasted.png")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    item.scroll_into_view_if_needed()  # attachments are fetched once they are in view
    image = item.locator(".jce-attachment img.jce-att-image")
    expect(image).to_be_visible(timeout=WAIT_MS)
    assert image.evaluate("n => n.complete && n.naturalWidth") == 48
    expect(alice.widget.locator(".jce-uploads")).to_be_hidden()


def test_hostile_svg_html_and_onerror_attachments_run_nothing(
    people: tuple[NotebookPage, NotebookPage],
) -> None:
    _, bob = people
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40" onload="top.{PWNED}=1">'
        f'<script>top.{PWNED}=2</script><rect width="40" height="40" fill="red"/></svg>'
    ).encode()
    html = f"<p>report</p><script>parent.{PWNED}=3</script><img src=x onerror='parent.{PWNED}=4'>"
    bundle = json.dumps({"text/html": html, "text/plain": "report"}).encode()
    svg_seq = share(bob, "evil.svg", "image/svg+xml", svg, "figure")
    bundle_seq = share(bob, "report", BUNDLE_MIME, bundle, "bundle")
    for person in people:
        image = attachment(person, svg_seq).locator("img")
        expect(image).to_be_visible(timeout=WAIT_MS)
        assert image.evaluate("n => n.complete && n.naturalWidth") == 40
        # Not a blob: URL, which would be the page's origin if opened in a tab of its own
        # (the SVG's script would then run there, with the page's cookies).
        assert (image.get_attribute("src") or "").startswith("data:image/svg+xml;base64,")
        frame = attachment(person, bundle_seq).locator("iframe")
        expect(frame).to_have_attribute("sandbox", "")
        inner = frame.content_frame.locator("p")
        expect(inner).to_have_text("report", timeout=WAIT_MS)
        expect(person.widget.locator("svg script")).to_have_count(0)
        expect(person.widget.locator(".jce-attachment script")).to_have_count(0)


def test_readable_in_light_and_dark_themes(
    people: tuple[NotebookPage, NotebookPage], lab: JupyterServer
) -> None:
    alice, bob = people
    bob.screenshot("share-light-bob")
    alice.screenshot("share-light-alice")
    settings = lab.home / "config" / "lab" / "user-settings" / "@jupyterlab"
    theme = settings / "apputils-extension" / "themes.jupyterlab-settings"
    theme.parent.mkdir(parents=True, exist_ok=True)
    theme.write_text('{"theme": "JupyterLab Dark"}')
    alice.page.reload()
    alice.dismiss_dialogs()
    expect(alice.page.locator("body[data-jp-theme-light='false']")).to_have_count(
        1, timeout=WAIT_MS
    )
    alice.run_cell(0)
    alice.wait_connected()
    expect(alice.widget.locator(".jce-attachment img.jce-att-image").first).to_be_visible(
        timeout=WAIT_MS
    )
    expect(alice.widget.locator(".katex").first).to_be_visible()
    background = alice.widget.evaluate("n => getComputedStyle(n).backgroundColor")
    assert background != "rgb(255, 255, 255)", background
    alice.screenshot("share-dark-alice")
    assert (
        Path(__file__).parent.parent
        / "test-artifacts"
        / "screenshots"
        / "share-dark-alice-widget.png"
    ).stat().st_size > 0
