"""The chat widget in a real browser: a long history and a busy room (#17, item 4).

Usage: python benchmarks/widget_browser.py [--quick] [--seconds 60] [--no-write]

A `jupyter server` process with the extension serves JupyterLab; Debian's chromium
(/usr/bin/chromium, driven by Playwright, never a downloaded browser) opens a notebook
whose first cell shows a Chat widget.

(A) A room of 10,000 messages: the time from opening it (Enter in the join box) to the
first paint of its newest message on screen (median of 3 openings; the first is the
server's cold load of the room), the page's JS heap after a garbage collection, then
scrolling back through the whole history (the list loads earlier pages as its top comes
into view): per page the time until older messages show, the long tasks (over 50 ms, as
a PerformanceObserver "longtask" sees them), the message items in the DOM and the heap.

(B) A room receiving 100 chat messages/s and 200 live values/s (20 topics) for 60 s,
sent by raw protocol clients in a separate process: long tasks over 50 ms and frames
dropped (gaps between requestAnimationFrame callbacks beyond one 60 Hz frame).

`--quick`: 2,000 messages, 10 pages scrolled back, 10 s of load (a smoke run; it does
not write docs/performance.md). Writes its section "widget-browser" of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402

from helpers import CHROMIUM, CHROMIUM_FLAGS, JupyterServer, RawClient  # noqa: E402

SERVER_ARGS = (
    "--ChatExtensionApp.message_rate_limit=1e9",
    "--ChatExtensionApp.message_burst=1000000000",
    "--ChatExtensionApp.data_rate_limit=1e9",
    "--ChatExtensionApp.data_burst=1000000000",
)
CELL = 'from jupyter_chat_ext import Chat\nchat = Chat("lobby")\nchat'
WAIT_S = 60
FRAME_MS = 1000 / 60
TOPICS = 20

# Installed before the page's own scripts: long tasks and frames, kept on window.__bench.
INSTRUMENT = """
window.__bench = {longtasks: [], frames: [], recording: false};
new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__bench.longtasks.push([entry.startTime, entry.duration]);
}).observe({type: "longtask", buffered: true});
window.__benchFrames = () => {
    const bench = window.__bench;
    bench.frames = [];
    bench.recording = true;
    const tick = (t) => {
        bench.frames.push(t);
        if (bench.recording) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
};
"""

# Open `room` from the join box; resolves with the ms until its message `seq` was drawn
# on screen and a frame painted after it.
OPEN_ROOM = """async ([room, seq]) => {
    const root = document.querySelector(".jce-root");
    const input = root.querySelector(".jce-join");
    const scroller = root.querySelector(".jce-scroller");
    const visible = () => {
        const node = root.querySelector(`ol.jce-messages li[data-seq="${seq}"]`);
        if (!node) return false;
        const box = node.getBoundingClientRect();
        const view = scroller.getBoundingClientRect();
        return box.bottom > view.top && box.top < view.bottom;
    };
    const start = performance.now();
    input.value = room;
    input.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true, cancelable: true}));
    await new Promise((resolve) => {
        const check = () => (visible() ? resolve() : setTimeout(check, 1));
        check();
    });
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    return performance.now() - start;
}"""

# Close the tab of `room` (the room is left: its next opening joins it afresh).
CLOSE_ROOM = """(room) => {
    document.querySelector(`.jce-tab[data-room="${room}"] .jce-tab-close`).click();
}"""

# Scroll the list to its top and wait until an older message shows at the top; returns
# [ms, first seq shown], or [ms, 0] when nothing older came within the timeout.
SCROLL_BACK = """async (timeout) => {
    const root = document.querySelector(".jce-root");
    const scroller = root.querySelector(".jce-scroller");
    const firstSeq = () => {
        const node = root.querySelector("ol.jce-messages:not(.jce-pending) > li.jce-msg");
        return node ? Number(node.dataset.seq) : 0;
    };
    const before = firstSeq();
    if (before <= 1) return [0, 0];  // the room's first message is drawn
    const start = performance.now();
    scroller.scrollTop = 0;
    scroller.dispatchEvent(new Event("scroll"));
    await new Promise((resolve) => {
        const check = () => {
            if (firstSeq() < before || performance.now() - start > timeout) resolve();
            else setTimeout(check, 1);
        };
        check();
    });
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    const first = firstSeq();
    return [performance.now() - start, first < before ? first : 0];
}"""

COUNT_ITEMS = """() => document.querySelectorAll(".jce-root ol.jce-messages:not(.jce-pending) > li.jce-msg").length"""


def body_of(i: int) -> str:
    """A chat message of ordinary length, with some Markdown as people write it."""
    return f"message {i}: the run with **lr=3e-4** converged after `{i % 97}` epochs, see cell {i % 13}"


async def _post(url: str, token: str, room: str, count: int) -> int:
    """Send ``count`` messages to ``room`` over one raw socket, pipelined; return the last seq."""
    request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
    client = await RawClient(await websocket_connect(request)).start()
    await client.join(room)
    last = 0
    acked = 0

    async def acknowledged() -> None:  # read while sending: a reader that stops is dropped
        nonlocal last, acked
        while acked < count:
            frame = await client.recv(60)
            assert frame["op"] != "error", frame
            if frame["op"] == "message" and str(frame.get("id", "")).startswith("post-"):
                acked += 1
                last = max(last, frame["seq"])

    reading = asyncio.ensure_future(acknowledged())
    for i in range(count):
        await client.send({"op": "send", "room": room, "id": f"post-{i}", "body": body_of(i)})
    await reading
    client.close()
    return last


def load_worker(
    url: str, token: str, room: str, rates: tuple[float, float], seconds: float, out: Any
) -> None:
    """Send chat messages and live values to ``room`` at ``rates`` for ``seconds``; report counts."""

    async def run() -> tuple[int, int]:
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        client = await RawClient(await websocket_connect(request)).start()
        await client.join(room)
        stop = False

        async def drain() -> None:  # a reader that stops is dropped by the server
            while not stop:
                try:
                    await asyncio.wait_for(client.conn.read_message(), 1)
                except asyncio.TimeoutError:
                    continue

        reading = asyncio.ensure_future(drain())
        message_rate, value_rate = rates
        sent = values = 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < elapsed * message_rate:
                frame = {"op": "send", "room": room, "id": f"busy-{sent}", "body": body_of(sent)}
                await client.send(frame)
                sent += 1
            while values < elapsed * value_rate:
                topic = f"metric-{values % TOPICS:02d}"
                value: Any = (
                    values * 0.001 if values % 4 else {"step": values, "loss": 1 / (1 + values)}
                )
                await client.send({"op": "data", "room": room, "topic": topic, "value": value})
                values += 1
            await asyncio.sleep(0.005)  # pacing the sender to the scenario's rates
        stop = True
        await reading
        client.close()
        return sent, values

    out.put(asyncio.run(run()))


def heap_bytes(cdp: Any) -> int:
    """The page's JS heap in use after a full garbage collection."""
    cdp.send("HeapProfiler.collectGarbage")
    return int(cdp.send("Runtime.getHeapUsage")["usedSize"])


