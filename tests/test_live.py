"""Live data between clients and real kernels: arrays, tables, streams, linked widgets."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jupyter_chat_ext import ChatClient, ChatError

from helpers import Collector, JupyterServer, KernelSession, StuckClient, run_in_kernel


@pytest.fixture
def pair(server: JupyterServer) -> Any:
    a = ChatClient(url=server.url, token=server.token)
    b = ChatClient(url=server.url, token=server.token)
    yield a.join("lab"), b.join("lab")
    a.close()
    b.close()


def test_arrays_and_tables_arrive_exactly(pair: Any, server: JupyterServer) -> None:
    sender, receiver = pair
    seen = Collector()
    receiver.on_data(seen)
    array = np.random.default_rng(0).normal(size=(64, 32)).astype("f4")
    frame = pd.DataFrame({"step": np.arange(3), "loss": [0.5, 0.25, 0.125], "tag": list("abc")})
    sender.publish("weights", array)
    sender.publish("table", frame)
    events = {e["topic"]: e for e in seen.wait_for(2)}
    got = events["weights"]["value"]
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    pd.testing.assert_frame_equal(events["table"]["value"], frame)
    assert events["weights"]["user"] == sender.client.user
    with ChatClient(url=server.url, token=server.token) as late:  # late joiner
        values = late.join("lab").values
        np.testing.assert_array_equal(values["weights"], array)
        pd.testing.assert_frame_equal(values["table"], frame)


def test_streams_latest_series_callbacks_and_async_iteration(
    pair: Any, server: JupyterServer
) -> None:
    sender, receiver = pair
    stream = receiver.stream("loss")
    seen = Collector()
    stream.on_value(seen)

    async def first_three() -> list[Any]:
        got = []
        async for value in stream:
            got.append(value)
            if len(got) == 3:
                return got
        return got

    async def consume() -> list[Any]:
        task = asyncio.ensure_future(first_three())
        await asyncio.sleep(0)  # the iterator is registered before values are published
        for step in range(5):
            sender.publish("loss", 1 / (step + 1))
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(consume()) == [1.0, 0.5, 1 / 3]
    seen.wait_for(5)
    assert stream.latest == 0.2
    assert [v for _, v in stream.series] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    with ChatClient(url=server.url, token=server.token) as late:
        recent = late.join("lab").stream("loss")
        assert recent.latest == 0.2
        assert [v for _, v in recent.series] == [1.0, 0.5, 1 / 3, 0.25, 0.2]  # series at join


def test_value_limits_are_clear(pair: Any) -> None:
    sender, _ = pair
    with pytest.raises(ChatError) as too_big:
        sender.publish("big", np.zeros(2_000_000, dtype="u1"))
    assert too_big.value.code == "value_too_large" and "downsampled" in str(too_big.value)
    with pytest.raises(ChatError) as odd:
        sender.publish("odd", object())
    assert odd.value.code == "invalid_value"


def test_a_fast_publisher_is_conflated_never_blocked(pair: Any) -> None:
    sender, receiver = pair
    last = threading.Event()
    receiver.on_data(lambda e: e["value"] == 19_999 and last.set())
    for i in range(20_000):  # far above the server's data rate: latest-wins
        sender.publish("tick", i)
    assert last.wait(30)  # the newest value always arrives
    assert receiver.values["tick"] == 19_999


def test_a_paused_reader_gets_the_latest_value_and_is_not_dropped(server: JupyterServer) -> None:
    with ChatClient(url=server.url, token=server.token) as sender:
        room = sender.join("paused")
        reader = StuckClient(server)
        reader.join("paused")  # then stops reading while ~5 MB of values go by
        for i in range(5_000):
            room.publish("counter", {"i": i, "pad": "x" * 900})
        received = 0
        while True:  # resume reading: the newest value arrives, and no close frame
            opcode, payload = reader.read_frame()
            assert opcode != 8, "the paused reader was disconnected"
            frame = json.loads(payload)
            if frame["op"] == "data":
                received += 1
                if frame["value"]["i"] == 4_999:
                    break
        reader.close()
    assert received > 0  # (the send-queue bound itself is unit-tested in test_session.py)


PUBLISH = """
import numpy as np, pandas as pd
from jupyter_chat_ext import ChatClient
client = ChatClient()
room = client.join("kernels")
room.publish("matrix", np.arange(12, dtype="f8").reshape(3, 4) / 7)
room.publish("frame", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
print("published")
"""

RECEIVE = """
import numpy as np, pandas as pd
from jupyter_chat_ext import ChatClient
client = ChatClient()
values = client.join("kernels").values
assert values["matrix"].dtype == np.float64 and values["matrix"].shape == (3, 4)
np.testing.assert_array_equal(values["matrix"], np.arange(12, dtype="f8").reshape(3, 4) / 7)
pd.testing.assert_frame_equal(values["frame"], pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
client.close()
print("received exactly")
"""


def test_one_kernel_publishes_another_receives(server: JupyterServer) -> None:
    assert "published" in run_in_kernel(server, PUBLISH)
    assert "received exactly" in run_in_kernel(server, RECEIVE)


LINK = """
import threading
from ipywidgets import IntSlider
from jupyter_chat_ext import ChatClient
client = ChatClient()
room = client.join("linked")
slider = IntSlider(max=100)
link = room.link(slider, "value", topic="slider")

def wait_for(value):
    arrived = threading.Event()
    room.stream("slider").on_value(lambda e: e["value"] == value and arrived.set())
    assert room.values.get("slider") == value or arrived.wait(30), room.values
"""


def settled_value(kernel: KernelSession, expected: int) -> None:
    """The remote value is applied on the kernel's loop between cells: run until seen."""
    for _ in range(50):
        if kernel.run("print(slider.value)").strip() == str(expected):
            return
    raise AssertionError(f"the slider never became {expected}")


def test_linked_sliders_in_two_kernels_stay_equal_both_ways(server: JupyterServer) -> None:
    with KernelSession(server) as first, KernelSession(server) as second:
        first.run(LINK)
        second.run(LINK)
        first.run("slider.value = 7")
        second.run("wait_for(7)")
        settled_value(second, 7)
        second.run("slider.value = 42")
        first.run("wait_for(42)")
        settled_value(first, 42)
    with ChatClient(url=server.url, token=server.token) as watcher:
        series = [v for _, v in watcher.join("linked").stream("slider").series]
    assert series == [0, 7, 42]  # each change once: no echo loop
