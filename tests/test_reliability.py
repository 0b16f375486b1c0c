"""Nothing lost, nothing let in: exact invariants under cut connections, crashes,
slow and dead readers, and fuzzed input, against real server processes.

Each test records its figures with ``record``; `python benchmarks/reliability.py` runs
this module and writes them to docs/reliability.md. Larger runs are opt-in:
``CHAT_RELIABILITY_SCALE=10 pytest tests/test_reliability.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_chat_ext import ChatClient, ChatError
from jupyter_chat_ext.protocol import ErrorCode

from helpers import Collector, JupyterServer, StuckClient, TcpProxy, rss_bytes
from strategies import RAW_FRAMES

SCALE = max(1, int(os.environ.get("CHAT_RELIABILITY_SCALE", "1")))
FAST = ("--ChatExtensionApp.message_rate_limit=1000000", "--ChatExtensionApp.message_burst=100000")

Record = Callable[[str, str, Any], None]


@pytest.fixture(scope="module")
def figures() -> Iterator[list[dict[str, Any]]]:
    """Figures of this module's tests; written where CHAT_RELIABILITY_REPORT says."""
    collected: list[dict[str, Any]] = []
    yield collected
    target = os.environ.get("CHAT_RELIABILITY_REPORT")
    if target:
        path = Path(target)
        existing = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(existing + collected, indent=1))


@pytest.fixture
def record(figures: list[dict[str, Any]], request: pytest.FixtureRequest) -> Record:
    """Record a figure, with the test that measured it."""

    def add(scenario: str, figure: str, value: Any) -> None:
        figures.append(
            {
                "scenario": scenario,
                "figure": figure,
                "value": value,
                "test": request.node.originalname,  # -k selects every variant of it
            }
        )

    return add


def make_server(tmp_path: Path, *args: str) -> JupyterServer:
    return JupyterServer(tmp_path / "server", base_url="/user/alice/", args=args).start()


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
        seen = [Collector() for _ in clients]
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
            assert [m["seq"] for m in callback.items] == expected  # nothing twice
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


@pytest.mark.parametrize("fsync", [False, True], ids=["default", "history_fsync"])
def test_every_acknowledged_message_survives_kill_9(
    tmp_path: Path, record: Record, fsync: bool
) -> None:
    """A crash of the process loses no acknowledged message, with either history setting."""
    server = make_server(tmp_path, *FAST, f"--ChatExtensionApp.history_fsync={fsync}")
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
        for client in clients:  # a send that timed out may still be on its way: stop them
            client.close()
        with ChatClient(url=server.url, token=server.token) as checker:
            room = checker.join("durable")
            last = room.seq
            while room.load_earlier(limit=100):
                pass
            history = room.messages  # (a late one of theirs may have arrived meanwhile)
            seqs = [m["seq"] for m in history]
            assert seqs == list(range(1, seqs[-1] + 1)) and seqs[-1] >= last  # no gap, no reuse
            by_seq = {m["seq"]: m for m in history}
            for message in acked:
                assert by_seq[message["seq"]]["id"] == message["id"]
                assert by_seq[message["seq"]]["body"] == message["body"]
            assert len({(m["user"]["username"], m["id"]) for m in history}) == len(history)
            after = room.send("after the crash")["seq"]
            assert after == room.messages[-2]["seq"] + 1  # the next seq, none skipped
        if not fsync:  # the figures of the default setting
            record("crash", "messages acknowledged before kill -9", len(acked_before_kill))
            record("crash", "acknowledged messages missing after restart", 0)
            record("crash", "seq reused or skipped after restart", "no")
    finally:
        running.clear()
        for client in clients:
            client.close()
        server.stop()


def flood(room: Any, count: int, size: int) -> None:
    """Send ``count`` messages of about ``size`` bytes, each stamped with its send time."""
    for _ in range(count):
        stamp = f"{time.time():.6f}"
        room.send(stamp + " " + "x" * (size - len(stamp) - 1), timeout=60)


def latencies(seen: Collector, count: int) -> tuple[float, float]:
    """Median and p99 from send (stamped in the body) to arrival at the reader, in ms."""
    pairs = zip(seen.items[-count:], seen.arrivals[-count:], strict=True)
    delays = [arrived - float(m["body"].split(" ", 1)[0]) for m, arrived in pairs]
    ordered = sorted(delays)
    return statistics.median(delays) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


