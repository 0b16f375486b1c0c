"""Memory is given back once a burst of connections has gone (jupyter_chat_ext/memory.py)."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_chat_ext import memory
from jupyter_chat_ext.memory import Release


async def test_memory_is_given_back_once_after_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "DELAY", 0.0)
    trims: list[bool] = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: trims.append(True) or True)
    release = Release()
    for _ in range(3000):
        release.opened()
    for _ in range(999):
        release.closed()
    await asyncio.sleep(0)  # a turn of the loop: nothing is due
    assert release.releases == 0  # fewer than BURST closed
    for _ in range(1500):
        release.closed()
    async with asyncio.timeout(5):
        while release.releases == 0:
            await asyncio.sleep(0.001)
    assert trims == [True] and release.peak == release.count == 501
    for _ in range(400):  # ordinary comings and goings after it: nothing more
        release.opened()
        release.closed()
    await asyncio.sleep(0.01)
    assert release.releases == 1


async def test_a_release_not_yet_due_is_cancelled_on_close() -> None:
    release = Release()
    for _ in range(2000):
        release.opened()
    for _ in range(2000):
        release.closed()
    release.close()
    assert release.releases == 0 and release._timer is None
