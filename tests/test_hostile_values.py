"""A hostile publisher's values never break a join, a live room or the decoder.

Another user on a shared server may publish anything the server relays: markers whose
fields lie, a binary header claiming a huge shape over a few bytes, numbers JSON cannot
carry, forbidden dtypes, markers hidden in lists. ``values.decode`` turns each into an
``InvalidValue`` without raising or allocating what it claims, and ``ChatClient`` keeps
every other topic, the messages and the join working.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_chat_ext import ChatClient, protocol
from jupyter_chat_ext.values import InvalidValue, _has_marker, _plainly_json, decode, encode

from helpers import JupyterServer
from strategies import JSON_VALUES

HUGE = [100_000_000, 100]  # 80 GB of float64, claimed over 16 bytes

# Text values (no buffers) whose markers lie. Topic -> the value's JSON.
LYING_TEXT = {
    # (a) the codec's markers, with fields that do not hold
    "array-no-buffer": {"$ndarray": {"dtype": "<f8", "shape": HUGE, "buffer": 0}},
    "array-bad-fields": {"$ndarray": {"dtype": 5, "shape": "big", "buffer": -1}},
    "array-extra-field": {"$ndarray": {"dtype": "<f8", "shape": [0], "buffer": 0, "x": 1}},
    "series-long-index": {
        "$series": {"name": "s", "values": [1, 2], "index": {"$range": [0, 50_000_000, 1]}}
    },
    "frame-no-columns-huge-index": {
        "$dataframe": {"columns": [], "data": [], "index": {"$range": [0, 10**15, 1]}}
    },
    "frame-columns-disagree": {
        "$dataframe": {"columns": ["a", "b"], "data": [[1, 2]], "index": {"$range": [0, 2, 1]}}
    },
    "values-pickle-dtype": {
        "$series": {
            "name": None,
            "values": {"$values": {"dtype": "O", "values": ["cos\nsystem\n"]}},
            "index": {"$range": [0, 1, 1]},
        }
    },
    # (e) a lying marker nested inside a list (and a dict)
    "nested-in-list": [
        1,
        "two",
        {"x": [{"$ndarray": {"dtype": "<f8", "shape": [3], "buffer": 7}}]},
    ],
}
# (c) numbers JSON cannot carry: the server relays 1e999 (a valid JSON token), but
# no float holds it. NaN and Infinity are not JSON at all: the server refuses them.
NON_FINITE_TEXT = {"overflow": "1e999", "negative-overflow": "[-1e999]"}
NOT_JSON = ["NaN", "Infinity", "-Infinity"]


def ndarray_header(dtype: Any, shape: Any, buffer: Any = 0) -> dict[str, Any]:
    return {"$ndarray": {"dtype": dtype, "shape": shape, "buffer": buffer}}


# Binary values: (value tree, buffers). Topic -> that.
LYING_BINARY = {
    # (b) a tiny header claiming a huge shape over 16 bytes
    "huge-shape": (ndarray_header("<f8", HUGE), [b"\0" * 16]),
    # (d) forbidden and unknown dtypes
    "object-dtype": (ndarray_header("|O", [2]), [b"\1" * 16]),
    "unknown-dtype": (ndarray_header("<x9", [2]), [b"\0" * 16]),
    "void-dtype": (ndarray_header("|V8", [2]), [b"\0" * 16]),
    "huge-frame": (
        {
            "$dataframe": {
                "columns": ["a"],
                "data": [ndarray_header("<f8", [50_000_000])],
                "index": {"$range": [0, 50_000_000, 1]},
            }
        },
        [b"\0" * 16],
    ),
    "buffer-used-twice": ([ndarray_header("<f8", [2]), ndarray_header("<f8", [2])], [b"\0" * 16]),
}


def peak_allocation(func: Any, *args: Any) -> tuple[Any, int]:
    """Call ``func(*args)``; return its result and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        result = func(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("topic", sorted(LYING_TEXT))
def test_lying_text_markers_decode_to_invalid_values(topic: str) -> None:
    header = json.dumps(LYING_TEXT[topic]).encode()
    value, peak = peak_allocation(decode, header)
    assert isinstance(value, InvalidValue), value
    assert value.reason and value.raw == header.decode()[: InvalidValue.RAW_MAX]
    assert "InvalidValue(" in repr(value) and value.reason in repr(value)
    assert peak < 1_000_000


@pytest.mark.parametrize("topic", sorted(LYING_BINARY))
def test_lying_binary_headers_decode_to_invalid_values_without_allocating_the_claim(
    topic: str,
) -> None:
    tree, buffers = LYING_BINARY[topic]
    payload = memoryview(b"".join(buffers))
    value, peak = peak_allocation(
        decode, json.dumps(tree).encode(), [len(b) for b in buffers], payload
    )
    assert isinstance(value, InvalidValue), value
    assert peak < 1_000_000  # not 80 GB, not 400 MB: about what was received


def test_the_reason_says_what_lied_and_the_raw_text_is_truncated() -> None:
    tree, buffers = LYING_BINARY["huge-shape"]
    value = decode(json.dumps(tree).encode(), [16], memoryview(buffers[0]))
    assert isinstance(value, InvalidValue)
    assert "80000000000 bytes" in value.reason and "16 bytes" in value.reason
    long = decode(json.dumps({"$ndarray": "x" * 10_000}).encode())
    assert isinstance(long, InvalidValue) and len(long.raw) == InvalidValue.RAW_MAX + 1
    deep = decode(b"[" * 300 + b"]" * 300)
    assert deep == InvalidValue(
        b"[" * 300 + b"]" * 300, "the value is nested more than 200 levels deep"
    )
    assert isinstance(decode(b"[" * 100_000 + b"]" * 100_000), InvalidValue)  # msgspec's limit


def test_non_finite_numbers_are_null_in_json_invalid_on_receipt_and_kept_in_arrays() -> None:
    # Publishing: JSON has no NaN or Infinity, so the JSON part of a value sends null.
    assert encode({"loss": math.nan, "best": -math.inf})[0] == b'{"loss":null,"best":null}'
    # Receiving: a number no float holds (or a NaN literal) is an InvalidValue.
    for text in [*NON_FINITE_TEXT.values(), *NOT_JSON]:
        value = decode(text.encode())
        assert isinstance(value, InvalidValue) and value.reason.startswith("not valid JSON")
    # In arrays and tables they are data: raw bytes, unchanged.
    array = np.array([math.nan, math.inf, -math.inf, 1.0])
    tree, buffers = encode(array)
    assert buffers is not None
    back = decode(tree, [b.nbytes for b in buffers], memoryview(b"".join(buffers)))
    np.testing.assert_array_equal(back, array)


def test_a_dict_shaped_like_a_marker_cannot_be_published() -> None:
    from jupyter_chat_ext.values import UnsupportedValue

    with pytest.raises(UnsupportedValue, match="reserved"):
        encode({"data": {"$ndarray": [1, 2]}})
    assert decode(encode({"$ndarray": 1, "other": 2})[0]) == {"$ndarray": 1, "other": 2}


MARKER_KEYS = st.sampled_from(
    ["$ndarray", "$series", "$dataframe", "$values", "$range", "$index", "dtype", "shape"]
)
DTYPES = st.sampled_from(["<f8", "|b1", ">i4", "<M8[ms]", "|O", "<U2", "|S0", "|V8", "x", ""])
SHAPES = st.lists(st.integers(-2, 2**40) | st.sampled_from([0, 1, 2, 16, 10**8]), max_size=4)
NDARRAYS = st.builds(
    ndarray_header, DTYPES | JSON_VALUES, SHAPES | JSON_VALUES, st.integers(-1, 3) | JSON_VALUES
)
INDEXES = st.builds(
    lambda b: {"$range": b}, st.lists(st.integers(-(2**64), 2**64), max_size=4)
) | st.builds(lambda v: {"$index": {"name": None, "values": v}}, NDARRAYS | JSON_VALUES)
COLUMNS = (
    NDARRAYS
    | st.lists(JSON_VALUES, max_size=4)
    | st.builds(
        lambda d, v: {"$values": {"dtype": d, "values": v}},
        st.sampled_from(["category", "str", "object", "Int64", "O", "V", "boolean"]),
        st.lists(JSON_VALUES, max_size=4) | JSON_VALUES,
    )
)
TREES = st.recursive(
    JSON_VALUES | NDARRAYS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(MARKER_KEYS | st.text(max_size=3), inner, max_size=3)
        | st.builds(
            lambda n, v, i: {"$series": {"name": n, "values": v, "index": i}},
            inner,
            COLUMNS,
            INDEXES | inner,
        )
        | st.builds(
            lambda c, d, i: {"$dataframe": {"columns": c, "data": d, "index": i}},
            st.lists(JSON_VALUES, max_size=3) | inner,
            st.lists(COLUMNS, max_size=3) | inner,
            INDEXES | inner,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=TREES,
    buffers=st.lists(st.binary(max_size=32), max_size=3),
    sizes=st.none() | st.lists(st.integers(-8, 64), max_size=4),
)
def test_decode_of_any_tree_returns_a_value_or_invalid_value_within_a_memory_bound(
    tree: Any, buffers: list[bytes], sizes: list[int] | None
) -> None:
    header = json.dumps(tree).encode()
    payload = b"".join(buffers)
    claimed = [len(b) for b in buffers] if sizes is None else sizes
    for args in [(header,), (header, claimed, memoryview(payload))]:
        value, peak = peak_allocation(decode, *args)
        received = len(header) + len(payload)
        assert peak < 200_000 + 200 * received, (peak, tree)
        if isinstance(value, InvalidValue):
            assert value.reason and len(value.raw) <= InvalidValue.RAW_MAX + 1


@settings(max_examples=300, deadline=None)
@given(tree=TREES, escape=st.booleans())
def test_the_byte_scan_skips_the_walk_only_for_trees_without_markers_within_the_depth(
    tree: Any, escape: bool
) -> None:
    header = json.dumps(tree).encode()
    if escape:  # the same keys, "$" written as JSON's escape
        header = header.replace(b'"$', b'"\\u0024')
    if _plainly_json(header):
        assert not _has_marker(msgspec.json.decode(header))  # and did not raise: not too deep
    if escape:  # decodes as the unescaped value does (an invalid one for the same reason)
        value, unescaped = decode(header), decode(json.dumps(tree).encode())
        assert getattr(value, "reason", value) == getattr(unescaped, "reason", unescaped)


@pytest.mark.parametrize("topic", sorted(LYING_TEXT))
def test_lying_markers_with_an_escaped_dollar_are_still_checked(topic: str) -> None:
    header = json.dumps(LYING_TEXT[topic]).encode().replace(b'"$', b'"\\u0024')
    assert isinstance(decode(header), InvalidValue)


def test_nesting_is_refused_at_the_same_depth_with_or_without_brackets_in_strings() -> None:
    for depth in (200, 201):  # the scan answers for 200 lists, the walk for 201
        assert decode(b"[" * depth + b"]" * depth) == json.loads("[" * depth + "]" * depth)
    assert isinstance(decode(b"[" * 202 + b"]" * 202), InvalidValue)
    text = json.dumps({"brackets": "[{" * 300, "n": [[1]]}).encode()  # counted, not nested
    assert decode(text) == {"brackets": "[{" * 300, "n": [[1]]}


@pytest.fixture(scope="module", autouse=True)
def _import_pandas_first() -> None:
    """pandas' own first import is not part of what a decode allocates."""
    decode(*_binary(pd.DataFrame({"a": [1.0]})))


def _binary(value: Any) -> tuple[bytes, list[int], memoryview]:
    tree, buffers = encode(value)
    assert buffers is not None
    return tree, [b.nbytes for b in buffers], memoryview(b"".join(buffers))


# ------------------------------------------------------------------ against a server


class Hostile:
    """A user who speaks the protocol directly and publishes whatever they like."""

    def __init__(self, server: JupyterServer, room: str) -> None:
        self.server = server
        self.room = room

    async def _publish(self, frames: list[str | bytes]) -> list[dict[str, Any]]:
        request = HTTPRequest(
            self.server.url.replace("http", "ws", 1) + "chat-ext/ws",
            headers={"Authorization": f"token {self.server.token}"},
        )
        ws = await websocket_connect(request)
        try:
            assert json.loads(await ws.read_message())["op"] == "hello"  # type: ignore[arg-type]
            await ws.write_message(json.dumps({"op": "join", "room": self.room, "id": "j"}))
            answers: list[dict[str, Any]] = []
            waiting = 0
            for frame in frames:
                await ws.write_message(frame, binary=isinstance(frame, bytes))
                waiting += 1
            while waiting:  # each value is echoed to its sender, each message acknowledged
                data = await asyncio.wait_for(ws.read_message(), 10)
                assert data is not None, "the server closed the hostile connection"
                if isinstance(data, bytes):
                    data = protocol.unpack_binary(data)[0]
                answer = json.loads(data)
                if answer["op"] in ("data", "message", "error"):
                    answers.append(answer)
                    waiting -= 1
            return answers
        finally:
            ws.close()

    def publish(self, frames: list[str | bytes]) -> list[dict[str, Any]]:
        """Send ``frames``; return the server's answer to each (echo, ack or error)."""
        return asyncio.run(self._publish(frames))


def text_value(room: str, topic: str, value_json: str) -> str:
    return (
        f'{{"op": "data", "room": {json.dumps(room)}, "topic": {json.dumps(topic)}, '
        f'"id": "{uuid.uuid4().hex}", "value": {value_json}}}'
    )


def binary_value(room: str, topic: str, tree: Any, buffers: list[bytes]) -> bytes:
    header = {
        "op": "data",
        "room": room,
        "topic": topic,
        "id": uuid.uuid4().hex,
        "value": tree,
        "buffers": [len(b) for b in buffers],
    }
    return protocol.pack_binary(json.dumps(header).encode(), list(buffers))


def hostile_frames(room: str) -> list[str | bytes]:
    """Every bad value above, then a good value, a good table and a message."""
    frames: list[str | bytes] = [text_value(room, "mixed", "1")]  # a good entry first
    frames += [text_value(room, t, json.dumps(v)) for t, v in LYING_TEXT.items()]
    frames += [text_value(room, t, v) for t, v in NON_FINITE_TEXT.items()]
    frames.append(text_value(room, "mixed", json.dumps(LYING_TEXT["array-no-buffer"])))
    frames += [binary_value(room, t, *LYING_BINARY[t]) for t in LYING_BINARY]
    frames.append(text_value(room, "temperature", "21.5"))
    tree, buffers = encode(pd.DataFrame({"x": [1.0, 2.0]}))
    assert buffers is not None
    frames.append(binary_value(room, "table", json.loads(tree), [bytes(b) for b in buffers]))
    frames.append(json.dumps({"op": "send", "room": room, "id": "m1", "body": "still here"}))
    return frames


BAD_TOPICS = {*LYING_TEXT, *NON_FINITE_TEXT, *LYING_BINARY}


@pytest.fixture
def victim(server: JupyterServer) -> Iterator[ChatClient]:
    client = ChatClient(url=server.url, token=server.token)
    yield client
    client.close()


def test_a_join_completes_past_every_poisoned_value(
    server: JupyterServer, victim: ChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = Hostile(server, "lab")
    refused = hostile.publish([text_value("lab", "t", v) for v in NOT_JSON])
    assert [(a["op"], a["code"]) for a in refused] == [("error", "bad_json")] * len(NOT_JSON)
    answers = hostile.publish(hostile_frames("lab"))
    assert [a["op"] for a in answers].count("error") == 0, answers  # all relayed

    room = victim.join("lab", timeout=10)  # today: times out

    got = room.values
    assert got["temperature"] == 21.5
    pd.testing.assert_frame_equal(got["table"], pd.DataFrame({"x": [1.0, 2.0]}))
    assert [m["body"] for m in room.messages] == ["still here"]
    for topic in BAD_TOPICS | {"mixed"}:
        assert isinstance(got[topic], InvalidValue), (topic, got[topic])
    series = room.stream("mixed").series
    assert len(series) == 2 and series[0][1] == 1 and isinstance(series[1][1], InvalidValue)
    # Logged once per topic, at warning, and never the payload itself.
    warned = [r for r in caplog.records if "InvalidValue" in r.getMessage()]
    assert {r.levelname for r in warned} == {"WARNING"}
    topics = [r.args[1] for r in warned if isinstance(r.args, tuple)]
    assert sorted(topics) == sorted(BAD_TOPICS | {"mixed"})  # "mixed" twice, logged once
    assert all("cos\nsystem" not in r.getMessage() for r in warned)


def test_a_joined_client_keeps_receiving_after_poisoned_values(
    server: JupyterServer, victim: ChatClient
) -> None:
    room = victim.join("live", timeout=10)
    events: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    done = threading.Event()

    def on_data(event: dict[str, Any]) -> None:
        events.append(event)
        if event["topic"] == "table":
            done.set()

    room.on_data(on_data)
    room.on_message(messages.append)
    Hostile(server, "live").publish(hostile_frames("live"))
    assert done.wait(10), [e["topic"] for e in events]  # today: the table never comes

    by_topic = {e["topic"]: e["value"] for e in events}
    for topic in BAD_TOPICS:
        assert isinstance(by_topic[topic], InvalidValue), (topic, by_topic[topic])
    assert by_topic["temperature"] == 21.5
    assert room.values["temperature"] == 21.5
    pd.testing.assert_frame_equal(room.values["table"], pd.DataFrame({"x": [1.0, 2.0]}))
    room.publish("after", 1)  # the connection and the room still work both ways
    assert room.send("and me", timeout=10)["body"] == "and me"
    assert [m["body"] for m in room.messages] == ["still here", "and me"]
