"""A room's live values: the latest value per topic, recent series, what a joiner gets.

Latest-wins state, kept per room in the process that has the room loaded (and, with
Redis, in the room's values hash for replicas that load it later). Fan-out is the
room's job; this module decides what is kept and what a join carries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from .protocol import DataEvent, ProtocolError, decode_relayed

if TYPE_CHECKING:
    from .config import ChatSettings

SERIES_VALUE_MAX = 1024  # only values this small (in JSON bytes) are kept in a series


class LiveValues:
    """The latest value of each topic of one room, with a series of the small ones."""

    def __init__(self, room: str, settings: ChatSettings) -> None:
        self.room = room
        self._settings = settings
        # topic -> (latest event, the frame it was broadcast as, whether that is binary)
        self._latest: dict[str, tuple[DataEvent, bytes, bool]] = {}
        self._series: dict[str, deque[tuple[float, msgspec.Raw]]] = {}

    def check(self, topic: str, size: int) -> None:
        """Refuse a value on ``topic`` of ``size`` bytes past the room's limits."""
        limit = self._settings.max_topics_per_room
        if topic not in self._latest and len(self._latest) >= limit:
            raise ProtocolError(
                "too_many_topics",
                f"room {self.room!r} already has {limit} topics; publish on one of them, "
                "or use another room",
                room=self.room,
            )
        if size > self._settings.max_value_size:
            raise ProtocolError(
                "value_too_large",
                f"value on {topic!r} is {size} bytes; the limit is "
                f"{self._settings.max_value_size}. Publish a smaller or downsampled value.",
                room=self.room,
            )

    def record(self, event: DataEvent, frame: bytes, binary: bool) -> None:
        """Keep ``event`` (broadcast as ``frame``) as its topic's latest value."""
        topic = event.topic
        self._latest[topic] = (event, frame, binary)
        if not binary and len(event.value) <= SERIES_VALUE_MAX:
            series = self._series.get(topic)
            if series is None:
                series = self._series[topic] = deque(maxlen=self._settings.series_length)
            series.append((event.ts, event.value))
        else:
            self._series.pop(topic, None)

    def restore(self, frames: Iterable[tuple[bytes, bool]]) -> None:
        """Take over latest values another process kept (frames as relayed)."""
        for frame, binary in frames:
            event = decode_relayed(frame, binary)
            if isinstance(event, DataEvent):
                self._latest[event.topic] = (event, frame, binary)

    def for_join(self) -> tuple[dict[str, DataEvent], list[tuple[str, bytes, bool]]]:
        """What a joiner gets: JSON values (with series) in ``joined``, up to its budget.

        Arrays and tables, and JSON values past ``max_join_bytes``, are returned as
        (topic, frame, binary) to send after ``joined``, each under the send-queue bound.
        """
        inline: dict[str, DataEvent] = {}
        follow: list[tuple[str, bytes, bool]] = []
        budget = self._settings.max_join_bytes
        for topic, (event, frame, binary) in self._latest.items():
            series = None if binary else self._series.get(topic)
            size = len(frame) + sum(len(raw) + 24 for _, raw in series or ())
            if binary or size > budget:
                follow.append((topic, frame, binary))
                continue
            budget -= size
            inline[topic] = msgspec.structs.replace(event, series=list(series) if series else None)
        return inline, follow
