"""Nothing lost, nothing let in: exact invariants under cut connections, crashes,
slow and dead readers, and fuzzed input, against real server processes.

Each test records its figures with ``record``; `python benchmarks/reliability.py` runs
this module and writes them to docs/reliability.md. Larger runs are opt-in:
``CHAT_RELIABILITY_SCALE=10 pytest tests/test_reliability.py``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError

from helpers import JupyterServer, TcpProxy

SCALE = max(1, int(os.environ.get("CHAT_RELIABILITY_SCALE", "1")))
FAST = ("--ChatExtensionApp.message_rate_limit=1000000", "--ChatExtensionApp.message_burst=100000")

Record = Callable[[str, str, Any], None]


@pytest.fixture(scope="module")
def record() -> Iterator[Record]:
    """Collect figures; written where CHAT_RELIABILITY_REPORT says (by the script)."""
    figures: list[dict[str, Any]] = []

    def add(scenario: str, figure: str, value: Any) -> None:
        figures.append({"scenario": scenario, "figure": figure, "value": value})

    yield add
    target = os.environ.get("CHAT_RELIABILITY_REPORT")
    if target:
        path = Path(target)
        existing = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(existing + figures, indent=1))


def make_server(tmp_path: Path, *args: str) -> JupyterServer:
    return JupyterServer(tmp_path / "server", base_url="/user/alice/", args=args).start()


class Seen:
    """Messages a client's callback received, with a way to wait for a count."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, message: dict[str, Any]) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def wait_until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.messages), timeout), len(self.messages)


def test_recovery_under_connection_cuts(tmp_path: Path, record: Record) -> None:
    total = 5000 * SCALE
    server = make_server(tmp_path, *FAST)
    proxy = TcpProxy(server.port).start()
    url = f"http://127.0.0.1:{proxy.port}{server.base_url}"
    clients = [ChatClient(url=url, token=server.token, timeout=60) for _ in range(3)]
    stop_cutting = threading.Event()
    cuts = 0

    def cutter() -> None:
        nonlocal cuts
        while not stop_cutting.wait(0.3):  # a cut every 300 ms, the scenario's clock
            cuts += proxy.cut()

    try:
        rooms = [client.join("storm") for client in clients]
        seen = [Seen() for _ in clients]
        for room, callback in zip(rooms, seen, strict=True):
            room.on_message(callback)
        thread = threading.Thread(target=cutter, daemon=True)
        started = time.monotonic()
        thread.start()

        def send_all(index: int) -> list[dict[str, Any]]:
            share = range(index, total, len(clients))
            return [rooms[index].send(f"c{index}-{i}", timeout=60) for i in share]

        with ThreadPoolExecutor(len(clients)) as pool:
            acks = [ack for acks in pool.map(send_all, range(len(clients))) for ack in acks]
        for callback in seen:
            callback.wait_until(lambda messages: len(messages) >= total, timeout=120)
        stop_cutting.set()
        thread.join()
        elapsed = time.monotonic() - started

        expected = list(range(1, total + 1))
        for room, callback in zip(rooms, seen, strict=True):
            assert [m["seq"] for m in room.messages] == expected
            assert [m["seq"] for m in callback.messages] == expected  # nothing twice
        bodies = [[m["body"] for m in room.messages] for room in rooms]
        assert bodies[0] == bodies[1] == bodies[2]
        assert sorted(bodies[0]) == sorted(f"c{i % 3}-{i}" for i in range(total))
        assert sorted(a["seq"] for a in acks) == expected  # every send acked once
        assert cuts >= 3
        record("recovery", "messages exchanged by 3 clients", total)
        record("recovery", "connection cuts (every 300 ms)", cuts)
        record("recovery", "connections made through the proxy", proxy.connections)
        record("recovery", "messages lost / duplicated / out of order", "0 / 0 / 0")
        record("recovery", "run time", f"{elapsed:.1f} s")
    finally:
        stop_cutting.set()
        for client in clients:
            client.close()
        proxy.stop()
        server.stop()


