"""Pure-logic tests of the wire format and the rate limiter."""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_chat_ext import protocol as p
from jupyter_chat_ext.limits import TokenBucket

from strategies import RAW_FRAMES


def test_decode_valid_frames() -> None:
    frame = p.decode('{"op":"send","room":"r","id":"1","body":"hi","user":"ignored"}')
    assert frame == p.Send(room="r", id="1", body="hi")
    join = p.decode(b'{"op":"join","room":"r","since":{"epoch":"e","seq":3}}')
    assert isinstance(join, p.Join) and join.since == p.Since("e", 3)
    data = p.decode('{"op":"data","room":"r","topic":"t","value":{"a":[1,2]}}')
    assert isinstance(data, p.Data) and bytes(data.value) == b'{"a":[1,2]}'


def test_server_frames_round_trip() -> None:
    user = p.User(username="u", name="U", display_name="U U", initials="UU")
    message = p.Message(room="r", seq=1, id="i", user=user, ts=1.5, body="b")
    encoded = p.encode(message)
    assert msgspec.json.decode(encoded)["op"] == "message"
    assert p.decode_server(encoded) == message
    error = p.ProtocolError("not_joined", "join first", id="x").to_frame()
    assert msgspec.json.decode(p.encode(error)) == {
        "op": "error",
        "code": "not_joined",
        "message": "join first",
        "id": "x",
    }


FRAMES_PER_EXAMPLE = 50
DECODER_FRAMES = 10_000 * max(1, int(os.environ.get("CHAT_RELIABILITY_SCALE", "1")))


@settings(max_examples=DECODER_FRAMES // FRAMES_PER_EXAMPLE, deadline=None, database=None)
@given(st.lists(RAW_FRAMES, min_size=FRAMES_PER_EXAMPLE, max_size=FRAMES_PER_EXAMPLE))
def test_decoder_returns_a_valid_frame_or_a_protocol_error(frames: list[str | bytes]) -> None:
    for data in frames:
        try:
            frame = p.decode(data)
        except p.ProtocolError as exc:
            assert exc.code in p.ErrorCode.__args__  # type: ignore[attr-defined]
            assert exc.message
        else:
            assert 1 <= len(frame.room) <= p.ROOM_NAME_MAX


def test_token_bucket_allows_bursts_then_says_how_long_to_wait() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.take() == 0
    now[0] += 100
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0]
