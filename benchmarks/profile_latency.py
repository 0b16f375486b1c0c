"""Where a chat message's time goes between `send` and its copies, step by step.

Usage: python benchmarks/profile_latency.py [--rate 400] [--seconds 10] [--compare REV] [--write]

Starts `jupyter server` with the extension and a config file that wraps a few of its
functions to stamp each message (the time the frame was handed to the session, the
post began, the append was queued, the batch was committed, its copies were queued
and then written to the sockets), drives it with the fan-out
load generator (100 clients, 10 senders, ``rate`` msgs/s) and prints the median and
99th percentile of each step; with ``--write``, into docs/performance.md ("latency").
``--compare REV`` measures the extension of git revision REV first (before/after).
The stamps cost a few microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from fanout import CHAT_OPTIONS, NODE_DIR, install, raise_fd_limit  # noqa: E402
from report import machine, write_section  # noqa: E402

from helpers import JupyterServer  # noqa: E402

# Run by the server at start (its jupyter_server_config.py): wrap, stamp, dump at exit.
STAMPS = r"""
import atexit, json, time
from jupyter_chat_ext import handlers, history, rooms, session

_out = __OUT__
_marks = {}
_flushes = []


def _mark(key, name):
    _marks.setdefault(key, {})[name] = time.time()


_receive = session.Session.receive


def receive(self, data, binary=False):
    if not binary and data[:13] in ('{"op":"send",', b'{"op":"send",'):
        text = data if isinstance(data, str) else data.decode()
        frame = json.loads(text)
        _mark(frame["id"], "received")
        _marks[frame["id"]]["sent"] = float(frame["body"].split("|")[0]) / 1000
    return _receive(self, data, binary)


session.Session.receive = receive
_post = rooms.Room.post


async def post(self, member, message_id, body, *args, **kwargs):
    _mark(message_id, "posted")
    return await _post(self, member, message_id, body, *args, **kwargs)


rooms.Room.post = post
_deliver = rooms.Room.deliver


def deliver(self, entry, *args, **kwargs):
    _deliver(self, entry, *args, **kwargs)
    _marks.setdefault(entry.id, {}).setdefault("broadcast", time.time())  # the first time


rooms.Room.deliver = deliver
_queue = history.SQLiteHistory._queue


async def queue(self, entry, max_reactions):
    _mark(entry.id, "queued")
    return await _queue(self, entry, max_reactions)


history.SQLiteHistory._queue = queue
_write = history.SQLiteHistory._write_batch_sync


def write(self, batch, *args, **kwargs):
    started = time.time()
    try:
        return _write(self, batch, *args, **kwargs)
    finally:
        done = time.time()
        for entry, _ in batch:
            _marks.setdefault(entry.id, {}).update(writing=started, committed=done)


history.SQLiteHistory._write_batch_sync = write
_flush_all = handlers._flush_all


def flush_all(loop):
    started = time.time()
    _flush_all(loop)
    _flushes.append((started, time.time()))


handlers._flush_all = flush_all


@atexit.register
def _dump():
    with open(_out, "w") as f:
        json.dump({"marks": _marks, "flushes": _flushes, "module": history.__file__}, f)
"""

FINDINGS = """Reading it (revision f299bc3 is the store before issue 17's work; the two servers run
one after the other, so the machine's other load can differ between them: the steps
outside the store, the first two and the flush, show how much):

- **The store's thread, the GIL and fsync.** f299bc3 wrote each batch on the store's
  thread: a dozen statements (BEGIN, the retry lookup, the INSERT, the mentions, the
  full-text index's key lookup and two inserts, the rooms' seq, COMMIT). The sqlite3
  module lets the GIL go around each statement's steps, and to take it back the thread
  waits until the busy event loop drops it (up to the 5 ms switch interval); the COMMIT
  (`synchronous=FULL`) synced the WAL, on this disk 2.6 ms at the median and 19 ms at
  the 99th percentile for a 4 KiB write. Those are the "waiting for the batch" and
  "statements and COMMIT" rows. Now the batch is written on the loop's own thread at the
  end of the turn its sends arrived in, with `synchronous=NORMAL` (a commit is a write to
  the WAL: a crash of the process loses nothing acknowledged, a power loss about the
  last second's, docs/reliability.md; `history_fsync` brings the sync back, on the
  thread). The store's thread keeps reads, imports, index merges and WAL truncations,
  and takes a batch in turn only while it has one of those under way.
- **Loop turns after the commit.** f299bc3's writer task resumed (a turn), answered each
  append, each post resumed and broadcast (a turn). Now the store hands each stored
  entry to its room before answering: the copies are queued in the commit's own turn
  ("until the copies are queued").
- **The full-text index** is about half of a one-message batch (0.19 of 0.35 ms with the
  store alone on a loaded machine). Moving it to a later transaction would save that on
  the loop, but that transaction would hold the connection: on the loop it costs the
  same time a moment later, on the thread it brings the GIL hand-offs back for any batch
  arriving meanwhile; so it stays in the acknowledged transaction.
- **Switch interval.** `sys.setswitchinterval` would shorten each hand-off; with the
  writes on the loop none is left in steady state, so it is not set.