def test_a_stuck_reader_is_closed_and_nobody_waits_for_it(tmp_path: Path, record: Record) -> None:
    bound = 256 * 1024
    count, size = 600 * SCALE, 15_000
    server = make_server(tmp_path, *FAST, f"--ChatExtensionApp.max_send_queue={bound}")
    assert server.proc is not None
    try:
        with (
            ChatClient(url=server.url, token=server.token) as writer,
            ChatClient(url=server.url, token=server.token) as reader,
        ):
            source, watched = writer.join("flood"), reader.join("flood")
            seen = Collector()
            watched.on_message(seen)
            flood(source, count, size)  # baseline: nobody is stuck
            seen.wait_until(lambda m: len(m) >= count, 60)
            baseline = latencies(seen, count)

            stuck = StuckClient(server)
            stuck.join("flood")
            gone = threading.Event()
            watched.on_presence(
                lambda e: e.get("left", {}).get("username") == stuck.user["username"] and gone.set()
            )
            rss_before = rss_bytes(server.proc.pid)
            flood(source, count, size)
            seen.wait_until(lambda m: len(m) >= 2 * count, 60)  # the others got everything
            assert gone.wait(30), "the stuck reader was never disconnected"
            assert stuck.close_code() == 4008
            rss_after = rss_bytes(server.proc.pid)
            stuck.close()
            with_stuck = latencies(seen, count)
        assert [m["seq"] for m in seen.items] == list(range(1, 2 * count + 1))
        log = server.log_path.read_text()
        assert "unread (limit 262144)" in log
        mb = count * size / 1e6
        record("slow reader", "data sent while one reader was stuck", f"{mb:.0f} MB")
        record("slow reader", "send-queue bound (max_send_queue)", f"{bound // 1024} KiB")
        record("slow reader", "stuck reader closed with code", 4008)
        record(
            "slow reader",
            "server RSS before / after the flood",
            f"{rss_before / 1e6:.0f} MB / {rss_after / 1e6:.0f} MB "
            "(includes the room's 1,000-message cache)",
        )
        record(
            "slow reader",
            "other reader's latency p50 / p99, nobody stuck",
            f"{baseline[0]:.1f} / {baseline[1]:.1f} ms",
        )
        record(
            "slow reader",
            "other reader's latency p50 / p99, one reader stuck",
            f"{with_stuck[0]:.1f} / {with_stuck[1]:.1f} ms",
        )
        record("slow reader", "messages lost by the other reader", 0)
    finally:
        server.stop()


def test_a_silent_peer_leaves_presence_after_the_heartbeat_timeout(
    tmp_path: Path, record: Record
) -> None:
    server = make_server(
        tmp_path,
        "--ChatExtensionApp.heartbeat_interval=0.2",
        "--ChatExtensionApp.heartbeat_timeout=1.0",
    )
    try:
        with ChatClient(url=server.url, token=server.token) as reader:
            room = reader.join("pulse")
            silent = StuckClient(server)
            arrived = threading.Event()
            left = threading.Event()

            def presence(event: dict[str, Any]) -> None:
                username = silent.user["username"]
                if event.get("joined", {}).get("username") == username:
                    arrived.set()
                if event.get("left", {}).get("username") == username:
                    left.set()

            room.on_presence(presence)
            silent.join("pulse")
            assert arrived.wait(10)
            started = time.monotonic()
            assert left.wait(15), "a peer that never answers pings stayed present"
            elapsed = time.monotonic() - started
            assert reader.connected  # the live client answers pings and stays
            silent.close()
        record("dead peers", "silent peer's presence ended after", f"{elapsed:.1f} s")
        record("dead peers", "with heartbeat interval / timeout", "0.2 s / 1.0 s")
    finally:
        server.stop()


BATCH = 100
FUZZ_FRAMES = 10_000 * SCALE
KNOWN_CODES = set(ErrorCode.__args__)  # type: ignore[attr-defined]


def test_fuzzed_frames_over_a_real_socket_get_errors_never_crashes(
    tmp_path: Path, record: Record
) -> None:
    server = make_server(tmp_path)
    sent = errors = 0
    codes: set[str] = set()
    try:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}{server.base_url}chat-ext/ws",
            header=[f"Authorization: token {server.token}"],
            timeout=30,
        )
        assert json.loads(ws.recv())["op"] == "hello"

        @settings(
            max_examples=FUZZ_FRAMES // BATCH,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(st.lists(RAW_FRAMES, min_size=BATCH, max_size=BATCH))
        def fuzz(frames: list[str | bytes]) -> None:
            nonlocal sent, errors
            ws.send(json.dumps({"op": "join", "room": "fuzz", "id": "j"}))
            for frame in frames:
                if isinstance(frame, bytes):
                    ws.send_binary(frame)
                else:
                    ws.send(frame)
                sent += 1
            probe = f"probe-{sent}"
            ws.send(json.dumps({"op": "history", "room": "fuzz", "id": probe, "before": 1}))
            while True:  # everything before the probe's answer was answered too
                reply = json.loads(ws.recv())
                if reply["op"] == "error":
                    errors += 1
                    codes.add(reply["code"])
                    assert reply["code"] in KNOWN_CODES, reply
                    assert reply["message"]
                if reply.get("id") == probe:
                    break

        fuzz()
        ws.close()
        assert sent >= FUZZ_FRAMES
        log = server.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        record("bad input", "fuzzed frames over a real socket (hypothesis)", sent)
        record("bad input", "answered with an error frame", errors)
        record("bad input", "distinct error codes seen", ", ".join(sorted(codes)))
        record("bad input", "tracebacks in the server log / dropped connections", "0 / 0")
    finally:
        server.stop()
