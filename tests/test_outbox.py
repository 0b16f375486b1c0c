"""ValueOutbox, the client's queue of live values: bounds, order and pacing, no socket."""

from __future__ import annotations

import concurrent.futures

from jupyter_chat_ext.client.outbox import RoomReadiness, ValueOutbox
from jupyter_chat_ext.limits import TokenBucket


class Wire:
    """A fake ``write``: records what was sent; its writes complete when told to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.pending: list[concurrent.futures.Future[None]] = []

    def __call__(self, data: bytes, binary: bool) -> concurrent.futures.Future[None]:
        self.sent.append(data)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.pending.append(future)
        return future

    def complete(self) -> None:
        for future in self.pending:
            future.set_result(None)
        self.pending = []


def joined(_: str) -> RoomReadiness:
    return "send"


def test_put_wakes_once_until_flushed() -> None:
    wakes: list[int] = []
    outbox = ValueOutbox(lambda: wakes.append(1))
    outbox.put("r", "t", b"1", False)
    outbox.put("r", "t", b"2", False)
    assert len(wakes) == 1
    wire = Wire()
    assert outbox.flush(wire, joined) == 0
    assert wire.sent == [b"1", b"2"] and len(outbox) == 0
    outbox.put("r", "t", b"3", False)
    assert len(wakes) == 2


def test_past_the_topic_bound_the_oldest_of_that_topic_is_dropped() -> None:
    outbox = ValueOutbox(lambda: None, per_topic=3)
    outbox.put("r", "other", b"o", False)
    for i in range(5):
        outbox.put("r", "t", str(i).encode(), False)
    assert outbox.queued("r", "t") == [b"2", b"3", b"4"]  # the newest kept
    assert outbox.queued("r", "other") == [b"o"]  # another topic untouched
    wire = Wire()
    outbox.flush(wire, joined)
    assert wire.sent == [b"o", b"2", b"3", b"4"]  # in publish order


def test_past_the_byte_bound_the_oldest_values_are_dropped() -> None:
    outbox = ValueOutbox(lambda: None, max_bytes=10)
    outbox.put("r", "a", b"x" * 6, False)
    outbox.put("r", "b", b"y" * 6, False)
    assert outbox.queued("r", "a") == [] and outbox.queued("r", "b") == [b"y" * 6]
    assert outbox.queued_bytes == 6
    outbox.put("r", "c", b"z" * 20, False)  # one value alone is never dropped
    assert outbox.queued("r", "c") == [b"z" * 20] and len(outbox) == 1


def test_pacing_follows_the_token_bucket() -> None:
    now = [0.0]
    outbox = ValueOutbox(lambda: None)
    outbox.bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    for i in range(5):
        outbox.put("r", "t", str(i).encode(), False)
    wire = Wire()
    wait = outbox.flush(wire, joined)
    assert wire.sent == [b"0", b"1"]  # the burst
    assert abs(wait - 0.1) < 1e-9  # then one per 1/rate
    now[0] += 0.1
    assert outbox.flush(wire, joined) > 0
    assert wire.sent == [b"0", b"1", b"2"]
    now[0] += 1.0
    assert outbox.flush(wire, joined) == 0
    assert wire.sent == [b"0", b"1", b"2", b"3", b"4"]


def test_writes_in_flight_are_bounded_and_resume_when_done() -> None:
    wakes: list[int] = []
    outbox = ValueOutbox(lambda: wakes.append(1), inflight_max=5)
    for i in range(4):
        outbox.put("r", "t", bytes([i]) * 3, False)
    wire = Wire()
    outbox.flush(wire, joined)
    assert len(wire.sent) == 2 and len(outbox) == 2  # 6 bytes in flight > 5: stop
    before = len(wakes)
    wire.complete()
    assert len(wakes) == before + 1  # asks to be flushed again
    outbox.flush(wire, joined)
    assert len(wire.sent) == 4 and len(outbox) == 0


def test_rooms_waiting_hold_values_and_left_rooms_drop_them() -> None:
    outbox = ValueOutbox(lambda: None)
    outbox.put("gone", "t", b"g", False)
    outbox.put("rejoining", "t", b"w", False)
    outbox.put("ok", "t", b"s", False)
    states: dict[str, RoomReadiness] = {"gone": "drop", "rejoining": "wait", "ok": "send"}
    wire = Wire()
    outbox.flush(wire, states.__getitem__)
    assert wire.sent == [] and len(outbox) == 2  # in order: "ok" waits behind "rejoining"
    states["rejoining"] = "send"
    outbox.flush(wire, states.__getitem__)
    assert wire.sent == [b"w", b"s"]


def test_drop_room_forgets_its_values() -> None:
    outbox = ValueOutbox(lambda: None)
    outbox.put("a", "t", b"1", False)
    outbox.put("b", "t", b"2", False)
    outbox.put("a", "u", b"3", False)
    outbox.drop_room("a")
    assert len(outbox) == 1 and outbox.queued("b", "t") == [b"2"]
    assert outbox.queued_bytes == 1


def test_a_failing_write_keeps_the_value() -> None:
    outbox = ValueOutbox(lambda: None)
    outbox.put("r", "t", b"1", False)

    def closed(data: bytes, binary: bool) -> concurrent.futures.Future[None]:
        raise OSError("closed")

    assert outbox.flush(closed, joined) == 0
    assert outbox.queued("r", "t") == [b"1"]
