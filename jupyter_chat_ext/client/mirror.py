"""RoomState: one room as the client has seen it, changed only by frames from the server.

It holds the messages (in ``seq`` order, without duplicates), the latest value and
recent series of each topic, the members, who is typing and a private room's
access, and applies ``joined``, ``message``, ``data``, ``presence``, ``typing``,
``access`` and history frames to them. It needs no socket and calls no callback:
each ``apply_*`` returns what is new, for the :class:`~.room.Room` to announce. Reads
are safe from any thread; the ``apply_*`` methods run on the client's loop thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import msgspec

from .. import protocol as p
from .. import values

log = logging.getLogger(__name__)


def to_dict(frame: msgspec.Struct) -> dict[str, Any]:
    """A frame (or part of one) as the plain dict callers see, without its ``op``."""
    data: dict[str, Any] = msgspec.to_builtins(frame)
    data.pop("op", None)
    return data


def access_dict(frame: p.Access) -> dict[str, Any]:
    """A private room's owner and members, as ``Room.access`` and ``invite()`` give them."""
    access = to_dict(frame)
    access.pop("id", None)
    return access


class RoomState:
    """The state of room ``name`` built from the server's frames (see the module docstring)."""

    def __init__(self, name: str, series_length: int = 100) -> None:
        self.name = name
        self.series_length = series_length
        self.epoch: str | None = None
        self.seq = 0
        self.history: list[dict[str, Any]] = []  # what the first join brought
        self.joined = False
        self.access: dict[str, Any] | None = None  # owner and members of a private room
        self._messages: list[dict[str, Any]] = []
        self._values: dict[str, Any] = {}
        self._series: dict[str, deque[tuple[float, Any]]] = {}
        self._members: dict[str, dict[str, Any]] = {}
        self._typing: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._invalid_topics: set[str] = set()  # topics whose invalid values were logged

    # ---- reads (any thread) ---------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """History and every message since, in seq order, without duplicates."""
        with self._lock:
            return list(self._messages)

    @property
    def values(self) -> dict[str, Any]:
        """The latest value seen for each topic."""
        with self._lock:
            return dict(self._values)

    @property
    def members(self) -> list[dict[str, Any]]:
        """The users in the room now (each once)."""
        with self._lock:
            return list(self._members.values())

    @property
    def typing_users(self) -> list[dict[str, Any]]:
        """The other users typing now."""
        with self._lock:
            return list(self._typing.values())

    def series(self, topic: str) -> list[tuple[float, Any]]:
        """Recent ``(timestamp, value)`` pairs of ``topic``, oldest first."""
        with self._lock:
            return list(self._series.get(topic, ()))

    def set_value(self, topic: str, value: Any) -> None:
        """Show a value published here at once, before the server echoes it."""
        with self._lock:
            self._values[topic] = value

    # ---- frames from the server (the client's loop thread) ---------------------------

    def apply_joined(self, frame: p.Joined) -> list[dict[str, Any]]:
        """Take a (re)join's snapshot; returns the messages not seen before, in order.

        A resume that the server recovered brings exactly the gap. One it could not
        recover (``recovered=false``) replaces the messages with the server's recent
        history; from the same epoch the new ones are those past our ``seq``, from a
        new epoch (the server's history was reset) those newer than our last.
        """
        history = [to_dict(m) for m in frame.history]
        fresh: list[dict[str, Any]]
        with self._lock:
            if frame.recovered and frame.epoch == self.epoch:
                fresh = [m for m in history if m["seq"] > self.seq]
                self._messages.extend(fresh)
            else:
                if not self.joined and self.epoch is None:
                    self.history = history
                    fresh = []
                elif frame.epoch == self.epoch:
                    fresh = [m for m in history if m["seq"] > self.seq]
                else:
                    last_ts = self._messages[-1]["ts"] if self._messages else 0.0
                    fresh = [m for m in history if m["ts"] > last_ts]
                self._messages = history
            self.epoch = frame.epoch
            self.seq = max(frame.seq, history[-1]["seq"] if history else 0)
            self._members = {u.username: to_dict(u) for u in frame.members}
            for topic, event in frame.values.items():  # each apart: a bad one stays alone
                user = event.user.username
                self._values[topic] = self._decode_value(topic, user, event.value)
                recent = [
                    (ts, self._decode_value(topic, user, raw)) for ts, raw in event.series or []
                ]
                self._series[topic] = deque(recent, maxlen=self.series_length)
            self._typing.clear()
            self.joined = True
            self.access = access_dict(frame.access) if frame.access else None
        return fresh

    def apply_earlier(self, frame: p.HistoryPage) -> list[dict[str, Any]]:
        """Put a page of older messages before the held ones; returns those added."""
        with self._lock:
            first = self._messages[0]["seq"] if self._messages else self.seq + 1
            older = [to_dict(m) for m in frame.messages if m.seq < first]
            self._messages[:0] = older
        return older

    def apply_message(self, frame: p.Message) -> dict[str, Any] | None:
        """Add a new message; returns it, or None for one already held (by ``seq``)."""
        with self._lock:
            if frame.seq <= self.seq:
                return None
            message = to_dict(frame)
            self._messages.append(message)
            self.seq = frame.seq
            self._typing.pop(frame.user.username, None)
        return message

    def apply_data(self, frame: p.DataEvent, payload: memoryview | None = None) -> dict[str, Any]:
        """Take a live value (its raw buffers in ``payload``); returns the event for callbacks."""
        value = self._decode_value(
            frame.topic, frame.user.username, frame.value, frame.buffers, payload
        )
        event = {
            "room": frame.room,
            "topic": frame.topic,
            "value": value,
            "user": to_dict(frame.user),
            "ts": frame.ts,
            "id": frame.id,
        }
        with self._lock:
            self._values[frame.topic] = value
            series = self._series.get(frame.topic)
            if series is None:
                series = self._series[frame.topic] = deque(maxlen=self.series_length)
            series.append((frame.ts, value))
        return event

    def apply_presence(self, frame: p.Presence) -> dict[str, Any]:
        """An arrival or departure; returns ``{"joined": user}`` and/or ``{"left": user}``."""
        event: dict[str, Any] = {}
        with self._lock:
            if frame.joined is not None:
                event["joined"] = self._members[frame.joined.username] = to_dict(frame.joined)
            if frame.left is not None:
                self._members.pop(frame.left.username, None)
                self._typing.pop(frame.left.username, None)
                event["left"] = to_dict(frame.left)
        return event

    def apply_typing(self, frame: p.TypingEvent) -> None:
        """Someone started or stopped typing."""
        with self._lock:
            if frame.active:
                self._typing[frame.user.username] = to_dict(frame.user)
            else:
                self._typing.pop(frame.user.username, None)

    def apply_access(self, frame: p.Access) -> None:
        """A private room's owner and members changed."""
        self.access = access_dict(frame)

    def _decode_value(
        self,
        topic: str,
        user: str,
        raw: msgspec.Raw,
        sizes: list[int] | None = None,
        payload: memoryview | None = None,
    ) -> Any:
        """Decode one received value; a bad one becomes :class:`values.InvalidValue`.

        Another user may publish anything, so this never raises. The first invalid
        value of each topic is logged at warning (without its payload), later ones
        at debug, so one hostile publisher cannot flood the log.
        """
        header = bytes(raw)
        try:
            value = values.decode(header, sizes, payload)
        except Exception as exc:  # values.decode does not raise; this is the last guard
            value = values.InvalidValue(header, f"{type(exc).__name__}: {exc}"[:200])
        if isinstance(value, values.InvalidValue):
            level = logging.DEBUG if topic in self._invalid_topics else logging.WARNING
            self._invalid_topics.add(topic)
            log.log(
                level,
                "chat: room %r, topic %r: an invalid value from %r is kept as InvalidValue: %s",
                self.name,
                topic[:80],
                user[:80],
                value.reason,
            )
        return value