def long_tasks(page: Any, since: float) -> list[float]:
    """Durations (ms) of the long tasks that started after ``since`` (the page's clock)."""
    tasks = page.evaluate("() => window.__bench.longtasks")
    return sorted(duration for start, duration in tasks if start >= since)


def dropped_frames(frames: list[float]) -> tuple[int, int, float]:
    """(frames drawn, frames dropped, longest gap in ms) from rAF timestamps."""
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    dropped = sum(max(0, round(gap / FRAME_MS) - 1) for gap in gaps)
    return len(frames), dropped, max(gaps, default=0.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def open_page(browser: Any, lab: JupyterServer) -> tuple[Any, Any]:
    """A notebook page whose Chat widget (room "lobby") is connected; (page, CDP session)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(INSTRUMENT)
    page = context.new_page()
    page.goto(f"{lab.url}lab/tree/bench.ipynb?token={lab.token}")
    cell = page.locator(".jp-Notebook .jp-Cell").first
    cell.wait_for(timeout=WAIT_S * 1000)
    state = page.locator(".jce-root .jce-state")
    for _ in range(10):  # retried while the kernel is still attaching
        for dialog in page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").all():
            dialog.click()
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            state.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:  # the kernel was still attaching: run the cell again
            continue
    page.wait_for_function(
        "() => document.querySelector('.jce-root .jce-state')?.dataset.state === 'connected'",
        timeout=WAIT_S * 1000,
    )
    return page, context.new_cdp_session(page)


def scenario_a(
    browser: Any, lab: JupyterServer, room: str, last: int, pages: int
) -> dict[str, Any]:
    """The long history (``room``, its last seq ``last``): open it, then scroll back ``pages`` pages."""
    page, cdp = open_page(browser, lab)
    heap_before = heap_bytes(cdp)
    opens = []
    for i in range(3):
        if i:
            page.evaluate(CLOSE_ROOM, room)
            page.wait_for_function(
                f"() => !document.querySelector('.jce-tab[data-room=\"{room}\"]')"
            )
        opens.append(page.evaluate(OPEN_ROOM, [room, last]))
    heap_open = heap_bytes(cdp)
    items_open = page.evaluate(COUNT_ITEMS)
    since = page.evaluate("() => performance.now()")
    page_ms: list[float] = []
    for _ in range(pages):
        ms, first = page.evaluate(SCROLL_BACK, 20_000)
        if not first:
            break
        page_ms.append(ms)
    tasks = long_tasks(page, since)
    result = {
        "count": last,
        "opens": opens,
        "heap_before": heap_before,
        "heap_open": heap_open,
        "items_open": items_open,
        "pages": len(page_ms),
        "page_ms": page_ms,
        "scroll_tasks": tasks,
        "items_scrolled": page.evaluate(COUNT_ITEMS),
        "heap_scrolled": heap_bytes(cdp),
    }
    page.context.close()
    return result


def scenario_b(
    browser: Any, lab: JupyterServer, ws_url: str, seconds: float, idle: float
) -> dict[str, Any]:
    """The busy room: 100 msgs/s and 200 values/s for ``seconds``, watched from a page.

    First the same page is watched ``idle`` seconds with no load: what the machine and
    JupyterLab cost on their own.
    """
    room = "busy"
    page, cdp = open_page(browser, lab)
    page.locator(".jce-root .jce-join").fill(room)
    page.locator(".jce-root .jce-join").press("Enter")
    page.wait_for_function(
        f"() => document.querySelector('.jce-tab[data-room=\"{room}\"]')?.getAttribute('aria-selected') === 'true'"
    )
    since = page.evaluate("() => { window.__benchFrames(); return performance.now(); }")
    page.wait_for_timeout(idle * 1000)  # the idle reference: nothing arrives meanwhile
    idle_frames = page.evaluate(
        "() => { window.__bench.recording = false; return window.__bench.frames; }"
    )
    idle_tasks = long_tasks(page, since)
    spawn = multiprocessing.get_context("spawn")  # not a fork of Playwright's loop
    out: Any = spawn.Queue()
    worker = spawn.Process(
        target=load_worker, args=(ws_url, lab.token, room, (100.0, 200.0), seconds, out)
    )
    since = page.evaluate("() => { window.__benchFrames(); return performance.now(); }")
    worker.start()
    sent, values = out.get(timeout=seconds + 120)
    worker.join(30)
    ended = time.monotonic()
    last = f"message {sent - 1}:"
    shown = "ol.jce-messages:not(.jce-pending) > li.jce-msg:last-child"
    try:  # how long the page takes to show the last message once the load ends
        page.wait_for_function(
            f"() => document.querySelector('.jce-root {shown}')?.textContent.includes('{last}')",
            timeout=2 * WAIT_S * 1000,
        )
        caught_up: float | None = time.monotonic() - ended
    except PlaywrightTimeout:
        caught_up = None
    frames = page.evaluate(
        "() => { window.__bench.recording = false; return window.__bench.frames; }"
    )
    tasks = long_tasks(page, since)
    result = {
        "seconds": seconds,
        "idle": idle,
        "idle_tasks": idle_tasks,
        "idle_frames": dropped_frames(idle_frames),
        "sent": sent,
        "values": values,
        "tasks": tasks,
        "frames": dropped_frames(frames),
        "caught_up": caught_up,
        "items": page.evaluate(COUNT_ITEMS),
        "heap": heap_bytes(cdp),
    }
    page.context.close()
    return result


def mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def tasks_text(tasks: list[float]) -> str:
    return f"{len(tasks)}" + (f" (longest {max(tasks):.0f} ms)" if tasks else "")


def report(a: dict[str, Any], b: dict[str, Any], command: str) -> str:
    """The section of docs/performance.md."""
    opens = a["opens"]
    drawn, dropped, gap = b["frames"]
    idle_drawn, idle_dropped, idle_gap = b["idle_frames"]
    page_ms = a["page_ms"] or [0.0]
    late = b["caught_up"]
    caught_up = f"{late:.1f} s later" if late is not None else f"not within {2 * WAIT_S} s"
    return f"""## The widget in a real browser (long history, busy room)

Measured by `{command}` on {machine()}, with Debian's chromium
(headless, no GPU) on a JupyterLab page; the server, JupyterLab's kernel, the browser and
the load generator share the 2 cores (other work may have loaded the machine). Long tasks
are those over 50 ms a PerformanceObserver reports (wall time: a task whose thread waits
for a core lasts longer); a frame is dropped for each 60 Hz frame a gap between
requestAnimationFrame callbacks skips.

| (A) a room of {a["count"]:,} messages | value |
|---|---|
| opening it to first paint of its newest message (first, cold / median of 3) | {opens[0]:.0f} / {statistics.median(opens):.0f} ms |
| message items in the DOM after opening | {a["items_open"]} |
| JS heap: before opening / after | {mb(a["heap_before"])} / {mb(a["heap_open"])} |
| scrolling back to the first message: steps, each until older messages show (p50 / max), in all | {a["pages"]}, {statistics.median(page_ms):.0f} / {max(page_ms):.0f} ms, {sum(page_ms) / 1000:.1f} s |
| long tasks while scrolling back | {tasks_text(a["scroll_tasks"])} |
| message items in the DOM / JS heap after scrolling back | {a["items_scrolled"]} / {mb(a["heap_scrolled"])} |

| (B) a room receiving 100 msgs/s and 200 values/s for {b["seconds"]:g} s | value |
|---|---|
| sent | {b["sent"]:,} messages, {b["values"]:,} values ({TOPICS} topics) |
| the last message shown, after the load ended | {caught_up} |
| long tasks over 50 ms (the same page idle for {b["idle"]:g} s before: {tasks_text(b["idle_tasks"])}) | {tasks_text(b["tasks"])} |
| frames drawn / dropped, longest gap (idle: {idle_drawn:,} / {idle_dropped:,}, {idle_gap:.0f} ms) | {drawn:,} / {dropped:,}, {gap:.0f} ms |
| message items in the DOM / JS heap at the end | {b["items"]} / {mb(b["heap"])} |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes no docs")
    parser.add_argument(
        "--seconds", type=float, default=60, help="how long the busy room is loaded"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print, do not write docs/performance.md"
    )
    args = parser.parse_args()
    count, pages, seconds = (2_000, 10, 10.0) if args.quick else (10_000, 2_000, args.seconds)
    idle = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": "c0",
                    "metadata": {},
                    "outputs": [],
                    "source": CELL,
                }
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (home / "bench.ipynb").write_text(json.dumps(nb))
        lab = JupyterServer(home, args=SERVER_ARGS).start()
        ws_url = lab.url.replace("http://", "ws://") + "chat-ext/ws"
        try:
            last = asyncio.run(_post(ws_url, lab.token, "long", count))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    a = scenario_a(browser, lab, "long", last, pages)
                    b = scenario_b(browser, lab, ws_url, seconds, idle)
                finally:
                    browser.close()
        finally:
            lab.stop()
    command = "python benchmarks/widget_browser.py" + (" --quick" if args.quick else "")
    if not args.quick and args.seconds != 60:
        command += f" --seconds {args.seconds:g}"
    body = report(a, b, command)
    print(body)
    print("page ms:", [round(ms) for ms in a["page_ms"]])
    print("scroll long tasks:", [round(ms) for ms in a["scroll_tasks"]])
    print("busy long tasks:", [round(ms) for ms in b["tasks"]])
    if not (args.quick or args.no_write):
        write_section("widget-browser", body)


if __name__ == "__main__":
    main()