What is left is the event loop's own work, now most of the time: the frame's turn, the
post task's first step a turn later (session.py spawns a task per send), and the flush,
one `send()` per connection: 100 per message here, 1.2 ms. The batch now costs the loop
about 0.5 ms (it used to run beside it, on the other core). The tails follow the
machine's load: these runs shared the 2 cores with other work."""

STEPS = [
    ("sent", "received", "the frame reaches the session (network, the loop's turn)"),
    ("received", "posted", "the post task starts (one loop turn)"),
    ("posted", "queued", "checks, the entry made and queued for the store"),
    ("queued", "writing", "waiting for the batch to be written"),
    ("writing", "committed", "the batch's statements and COMMIT"),
    ("committed", "broadcast", "until the copies are queued, one per connection"),
    ("broadcast", "flushing", "waiting for the flush of the loop turn"),
    ("flushing", "flushed", "the flush: one write per connection"),
    ("sent", "flushed", "in all: send to the last copy written"),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def analyse(dump: dict[str, Any], skip: float) -> tuple[list[tuple[str, float, float]], int]:
    """(step, p50 ms, p99 ms) for each step; the messages counted."""
    import bisect

    flushes = dump["flushes"]
    starts = [start for start, _ in flushes]
    rows = []
    for marks in dump["marks"].values():
        if "sent" not in marks or "broadcast" not in marks:
            continue
        index = bisect.bisect_left(starts, marks["broadcast"])
        if index < len(flushes):
            marks["flushing"], marks["flushed"] = flushes[index]
            rows.append(marks)
    rows.sort(key=lambda m: m["sent"])
    rows = rows[int(len(rows) * skip) :]  # the first ones: connections still warming up
    table = []
    for start, end, label in STEPS:
        spans = [(m[end] - m[start]) * 1e3 for m in rows if start in m and end in m]
        table.append((label, pct(spans, 0.5), pct(spans, 0.99)))
    return table, len(rows)


def profile(rate: float, seconds: float, source: str = "") -> tuple[dict[str, Any], Any, int]:
    """One stamped run: the generator's result, the step table, the messages counted."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        out = home / "stamps.json"
        (home / "config").mkdir()
        code = STAMPS.replace("__OUT__", repr(str(out)))
        (home / "config" / "jupyter_server_config.py").write_text(code)
        env = dict(os.environ, PYTHONSAFEPATH="1")  # not the package in the current folder
        if source:
            env["PYTHONPATH"] = source
        server = JupyterServer(home, args=CHAT_OPTIONS, environ=env).start()
        try:
            cfg = {
                "kind": "chat",
                "token": server.token,
                "room": "latency",
                "clients": 100,
                "senders": 10,
                "rate": rate,
                "duration": seconds,
                "expected": int(rate * seconds * 100),
                "url": f"ws://127.0.0.1:{server.port}/chat-ext/ws",
            }
            run = json.loads(
                subprocess.run(
                    ["node", str(NODE_DIR / "loadgen.mjs"), json.dumps(cfg)],
                    capture_output=True,
                    check=True,
                    preexec_fn=raise_fd_limit,
                ).stdout.splitlines()[-1]
            )
        finally:
            server.stop()
        dump = json.loads(out.read_text())
        print(f"ran {dump['module']}", file=sys.stderr)
        table, counted = analyse(dump, skip=0.1)
    return run, table, counted


def export(ref: str, into: Path) -> str:
    """The jupyter_chat_ext of git revision ``ref``, in ``into``; the path to import it from."""
    archive = subprocess.run(
        ["git", "archive", ref, "jupyter_chat_ext"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--compare", default="", help="a git revision to measure as well")
    parser.add_argument("--write", action="store_true", help="write docs/performance.md")
    args = parser.parse_args()
    install()
    raise_fd_limit()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            runs.append(
                (args.compare, *profile(args.rate, args.seconds, export(args.compare, Path(tmp))))
            )
        runs.append(("this code", *profile(args.rate, args.seconds)))
    head = "| step |" + "".join(f" {name}: p50 / p99 |" for name, *_ in runs)
    lines = [head, "|---|" + "---|" * len(runs)]
    for index, (label, _, _) in enumerate(runs[0][2]):
        cells = "".join(f" {t[index][1]:.2f} / {t[index][2]:.2f} ms |" for _, _, t, _ in runs)
        lines.append(f"| {label} |{cells}")
    seen = "; ".join(
        f"{name}: p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, {run['lost']} lost "
        f"({counted} messages stamped)"
        for name, run, _, counted in runs
    )
    command = (
        f"python benchmarks/profile_latency.py --rate {args.rate:g} --seconds {args.seconds:g}"
    )
    command += f" --compare {args.compare}" if args.compare else ""
    report = (
        f"""## Where a chat message's time goes

Measured by `{command}` on {machine()}: 100 clients in one room, 10 senders,
{args.rate:g} msgs/s; the server's functions stamp each message (the first tenth of the
messages left out). From send to receipt, as the generator saw it: {seen}.

"""
        + "\n".join(lines)
        + "\n\n"
        + FINDINGS
    )
    if args.write:
        write_section("latency", report)
    print(report)


if __name__ == "__main__":
    main()