def test_resume_that_cannot_be_served_whole_reloads(tmp_path: Path, record: Record) -> None:
    server = make_server(tmp_path, "--ChatExtensionApp.max_replay=10")
    proxy = TcpProxy(server.port).start()
    url = f"http://127.0.0.1:{proxy.port}{server.base_url}"
    try:
        with (
            ChatClient(url=url, token=server.token) as reader,
            ChatClient(url=server.url, token=server.token) as writer,
        ):
            room, source = reader.join("gap"), writer.join("gap")
            source.send("first")
            reloaded = threading.Event()
            room.on_message(lambda m: m["body"] == "last of the gap" and reloaded.set())
            proxy.refuse()
            proxy.cut()
            for i in range(30):  # more than max_replay: the gap cannot be replayed whole
                source.send(f"gap {i}")
            source.send("last of the gap")
            proxy.refuse(False)
            assert reloaded.wait(30)
            seqs = [m["seq"] for m in room.messages]
            assert seqs == list(range(seqs[0], 33)), seqs  # fresh and contiguous
            assert room.messages == source.messages[-len(seqs) :]
        record("recovery", "resume past max_replay", "recovered=false, history reloaded whole")
    finally:
        proxy.stop()
        server.stop()


def test_a_new_epoch_makes_clients_reload(tmp_path: Path, record: Record) -> None:
    server = make_server(tmp_path)
    try:
        with ChatClient(url=server.url, token=server.token) as client:
            room = client.join("reset")
            room.send("from the old log")
            old_epoch = room.epoch
            server.stop()
            server.db_path.unlink()  # the history is lost: a new log, a new epoch
            server.start()
            arrived = threading.Event()
            room.on_message(lambda m: m["body"] == "from the new log" and arrived.set())
            with ChatClient(url=server.url, token=server.token) as other:
                other.join("reset").send("from the new log")
            assert arrived.wait(30)
            assert room.epoch != old_epoch
            assert [m["body"] for m in room.messages] == ["from the new log"]
        record("recovery", "history lost (new epoch)", "recovered=false, client reloads")
    finally:
        server.stop()


def test_every_acknowledged_message_survives_kill_9(tmp_path: Path, record: Record) -> None:
    server = make_server(tmp_path, *FAST)
    clients = [ChatClient(url=server.url, token=server.token, timeout=60) for _ in range(3)]
    acked: list[dict[str, Any]] = []
    lock = threading.Condition()
    running = threading.Event()
    running.set()

    def sender(index: int) -> None:
        room = clients[index].join("durable")
        i = 0
        while running.is_set():
            try:
                message = room.send(f"c{index}-{i}", timeout=2)
            except ChatError:
                continue  # the server is down: the send stays queued and is retried
            with lock:
                acked.append(message)
                lock.notify_all()
            i += 1

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(sender, i) for i in range(3)]
            with lock:
                assert lock.wait_for(lambda: len(acked) >= 600 * SCALE, 60)
            server.stop(kill=True)
            with lock:
                acked_before_kill = list(acked)
            server.start()  # same port: the clients reconnect and resend what was pending
            with lock:
                assert lock.wait_for(lambda: len(acked) >= len(acked_before_kill) + 30, 60)
            running.clear()
            for future in futures:
                future.result(60)
        with ChatClient(url=server.url, token=server.token) as checker:
            room = checker.join("durable")
            last = room.seq
            while room.load_earlier(limit=100):
                pass
            history = room.messages
            assert [m["seq"] for m in history] == list(range(1, last + 1))  # no gap, no reuse
            by_seq = {m["seq"]: m for m in history}
            for message in acked:
                assert by_seq[message["seq"]]["id"] == message["id"]
                assert by_seq[message["seq"]]["body"] == message["body"]
            assert len({(m["user"]["username"], m["id"]) for m in history}) == len(history)
            assert room.send("after the crash")["seq"] == last + 1
        record("crash", "messages acknowledged before kill -9", len(acked_before_kill))
        record("crash", "acknowledged messages missing after restart", 0)
        record("crash", "seq reused or skipped after restart", "no")
    finally:
        running.clear()
        for client in clients:
            client.close()
        server.stop()
