"""RoomState: one room as the client has seen it, changed only by frames from the server.

It holds the messages (in ``seq`` order, without duplicates), the latest value and
recent series of each topic, the members, who is typing and a private room's
access, and applies ``joined``, ``message``, ``data``, ``presence``, ``typing``,
``access`` and history frames to them. It needs no socket and calls no callback:
each ``apply_*`` returns what is new, for the :class:`~.room.Room` to announce. Reads
are safe from any thread; the ``apply_*`` methods run on the client's loop thread.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import deque
from typing import Any
from urllib.parse import urljoin

import msgspec

from .. import protocol as p
from .. import values

log = logging.getLogger(__name__)


def to_dict(frame: msgspec.Struct) -> dict[str, Any]:
    """A frame (or part of one) as the plain dict callers see, without its ``op``."""
    data: dict[str, Any] = msgspec.to_builtins(frame)
    data.pop("op", None)
    return data


# A message dict always has these (the wire leaves them out at their defaults).
_MESSAGE_DEFAULTS: dict[str, Any] = {
    "reply_to": None,
    "replies": 0,
    "edited": None,
    "deleted": False,
    "mentions": [],
    "rev": 0,
    "attachment": None,
}
# An attachment dict always has these (the wire leaves them out at their defaults).
_ATTACHMENT_DEFAULTS: dict[str, Any] = {"kind": "file", "preview": {}, "provenance": {}}
# What a change may change in a message (the rest is fixed when it is posted); a
# deletion takes the attachment away.
_CHANGEABLE = ("body", "replies", "edited", "deleted", "reactions", "mentions", "rev", "attachment")


def message_dict(frame: p.Message, base_url: str = "") -> dict[str, Any]:
    """A message as callers see it: every field present, ``reactions`` included.

    An attachment's ``url`` is made absolute against ``base_url``, the server's.
    """
    message = to_dict(frame)
    message.pop("parent_replies", None)
    for name, default in _MESSAGE_DEFAULTS.items():
        message.setdefault(name, list(default) if isinstance(default, list) else default)
    message.setdefault("reactions", {})
    attachment = message["attachment"]
    if attachment is not None:
        for name, default in _ATTACHMENT_DEFAULTS.items():
            attachment.setdefault(name, dict(default) if isinstance(default, dict) else default)
        if base_url:
            attachment["url"] = urljoin(base_url, attachment["url"])
    return message


def found_dict(frame: p.Found, base_url: str = "") -> dict[str, Any]:
    """A search result: its message dict, with ``marks`` as ``(start, end)`` pairs."""
    found = message_dict(frame, base_url)
    found.pop("marks", None)
    found["marks"] = [(start, end) for start, end in frame.marks]
    return found


def access_dict(frame: p.Access) -> dict[str, Any]:
    """A private room's owner and members, as ``Room.access`` and ``invite()`` give them."""
    access = to_dict(frame)
    access.pop("id", None)
    return access


