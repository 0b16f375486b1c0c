"""Stream: the live values of one topic, as callbacks, a series and an ``async for``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .callbacks import MessageCallback, fire

if TYPE_CHECKING:
    from .room import Room


class Stream:
    """The live values of one topic in a room (from :meth:`Room.stream`).

    ``latest`` is the newest value, ``series`` the recent ``(ts, value)`` pairs (late
    joiners get the server's recent series too), ``on_value`` registers a callback
    (called on the client's thread), and ``async for value in stream`` iterates over
    new values in your own event loop (a slow consumer keeps the newest 1,000).
    """

    def __init__(self, room: Room, topic: str) -> None:
        self.room = room
        self.topic = topic
        self._callbacks: list[MessageCallback] = []
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Stream {self.room.name!r}/{self.topic!r} latest={self.latest!r}>"

    @property
    def latest(self) -> Any:
        """The newest value (None before the first)."""
        return self.room.values.get(self.topic)

    @property
    def series(self) -> list[tuple[float, Any]]:
        """Recent ``(timestamp, value)`` pairs, oldest first (``series_length`` at most)."""
        return self.room.state.series(self.topic)

    def on_value(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(event)`` for each new value (event: value, user, ts, id)."""
        self._callbacks.append(callback)
        return callback

    def off_value(self, callback: MessageCallback) -> None:
        """Stop calling ``callback`` (registered with :meth:`on_value`); no error if it was not."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def __aiter__(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        with self._lock:
            self._queues.append((loop, queue))

        async def values_() -> AsyncIterator[Any]:
            try:
                while True:
                    yield await queue.get()
            finally:
                with self._lock:
                    self._queues.remove((loop, queue))

        return values_()

    def _deliver(self, event: dict[str, Any]) -> None:
        """The client's thread: a new value of this topic arrived (called by its Room)."""
        fire(self._callbacks, event, self.room.name)
        with self._lock:
            queues = list(self._queues)
        for loop, queue in queues:
            loop.call_soon_threadsafe(_offer_latest, queue, event["value"])


def _offer_latest(queue: asyncio.Queue[Any], value: Any) -> None:
    if queue.full():
        queue.get_nowait()  # latest-wins: drop the oldest for a slow consumer
    queue.put_nowait(value)
