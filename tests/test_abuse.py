"""One user must not be able to deny a room, or the server, to everyone else.

Each test is an attack from a user with a valid login against the in-process server
(pytest-jupyter), with limits lowered so that the attack is cheap to run here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from jupyter_chat_ext.protocol import User, pack_binary

from conftest import RawConnect
from helpers import RawClient

QUEUE = 128 * 1024


@pytest.fixture
def small_server(chat_config: dict[str, Any]) -> None:
    chat_config.update(
        max_send_queue=QUEUE,
        max_value_size=60_000,
        max_message_size=8_000,
        max_join_bytes=65_536,
        typing_burst=5,
        typing_rate_limit=1.0,
        max_topics_per_room=4,
        join_burst=30,
        join_rate_limit=1.0,
    )


async def read_frames(client: RawClient, count: int) -> list[Any]:
    """Read ``count`` frames as a normal client does (binary ones as bytes)."""
    frames = []
    for _ in range(count):
        message = await asyncio.wait_for(client.conn.read_message(), 10)
        assert message is not None, f"closed: {client.conn.close_code} {client.conn.close_reason}"
        frames.append(message if isinstance(message, bytes) else json.loads(message))
    return frames


def topic_of(frame: bytes | dict[str, Any]) -> str:
    if isinstance(frame, dict):
        return str(frame["topic"])
    size = int.from_bytes(frame[:4], "big")
    return str(json.loads(frame[4 : 4 + size].decode())["topic"])


@pytest.mark.usefixtures("small_server")
async def test_big_values_never_lock_late_joiners_out(connect: RawConnect) -> None:
    publisher = await connect()
    await publisher.join("big")
    for i in range(4):  # ~10x the send-queue bound in latest values, in two kinds
        header = {"op": "data", "room": "big", "topic": f"array-{i}", "value": {}}
        header["buffers"] = [59_000]
        await publisher.send(pack_binary(json.dumps(header).encode(), [bytes(59_000)]))
    for i in range(3, 4):
        await publisher.send({"op": "data", "room": "big", "topic": f"array-{i}", "value": "x"})
    await publisher.send({"op": "send", "room": "big", "id": "after", "body": "values set"})
    await publisher.expect("message", id="after")
    for attempt in range(3):  # every late joiner gets in, and gets every value
        joiner = await connect()
        await joiner.send({"op": "join", "room": "big", "id": "j"})
        joined = (await read_frames(joiner, 1))[0]
        assert joined["op"] == "joined", joined
        follow = await read_frames(joiner, joined["following"])
        topics = set(joined["values"]) | {topic_of(f) for f in follow}
        assert topics == {f"array-{i}" for i in range(4)}, (attempt, topics)
        await joiner.send({"op": "send", "room": "big", "id": "hi", "body": "I am in"})
        assert (await joiner.expect("message", id="hi"))["body"] == "I am in"


@pytest.mark.usefixtures("small_server")
async def test_a_replay_from_the_start_is_bounded(connect: RawConnect) -> None:
    writer = await connect()
    joined = await writer.join("long")
    for i in range(40):  # 40 x 7 KB: over four times one join's budget
        await writer.send({"op": "send", "room": "long", "id": f"m{i}", "body": "y" * 7_000})
        await writer.expect("message", id=f"m{i}")
    reader = await connect()
    since = {"epoch": joined["epoch"], "seq": 0}
    await reader.send({"op": "join", "room": "long", "id": "r", "since": since})
    message = await asyncio.wait_for(reader.conn.read_message(), 10)
    assert isinstance(message, str) and len(message) <= 65_536 + 16_384
    replay = json.loads(message)
    assert replay["op"] == "joined" and replay["recovered"] is False
    assert replay["history"][-1]["seq"] == 40  # the newest, with "load earlier" for the rest
    small = await connect()  # a gap that fits is replayed whole
    await small.send({"op": "join", "room": "long", "id": "s", "since": {**since, "seq": 36}})
    resumed = await small.expect("joined", id="s")
    assert resumed["recovered"] and [m["seq"] for m in resumed["history"]] == [37, 38, 39, 40]


@pytest.mark.usefixtures("small_server")
async def test_typing_topic_and_join_floods_are_refused(connect: RawConnect) -> None:
    flooder, watcher = await connect(), await connect()
    await flooder.join("calm")
    await watcher.join("calm")
    for i in range(40):
        await flooder.send({"op": "typing", "room": "calm", "active": i % 2 == 0})
    limited = await flooder.expect("error")
    assert limited["code"] == "rate_limited" and "typing" in limited["message"]
    await flooder.send({"op": "send", "room": "calm", "id": "end", "body": "done"})
    seen = []
    while (frame := await watcher.recv())["op"] != "message":
        seen.append(frame["op"])
    assert seen.count("typing") <= 6  # the burst, and nothing of the flood past it

    for i in range(4):
        await flooder.send({"op": "data", "room": "calm", "topic": f"t{i}", "value": i})
    await flooder.send({"op": "data", "room": "calm", "topic": "one-too-many", "value": 5})
    refused = await flooder.expect("error", code="too_many_topics")
    assert "4 topics" in refused["message"]
    await flooder.send({"op": "data", "room": "calm", "topic": "t0", "value": 9})  # still fine
    assert (await watcher.expect("data", topic="t0", value=9))["user"] == flooder.hello["user"]

    codes = []
    for i in range(40):
        await flooder.send({"op": "join", "room": f"new-{i}", "id": f"n{i}"})
    while len(codes) < 40:
        frame = await flooder.recv()
        if frame.get("id", "").startswith("n"):
            codes.append(frame.get("code", frame["op"]))
    assert "rate_limited" in codes and codes.count("joined") <= 30


async def test_malformed_frames_get_bad_frame_and_the_connection_goes_on(
    connect: RawConnect, caplog: pytest.LogCaptureFixture
) -> None:
    client = await connect()
    await client.join("r")
    attacks = [
        '{"op":"join","room":"r","id":"a","since":' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"op":"data","room":"r","topic":"t","value":' + "[" * 50_000 + "]" * 50_000 + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"op":"history","room":"r","id":"b","before":' + str(2**70) + "}",
        '{"op":"join","room":"r","id":"c","since":{"epoch":"e","seq":-5}}',
        # Deep enough to choke every reader's decoder once wrapped in `joined`.
        '{"op":"data","room":"r","topic":"t","value":' + "[" * 990 + "]" * 990 + "}",
    ]
    for attack in attacks:
        await client.send(attack)
        error = await client.expect("error")
        assert error["code"] in ("bad_frame", "invalid_field"), error
    assert not [r for r in caplog.records if r.levelname == "ERROR" and "chat" in r.name]
    await client.send({"op": "send", "room": "r", "id": "ok", "body": "still here"})
    assert (await client.expect("message", id="ok"))["body"] == "still here"


def test_an_inflated_identity_is_cut_where_it_is_stamped() -> None:
    huge = User(
        username="mallory",
        name="m" * 50_000,
        display_name="D\x07" * 30_000,
        initials="ABCDEFG",
        avatar_url="https://x/" + "a" * 10_000,
    )
    bounded = huge.bounded()
    assert len(msgspec.json.encode(bounded)) < 3_000
    assert bounded.username == "mallory" and "\x07" not in bounded.display_name
    assert bounded.display_name.endswith("…") and len(bounded.display_name) == 100
    plain = User(username="ann", name="ann", display_name="Ann")
    assert plain.bounded() is plain