class RoomState:
    """The state of room ``name`` built from the server's frames (see the module docstring)."""

    def __init__(self, name: str, series_length: int = 100, base_url: str = "") -> None:
        self.name = name
        self.base_url = base_url  # the server's, against which attachment URLs are made absolute
        self.series_length = series_length
        self.epoch: str | None = None
        self.seq = 0
        self.read = 0  # our read marker here (the server's, moved by any of our connections)
        self.history: list[dict[str, Any]] = []  # what the first join brought
        self.joined = False
        self.access: dict[str, Any] | None = None  # owner and members of a private room
        self._messages: list[dict[str, Any]] = []
        self._values: dict[str, Any] = {}
        self._series: dict[str, deque[tuple[float, Any]]] = {}
        self._members: dict[str, dict[str, Any]] = {}
        self.member_count = 0  # members in the room (the server's count)
        self._typing: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._invalid_topics: set[str] = set()  # topics whose invalid values were logged
        self._changed: list[dict[str, Any]] = []  # changed messages not yet announced
        # Held: every message from seq _start on, but for those in the _holes (open
        # (after, before) ranges of seq left between a window loaded around an older
        # message and the messages held after it).
        self._start = 1
        self._holes: list[tuple[int, int]] = []

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
        """The members known here: ``joined``'s first page, arrivals since, pages loaded."""
        with self._lock:
            return list(self._members.values())

    @property
    def typing_users(self) -> list[dict[str, Any]]:
        """The other users typing now."""
        with self._lock:
            return list(self._typing.values())

    def message(self, seq: int) -> dict[str, Any] | None:
        """The held message ``seq``, or None."""
        with self._lock:
            return self._find(seq)

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """The held messages that carry an attachment, in seq order."""
        with self._lock:
            return [m for m in self._messages if m["attachment"] is not None]

    @property
    def holes(self) -> list[tuple[int, int]]:
        """The ``(after, before)`` seq ranges between held messages that may lack some."""
        with self._lock:
            return list(self._holes)

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
        history = [message_dict(m, self.base_url) for m in frame.history]
        fresh: list[dict[str, Any]]
        with self._lock:
            if frame.recovered and frame.epoch == self.epoch:
                fresh = []
                # The gap's messages and changes, applied in seq order (a reply's count
                # and a change's state each count only if newer than what is held).
                entries: list[tuple[int, p.Message | p.Change, dict[str, Any]]] = [
                    (m.seq, m, d) for m, d in zip(frame.history, history, strict=True)
                ]
                entries += [
                    (c.seq, c, message_dict(c.message, self.base_url)) for c in frame.changes
                ]
                for seq, entry, data in sorted(entries, key=lambda e: e[0]):
                    if isinstance(entry, p.Change):
                        self._restate(data)
                    elif seq > self.seq:
                        fresh.append(data)
                        self._add(data, entry.parent_replies)
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
                self._start = history[0]["seq"] if history else frame.seq + 1
                self._holes = []
            self.epoch = frame.epoch
            self.seq = max(frame.seq, history[-1]["seq"] if history else 0)
            self._members = {u.username: to_dict(u) for u in frame.members}
            self.member_count = frame.member_count or len(frame.members)
            for topic, event in frame.values.items():  # each apart: a bad one stays alone
                user = event.user.username
                self._values[topic] = self._decode_value(topic, user, event.value)
                recent = [
                    (ts, self._decode_value(topic, user, raw)) for ts, raw in event.series or []
                ]
                self._series[topic] = deque(recent, maxlen=self.series_length)
            self._typing.clear()
            self.read = max(self.read, frame.read)
            self.joined = True
            self.access = access_dict(frame.access) if frame.access else None
        return fresh

    def apply_earlier(self, frame: p.HistoryPage) -> list[dict[str, Any]]:
        """Put a page of older messages before the held ones; returns those added."""
        with self._lock:
            first = self._messages[0]["seq"] if self._messages else self.seq + 1
            older = [message_dict(m, self.base_url) for m in frame.messages if m.seq < first]
            self._messages[:0] = older
            self._start = min(self._start, older[0]["seq"]) if older else 1
        return older

    def apply_page(
        self, request: p.HistoryRequest, frame: p.HistoryPage, page_size: int
    ) -> list[dict[str, Any]]:
        """Merge a page asked for ``before`` any seq, or ``around`` one; returns those added.

        The messages stay in seq order without duplicates. A page that does not reach
        the held messages leaves a hole between them (see :attr:`holes`); a page that
        covers part of a hole fills that part.
        """
        limit = min(request.limit or page_size, page_size)
        got = [message_dict(m, self.base_url) for m in frame.messages]
        # The seqs the page covers whole: [low, high], high None for "to the end".
        high: int | None
        if request.around is not None:
            half = limit // 2 if limit > 1 else 0
            before = [m for m in got if m["seq"] < request.around]
            if len(before) < half:
                low = 1  # fewer than asked: the room's beginning
            elif before:
                low = before[0]["seq"]
            else:
                low = request.around  # none asked for
            after = len(got) - len(before)
            high = None if after < limit - len(before) else got[-1]["seq"]
        else:
            assert request.before is not None
            low = 1 if len(got) < limit else got[0]["seq"]
            high = request.before - 1
        with self._lock:
            return self._merge(got, low, self.seq if high is None else high)

    def _merge(self, got: list[dict[str, Any]], low: int, high: int) -> list[dict[str, Any]]:
        """Put ``got`` among the held messages; all of seqs ``low`` to ``high`` are held now.

        Called with the lock held.
        """
        added = []
        for message in got:
            held = self._find(message["seq"])
            if held is None:
                bisect.insort(self._messages, message, key=lambda m: m["seq"])
                added.append(message)
            elif held["rev"] < message["rev"]:
                for name in _CHANGEABLE:
                    held[name] = message[name]
        if high < self._start - 1:  # not reaching the held messages: a hole between
            self._holes.append((high, self._start))
        self._start = min(self._start, low)
        holes = []
        for after, before in self._holes:
            if high <= after or low >= before:
                holes.append((after, before))
                continue
            if low - after > 1:
                holes.append((after, low))
            if before - high > 1:
                holes.append((high, before))
        self._holes = sorted(holes)
        return added

    def apply_message(self, frame: p.Message) -> dict[str, Any] | None:
        """Add a new message; returns it, or None for one already held (by ``seq``)."""
        with self._lock:
            if frame.seq <= self.seq:
                return None
            message = message_dict(frame, self.base_url)
            self._add(message, frame.parent_replies)
            self.seq = frame.seq
            self._typing.pop(frame.user.username, None)
        return message

    def apply_change(self, frame: p.Change) -> dict[str, Any] | None:
        """An edit, deletion or reaction; returns the changed message if held and newer."""
        with self._lock:
            self.seq = max(self.seq, frame.seq)
            return self._restate(message_dict(frame.message, self.base_url))

    def mark_read(self, seq: int) -> None:
        """Our read marker moved (it only moves forward)."""
        with self._lock:
            self.read = max(self.read, seq)

    def unread(self, me: str | None) -> int:
        """Held messages from others, not deleted, past the read marker."""
        with self._lock:
            return sum(
                1
                for m in self._messages
                if m["seq"] > self.read and not m["deleted"] and m["user"]["username"] != me
            )

    def take_changes(self) -> list[dict[str, Any]]:
        """The held messages that changed (edited, deleted, reacted, replied to) since last."""
        with self._lock:
            changed, self._changed = self._changed, []
        return changed

    def _find(self, seq: int) -> dict[str, Any] | None:
        index = bisect.bisect_left(self._messages, seq, key=lambda m: m["seq"])
        if index < len(self._messages) and self._messages[index]["seq"] == seq:
            return self._messages[index]
        return None

    def _add(self, message: dict[str, Any], parent_replies: int | None) -> None:
        """Append a new message; a reply updates its parent's count (lock held)."""
        self._messages.append(message)
        reply_to = message["reply_to"]
        if reply_to is None or parent_replies is None:
            return
        parent = self._find(reply_to)
        if parent is not None and parent["rev"] < message["seq"]:
            parent["replies"] = parent_replies
            parent["rev"] = message["seq"]
            self._changed.append(dict(parent))

    def _restate(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Take a message's newer state; returns it as now held, or None (lock held)."""
        held = self._find(state["seq"])
        if held is None or held["rev"] > state["rev"]:
            return None
        for name in _CHANGEABLE:
            held[name] = state[name]
        self._changed.append(dict(held))
        return dict(held)

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

    def apply_presence(self, frame: p.Presence) -> list[dict[str, Any]]:
        """A batch of arrivals and departures: ``{"joined": user}`` / ``{"left": user}`` each.

        A crowd's (``more``) gives only the count: the members known stay as they are
        until :meth:`~jupyter_chat_ext.client.room.Room.load_members` loads them again.
        """
        events: list[dict[str, Any]] = []
        with self._lock:
            for user in frame.joined:
                events.append({"joined": to_dict(user)})
                self._members[user.username] = events[-1]["joined"]
            for user in frame.left:
                self._members.pop(user.username, None)
                self._typing.pop(user.username, None)
                events.append({"left": to_dict(user)})
            self.member_count = max(frame.count, 0)
        return events

    def apply_members(self, frame: p.MembersPage, first: bool) -> list[dict[str, Any]]:
        """A page of members (a ``members`` answer); the ``first`` starts the list over."""
        with self._lock:
            page = [to_dict(user) for user in frame.members]
            if first:
                self._members = {}
            for user in page:
                self._members[user["username"]] = user
            self.member_count = max(frame.count, 0)
        return page

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
