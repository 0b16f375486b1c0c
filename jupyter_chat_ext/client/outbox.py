"""ValueOutbox: live values waiting to go out, bounded, in order and paced.

``Room.publish`` never waits for the network: it puts the encoded value here and
returns. The outbox keeps values in publish order, bounded per topic and in bytes
(past a bound the oldest value of the topic is dropped: latest wins), and sends
them paced by the server's value rate (a :class:`~jupyter_chat_ext.limits.TokenBucket`)
with a bound on bytes written but not yet flushed. It knows no socket: the client
gives :meth:`ValueOutbox.flush` a ``write`` function and says which rooms can send.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ..limits import TokenBucket

INFLIGHT_MAX = 1024 * 1024  # bytes of live values written but not yet flushed
PER_TOPIC = 1000  # queued values per topic before the oldest are dropped
MAX_BYTES = 16 * 1024 * 1024  # queued bytes of values before the oldest are dropped

Key = tuple[str, str]  # (room, topic)
RoomReadiness = Literal["send", "wait", "drop"]  # joined / joining again / left


class Written(Protocol):
    """What ``write`` returns: settled once the bytes are handed to the network."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        """Call ``fn(self)`` when done."""


class ValueOutbox:
    """The queue of encoded values to send (see the module docstring).

    ``wake`` is called (from any thread) when a flush should be scheduled; the
    client passes one that runs :meth:`flush` on its loop.
    """

    def __init__(
        self,
        wake: Callable[[], None],
        *,
        per_topic: int = PER_TOPIC,
        max_bytes: int = MAX_BYTES,
        inflight_max: int = INFLIGHT_MAX,
    ) -> None:
        self._wake = wake
        self.per_topic = per_topic
        self.max_bytes = max_bytes
        self.inflight_max = inflight_max
        self.bucket: TokenBucket | None = None  # the server's value rate, once greeted
        self._queue: deque[tuple[Key, bytes, bool]] = deque()
        self._counts: Counter[Key] = Counter()
        self._bytes = 0
        self._lock = threading.Lock()
        self._scheduled = False
        self._inflight = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the values waiting."""
        return self._bytes

    def queued(self, room: str, topic: str) -> list[bytes]:
        """The values of ``topic`` in ``room`` waiting, oldest first."""
        with self._lock:
            return [data for key, data, _ in self._queue if key == (room, topic)]

    def put(self, room: str, topic: str, data: bytes, binary: bool) -> None:
        """Any thread: queue a value, dropping the oldest of its topic past the bounds."""
        key = (room, topic)
        with self._lock:
            if self._counts[key] >= self.per_topic:
                self._drop_oldest(key)
            self._queue.append((key, data, binary))
            self._counts[key] += 1
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._queue) > 1:
                self._drop_oldest(self._queue[0][0])
            if self._scheduled:
                return
            self._scheduled = True
        self._wake()

    def drop_room(self, room: str) -> None:
        """Forget every value queued for ``room`` (it was left)."""
        with self._lock:
            for key in [key for key, _, _ in self._queue if key[0] == room]:
                self._drop_oldest(key)

    def flush(
        self, write: Callable[[bytes, bool], Written], readiness: Callable[[str], RoomReadiness]
    ) -> float:
        """Loop thread: send queued values in order, within the rate and in-flight bounds.

        ``write(data, binary)`` sends one value; one that raises (the connection
        closed) leaves it queued for the next connection. ``readiness(room)`` says
        whether a room's values can go now, must wait (it is being joined again) or
        go nowhere (it was left). Returns the seconds until the rate allows the next
        value, or 0 when there is nothing to wait for (the outbox is empty, waits
        for a room or for writes in flight, which call ``wake`` when they complete).
        """
        with self._lock:
            self._scheduled = False
        while True:
            if self._inflight > self.inflight_max:
                return 0.0  # resumed when the writes in flight complete
            with self._lock:
                if not self._queue:
                    return 0.0
                key, data, binary = self._queue[0]
                ready = readiness(key[0])
                if ready == "drop":
                    self._drop_oldest(key)
                    continue
                if ready == "wait":
                    return 0.0  # the client flushes again once the room is joined
            if self.bucket is not None:
                wait = self.bucket.take()
                if wait:
                    return wait
            try:
                written = write(data, binary)
            except Exception:  # closed meanwhile: the value waits for the next connection
                return 0.0
            with self._lock:
                if self._queue and self._queue[0][1] is data:
                    self._queue.popleft()
                    self._counts[key] -= 1
                    self._bytes -= len(data)
            self._inflight += len(data)
            written.add_done_callback(functools.partial(self._written, len(data)))

    def _written(self, size: int, _: object = None) -> None:
        self._inflight -= size
        with self._lock:
            if not self._queue or self._scheduled:
                return
            self._scheduled = True
        self._wake()

    def _drop_oldest(self, key: Key) -> None:
        """Latest-wins under pressure: forget the oldest queued value of ``key``."""
        for index, (queued, data, _) in enumerate(self._queue):
            if queued == key:
                del self._queue[index]
                self._counts[key] -= 1
                self._bytes -= len(data)
                return
