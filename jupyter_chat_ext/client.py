"""ChatClient: talk to a chat server from a kernel, a script or a test.

The client runs its own event loop on a background thread, so its blocking calls
work from a busy notebook cell and its callbacks run while the cell computes.
It reconnects by itself with jittered exponential backoff and resumes every room
from the last ``seq`` it holds: no message is lost or shown twice.

Example::

    from jupyter_chat_ext import ChatClient

    client = ChatClient()              # inside a kernel: finds its server
    room = client.join("general")
    room.on_message(lambda m: print(m["user"]["name"], m["body"]))
    room.send("hello")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import ssl
import threading
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from http.cookies import SimpleCookie
from typing import Any, TypeVar

import msgspec
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect
from typing_extensions import assert_never

from . import protocol as p
from . import values
from .discovery import DiscoveryError, discover
from .identity_store import load_cookies, save_cookies
from .kernel import current_delegation, delegation_user
from .limits import TokenBucket

log = logging.getLogger(__name__)

T = TypeVar("T")
MessageCallback = Callable[[dict[str, Any]], None]


_INFLIGHT_MAX = 1024 * 1024  # bytes of live values written but not yet flushed
_OUTBOX_PER_TOPIC = 1000  # queued values per topic before the oldest are dropped
_OUTBOX_BYTES = 16 * 1024 * 1024  # queued bytes of values before the oldest are dropped
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
_PLAIN_HTTP_PROBE_AFTER = 1.0  # seconds of TLS handshake before asking in plain http


class ChatError(Exception):
    """Anything that went wrong for a caller of the client.

    ``code`` is the server's error code (see docs/protocol.md) or one of the
    client's own: ``no_server``, ``refused``, ``timeout``, ``closed``,
    ``wrong_thread``, ``invalid_value``. The message says what to do.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _to_dict(frame: msgspec.Struct) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(frame)
    data.pop("op", None)
    return data


class Room:
    """A joined room. Reads are safe from any thread; callbacks run on the client's thread."""

    def __init__(self, client: ChatClient, name: str) -> None:
        self._client = client
        self.name = name
        self.epoch: str | None = None
        self.seq = 0
        self.history: list[dict[str, Any]] = []
        self._messages: list[dict[str, Any]] = []
        self._values: dict[str, Any] = {}
        self._series: dict[str, deque[tuple[float, Any]]] = {}
        self._streams: dict[str, Stream] = {}
        self._members: dict[str, dict[str, Any]] = {}
        self._typing: dict[str, dict[str, Any]] = {}
        self._message_callbacks: list[MessageCallback] = []
        self._data_callbacks: list[MessageCallback] = []
        self._presence_callbacks: list[MessageCallback] = []
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[Any]] = []
        self._following = 0
        self.access: dict[str, Any] | None = None  # owner and members of a private room
        self.joined = False
        self._gone: str | None = None  # why this room can no longer be used (left, removed)
        self._invalid_topics: set[str] = set()  # topics whose invalid values were logged

    def __repr__(self) -> str:
        return f"<Room {self.name!r} seq={self.seq} members={len(self._members)}>"

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

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` for every new message; usable as a decorator."""
        self._message_callbacks.append(callback)
        return callback

    def on_data(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(event)`` for every live value; ``event`` has topic, value, user, ts."""
        self._data_callbacks.append(callback)
        return callback

    def on_presence(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback({"joined": user})`` or ``callback({"left": user})`` on arrivals."""
        self._presence_callbacks.append(callback)
        return callback

    def send(self, body: str, timeout: float | None = None) -> dict[str, Any]:
        """Post a message and block until the server acknowledges it.

        Returns the stamped message (seq, id, user, ts, body). If the connection is
        down the message waits and is sent when it returns; on timeout it stays queued.
        """
        self._check_usable()
        if not isinstance(body, str) or not body.strip():
            raise ChatError("invalid_field", "a message must be a non-empty string")
        limit = self._client.limits.max_message_size if self._client.limits else None
        if limit is not None and len(body.encode()) > limit:
            raise ChatError(
                "message_too_large",
                f"message is {len(body.encode())} bytes; the server's limit is {limit}. "
                "Split it or share a file instead.",
            )
        return self._client._call(self._client._send(self, body), timeout)

    def publish(self, topic: str, value: Any) -> str:
        """Publish a live value on ``topic``; never waits for the network.

        ``value`` is JSON, a numpy array or a pandas Series/DataFrame (arrays travel
        as raw bytes and arrive with the same dtype and shape). ``room.values[topic]``
        shows it at once. Values go out in order, paced to the server's rate; a
        publisher faster than that never waits: past 1,000 queued values of a topic
        (or 16 MiB in all) the oldest are dropped, so the newest always get through.
        Values published while disconnected are sent on reconnect.
        Returns the id the value carries (see :meth:`link`).
        """
        if self._client._closing:
            raise ChatError("closed", "the client is closed; create a new ChatClient")
        self._check_usable()
        try:
            p.check_topic(topic)
        except p.ProtocolError as exc:
            raise ChatError(exc.code, exc.message) from None
        try:
            tree, buffers = values.encode(value)
        except values.UnsupportedValue as exc:
            raise ChatError("invalid_value", str(exc)) from None
        size = len(tree) + sum(b.nbytes for b in buffers or ())
        limit = self._client.limits.max_value_size if self._client.limits else None
        if limit is not None and size > limit:
            raise ChatError(
                "value_too_large",
                f"value is {size} bytes; the server's limit is {limit}. "
                "Publish a smaller or downsampled value.",
            )
        value_id = uuid.uuid4().hex
        frame = p.Data(room=self.name, topic=topic, value=msgspec.Raw(tree), id=value_id)
        if buffers is None:
            data = p.encode(frame)
        else:
            frame.buffers = [b.nbytes for b in buffers]
            data = p.pack_binary(p.encode(frame), list(buffers))  # a copy: safe to mutate now
        with self._lock:
            self._values[topic] = value
        self._client._queue_value(self, topic, data, buffers is not None)
        return value_id

    def stream(self, topic: str) -> Stream:
        """The live values of ``topic``: ``latest``, ``series``, callbacks, ``async for``."""
        with self._lock:
            if topic not in self._streams:
                self._streams[topic] = Stream(self, topic)
            return self._streams[topic]

    def link(self, widget: Any, trait: str = "value", topic: str | None = None) -> Link:
        """Keep ``widget.<trait>`` equal in every notebook that links the same topic.

        Both ways and without echo loops; the last writer wins. Returns a
        :class:`Link` whose ``unlink()`` stops it.
        """
        return Link(self, widget, trait, topic or trait)

    def load_earlier(self, limit: int = 100, timeout: float | None = None) -> list[dict[str, Any]]:
        """Fetch up to ``limit`` messages older than the oldest held; they join ``messages``.

        Returns them (oldest first); an empty list means the room's beginning.
        """
        return self._client._call(self._client._load_earlier(self, limit), timeout)

    def invite(self, *usernames: str, timeout: float | None = None) -> dict[str, Any]:
        """Let ``usernames`` join this private room (its owner only); returns the access."""
        frame = p.AccessChange(room=self.name, id=uuid.uuid4().hex, add=list(usernames))
        return self._client._call(self._client._access(frame), timeout)

    def remove(self, *usernames: str, timeout: float | None = None) -> dict[str, Any]:
        """Take ``usernames`` out of this private room (its owner only); they are evicted."""
        frame = p.AccessChange(room=self.name, id=uuid.uuid4().hex, remove=list(usernames))
        return self._client._call(self._client._access(frame), timeout)

    def typing(self, active: bool = True) -> None:
        """Show (or stop showing) that you are typing; it expires by itself."""
        self._client._post(self._client._send_typing, self, active)

    def leave(self) -> None:
        """Leave the room; its callbacks are not called any more.

        Sends still waiting for an acknowledgement fail with ``not_joined`` and are
        never sent; values not yet sent are dropped. Join again for a new :class:`Room`.
        """
        self._gone = f"you left room {self.name!r}"
        self._client._post(self._client._leave, self)

    def _check_usable(self) -> None:
        if self._gone is not None:
            raise ChatError(
                "not_joined", f"{self._gone}; join it again with client.join({self.name!r})"
            )

    # ---- called on the client's loop thread -------------------------------------

    def _apply_joined(self, frame: p.Joined) -> None:
        history = [_to_dict(m) for m in frame.history]
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
            self._members = {u.username: _to_dict(u) for u in frame.members}
            for topic, event in frame.values.items():  # each apart: a bad one stays alone
                user = event.user.username
                self._values[topic] = self._decode_value(topic, user, event.value)
                recent = [
                    (ts, self._decode_value(topic, user, raw)) for ts, raw in event.series or []
                ]
                self._series[topic] = deque(recent, maxlen=self._client.series_length)
            self._typing.clear()
            self.joined = True
            self.access = _to_dict(frame.access) if frame.access else None
        for message in fresh:
            self._client._settle_send(message)
            self._fire(self._message_callbacks, message)

    def _apply_earlier(self, frame: p.HistoryPage) -> list[dict[str, Any]]:
        with self._lock:
            first = self._messages[0]["seq"] if self._messages else self.seq + 1
            older = [_to_dict(m) for m in frame.messages if m.seq < first]
            self._messages[:0] = older
        return older

    def _apply_message(self, frame: p.Message) -> None:
        with self._lock:
            if frame.seq <= self.seq:
                return
            message = _to_dict(frame)
            self._messages.append(message)
            self.seq = frame.seq
            self._typing.pop(frame.user.username, None)
        self._fire(self._message_callbacks, message)

    def _apply_data(self, frame: p.DataEvent, payload: memoryview | None = None) -> None:
        value = self._decode_value(
            frame.topic, frame.user.username, frame.value, frame.buffers, payload
        )
        event = {
            "room": frame.room,
            "topic": frame.topic,
            "value": value,
            "user": _to_dict(frame.user),
            "ts": frame.ts,
            "id": frame.id,
        }
        with self._lock:
            self._values[frame.topic] = value
            series = self._series.get(frame.topic)
            if series is None:
                series = self._series[frame.topic] = deque(maxlen=self._client.series_length)
            series.append((frame.ts, value))
            stream = self._streams.get(frame.topic)
        self._fire(self._data_callbacks, event)
        if stream is not None:
            stream._deliver(event)

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

    def _apply_presence(self, frame: p.Presence) -> None:
        event: dict[str, Any] = {}
        with self._lock:
            if frame.joined is not None:
                event["joined"] = self._members[frame.joined.username] = _to_dict(frame.joined)
            if frame.left is not None:
                self._members.pop(frame.left.username, None)
                self._typing.pop(frame.left.username, None)
                event["left"] = _to_dict(frame.left)
        self._fire(self._presence_callbacks, event)

    def _apply_typing(self, frame: p.TypingEvent) -> None:
        with self._lock:
            if frame.active:
                self._typing[frame.user.username] = _to_dict(frame.user)
            else:
                self._typing.pop(frame.user.username, None)

    def _fire(self, callbacks: list[MessageCallback], event: dict[str, Any]) -> None:
        for callback in list(callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("chat: callback %r failed in room %r", callback, self.name)


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
        with self.room._lock:
            return list(self.room._series.get(self.topic, ()))

    def on_value(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(event)`` for each new value (event: value, user, ts, id)."""
        self._callbacks.append(callback)
        return callback

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
        self.room._fire(self._callbacks, event)
        with self._lock:
            queues = list(self._queues)
        for loop, queue in queues:
            loop.call_soon_threadsafe(_offer_latest, queue, event["value"])


def _offer_latest(queue: asyncio.Queue[Any], value: Any) -> None:
    if queue.full():
        queue.get_nowait()  # latest-wins: drop the oldest for a slow consumer
    queue.put_nowait(value)


class Link:
    """A widget trait kept equal across notebooks through a topic (see :meth:`Room.link`)."""

    def __init__(self, room: Room, widget: Any, trait: str, topic: str) -> None:
        self.room = room
        self.widget = widget
        self.trait = trait
        self.topic = topic
        self._own: deque[str] = deque(maxlen=256)  # ids of values we published
        self._applying = False
        self._stream = room.stream(topic)
        widget.observe(self._local_change, names=trait)
        self._stream.on_value(self._remote_value)
        current = room.values.get(topic)
        if topic in room.values and not isinstance(current, values.InvalidValue):
            self._apply(current)
        else:
            self._own.append(room.publish(topic, getattr(widget, trait)))

    def unlink(self) -> None:
        """Stop keeping the trait in step."""
        self.widget.unobserve(self._local_change, names=self.trait)
        if self._remote_value in self._stream._callbacks:
            self._stream._callbacks.remove(self._remote_value)

    def _local_change(self, change: dict[str, Any]) -> None:
        if not self._applying:
            self._own.append(self.room.publish(self.topic, change["new"]))

    def _remote_value(self, event: dict[str, Any]) -> None:
        if event.get("id") in self._own:
            return  # our own value coming back
        if isinstance(event["value"], values.InvalidValue):
            return  # another user's bad value never reaches the widget (logged once)
        self._schedule(lambda: self._apply(event["value"]))

    def _apply(self, value: Any) -> None:
        self._applying = True
        try:
            setattr(self.widget, self.trait, value)
        finally:
            self._applying = False

    @staticmethod
    def _schedule(func: Callable[[], None]) -> None:
        # Widgets belong to the kernel's main thread: apply there when in a kernel.
        try:
            from IPython.core.getipython import get_ipython

            kernel = getattr(get_ipython(), "kernel", None)
        except ImportError:
            kernel = None
        if kernel is not None and getattr(kernel, "io_loop", None) is not None:
            kernel.io_loop.add_callback(func)
        else:
            func()


class ChatClient:
    """A connection to a chat server, usable from any thread.

    ``ChatClient()`` inside a kernel started by Jupyter finds its server by itself;
    elsewhere pass ``url`` (the server's base URL) and ``token``. The constructor
    returns once connected, or raises :class:`ChatError`.

    ``delegation`` is a signed identity from ``POST {base_url}chat-ext/delegation``
    (the Chat widget obtains one for its viewer): with it the client speaks as that
    person, marked as a kernel. By default, in a kernel, the client speaks as the
    person who ran the cell, if their tab shows a Chat widget (see
    :mod:`jupyter_chat_ext.kernel`); ``delegation=""`` speaks as the kernel itself.

    ``remember_identity=True`` keeps the identity the server gave this program
    across runs (the server's login cookie, kept per server URL in
    ``<jupyter data dir>/jupyter_chat_ext/identity.json``, readable by you only):
    the CLI uses it, so your commands all speak as one person. By default each
    client is a new identity, so a script can play several people.
    """

    _state = "connected"  # what the on_state callbacks were told last
    _state_callbacks: tuple[Callable[[str], None], ...] = ()

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        delegation: str | None = None,
        series_length: int = 100,
        remember_identity: bool = False,
    ) -> None:
        try:
            server = discover(url, token)
        except DiscoveryError as exc:
            raise ChatError("no_server", str(exc)) from None
        self.url = server.url
        self._token = server.token
        if delegation is None and url is None:
            delegation = current_delegation()
        self.delegation = delegation
        self.timeout = timeout
        self.user: dict[str, Any] = {}
        self.limits: p.Limits | None = None
        self.rooms: dict[str, Room] = {}
        self.remember_identity = remember_identity
        self._cookies: dict[str, str] = load_cookies(self.url) if remember_identity else {}
        self._requests: dict[str, asyncio.Future[Any]] = {}
        self._unacked: dict[str, tuple[Room, p.Send]] = {}
        self._joins: dict[str, p.Join] = {}  # room -> a join() under way
        self.series_length = series_length
        # Live values waiting to go out, in order; bounded per topic and in bytes.
        self._outbox: deque[tuple[tuple[str, str], bytes, bool]] = deque()
        self._outbox_counts: Counter[tuple[str, str]] = Counter()
        self._outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self._flush_scheduled = False
        self._inflight = 0
        self._data_bucket: TokenBucket | None = None
        self._ws: WebSocketClientConnection | None = None
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jupyter-chat-client", daemon=True
        )
        self._thread.start()
        self._connected = asyncio.Event()
        self._runner: concurrent.futures.Future[None] | None = None
        first: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._runner = asyncio.run_coroutine_threadsafe(self._run(first), self._loop)
        try:
            first.result(timeout)
        except concurrent.futures.TimeoutError:
            self.close()
            raise ChatError(
                "timeout",
                f"could not connect to {self.url} within {timeout:g} s; is the server "
                "running and reachable?",
            ) from None
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<ChatClient {self.url} as {self.user.get('username')!r}, {state}>"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while the WebSocket is open and greeted."""
        return self._ws is not None and self._connected.is_set()

    # ---- public API ---------------------------------------------------------------

    def join(
        self,
        room: str,
        timeout: float | None = None,
        *,
        private: bool = False,
        members: list[str] | None = None,
    ) -> Room:
        """Join ``room`` (created if new) and return it once joined, with its history.

        ``private=True`` creates a new room that only you and ``members`` may join
        (you own it: ``room.invite()`` / ``room.remove()``); if a room of that name
        exists already (and is not your own private room) it raises :class:`ChatError`
        with code ``room_exists``, so you never land in someone else's room. Joining a
        private room you are not in raises ``forbidden``.
        """
        if not private and room in self.rooms and self.rooms[room].joined:
            return self.rooms[room]
        return self._call(self._join(room, private, members), timeout)

    def direct(self, username: str, timeout: float | None = None) -> Room:
        """The direct-message room of you and ``username``; only you two can use it."""
        return self.join(p.direct_room(self.user["username"], username), timeout)

    def use_delegation(self, delegation: str | None) -> None:
        """Speak as the person ``delegation`` names from now on.

        A renewal for the same identity is kept for the next reconnect; another
        person, or a new display name, reconnects now.
        """
        if delegation == self.delegation:
            return
        self.delegation = delegation
        named = delegation_user(delegation) if delegation else None
        current = {k: v for k, v in self.user.items() if k != "kernel"}
        if named is not None and named == current:
            return

        def reconnect() -> None:
            if self._ws is not None:
                self._ws.close()

        self._post(reconnect)

    def on_state(self, callback: Callable[[str], None]) -> Callable[[str], None]:
        """Call ``callback("reconnecting")`` when the connection drops, then ``"connected"``.

        The client reconnects by itself; this is for telling a person that it does.
        Callbacks run on the client's thread: keep them short, and do not block.
        """
        self._state_callbacks = (*self._state_callbacks, callback)
        return callback

    def close(self) -> None:
        """Disconnect and stop the background thread. Safe to call twice."""
        if self._closing:
            return
        self._closing = True

        async def shutdown() -> None:
            if self._ws is not None:
                self._ws.close()
            for future in self._requests.values():
                if not future.done():
                    future.set_exception(ChatError("closed", "the client was closed"))

        if self._loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                # The loop thread may be stuck in a callback (e.g. printing to a pipe
                # nobody reads): close anyway rather than raise at the caller.
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            if self._runner is not None:
                self._runner.cancel()
                concurrent.futures.wait([self._runner], timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    # ---- thread plumbing ------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise ChatError(
                "wrong_thread",
                "blocking calls cannot be made from a chat callback; start a thread "
                "or use publish()/typing(), which do not block",
            )
        if self._closing:
            coro.close()
            raise ChatError("closed", "the client is closed; create a new ChatClient")
        timeout = self.timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ChatError(
                "timeout",
                f"no answer from {self.url} within {timeout:g} s"
                + ("" if self.connected else " (disconnected; reconnecting)"),
            ) from None

    def _post(self, func: Callable[..., None], *args: Any) -> None:
        if self._closing:
            raise ChatError("closed", "the client is closed; create a new ChatClient")
        self._loop.call_soon_threadsafe(func, *args)

    # ---- loop side ------------------------------------------------------------------

    def _write_frame(self, frame: msgspec.Struct) -> bool:
        if self._ws is None or not self._connected.is_set():
            return False
        try:
            self._ws.write_message(p.encode(frame))
        except Exception:  # closed meanwhile: the reader notices and reconnects
            return False
        return True

    async def _join(
        self, name: str, private: bool = False, members: list[str] | None = None
    ) -> Room:
        room = self.rooms.setdefault(name, Room(self, name))
        frame = p.Join(room=name, id=uuid.uuid4().hex, private=private, members=members)
        with self._request(frame.id or "") as future:
            room._waiters.append(future)
            self._joins[name] = frame  # what a retry sends (with ``private``)
            # While disconnected, _resume() sends the join once the connection is back.
            self._write_frame(frame)
            try:
                await future
            except ChatError:
                if not room.joined:
                    self.rooms.pop(name, None)
                raise
            finally:
                if self._joins.get(name) is frame:
                    del self._joins[name]
        return room

    @contextlib.contextmanager
    def _request(self, frame_id: str) -> Iterator[asyncio.Future[Any]]:
        """The future that the reply to frame ``frame_id`` settles, while it is awaited."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests[frame_id] = future
        try:
            yield future
        finally:
            self._requests.pop(frame_id, None)

    async def _load_earlier(self, room: Room, limit: int) -> list[dict[str, Any]]:
        messages = room.messages
        before = messages[0]["seq"] if messages else room.seq + 1
        if before <= 1:
            return []
        frame = p.HistoryRequest(room=room.name, id=uuid.uuid4().hex, before=before, limit=limit)
        with self._request(frame.id) as future:
            while not self._write_frame(frame):
                await self._connected.wait()
                await asyncio.sleep(0)  # let the rooms be joined again first
            earlier: list[dict[str, Any]] = await future
            return earlier

    async def _access(self, frame: p.AccessChange) -> dict[str, Any]:
        with self._request(frame.id) as future:
            if not self._write_frame(frame):
                raise ChatError("not_connected", "not connected; try again when reconnected")
            reply: dict[str, Any] = await future
            return reply

    def _send_typing(self, room: Room, active: bool) -> None:
        if room.joined:
            self._write_frame(p.Typing(room=room.name, active=active))

    def _leave(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            joined = room.joined
            self._forget(room)
            if joined:
                self._write_frame(p.Leave(room=room.name))

    def _forget(self, room: Room) -> None:
        """Loop thread: ``room`` is no longer ours; nothing queued for it goes out."""
        self.rooms.pop(room.name, None)
        room.joined = False
        error = ChatError("not_joined", f"{room._gone}; the message was not sent")
        for frame_id, (queued, _) in list(self._unacked.items()):
            if queued is room:
                del self._unacked[frame_id]
                future = self._requests.get(frame_id)
                if future is not None and not future.done():
                    future.set_exception(error)
        for future in room._waiters:
            if not future.done():
                future.set_exception(ChatError("not_joined", f"{room._gone} before it was joined"))
        room._waiters = []
        with self._outbox_lock:
            for key in [key for key, _, _ in self._outbox if key[0] == room.name]:
                self._drop_oldest(key)

    async def _send(self, room: Room, body: str) -> dict[str, Any]:
        room._check_usable()  # left between the call and now
        frame = p.Send(room=room.name, id=uuid.uuid4().hex, body=body)
        with self._request(frame.id) as future:
            self._unacked[frame.id] = (room, frame)
            if room.joined:
                self._write_frame(frame)
            message: dict[str, Any] = await future
            return message

    def _settle_send(self, message: dict[str, Any]) -> None:
        """A message of ours arrived: it acknowledges the send with the same id."""
        if self._unacked.pop(message["id"], None) is None:
            return
        future = self._requests.get(message["id"])
        if future is not None and not future.done():
            future.set_result(message)

    def _queue_value(self, room: Room, topic: str, data: bytes, binary: bool) -> None:
        """Any thread: queue a value, dropping the oldest of its topic past the bounds."""
        key = (room.name, topic)
        with self._outbox_lock:
            if self._outbox_counts[key] >= _OUTBOX_PER_TOPIC:
                self._drop_oldest(key)
            self._outbox.append((key, data, binary))
            self._outbox_counts[key] += 1
            self._outbox_bytes += len(data)
            while self._outbox_bytes > _OUTBOX_BYTES and len(self._outbox) > 1:
                self._drop_oldest(self._outbox[0][0])
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._loop.call_soon_threadsafe(self._flush_values)

    def _drop_oldest(self, key: tuple[str, str]) -> None:
        """Latest-wins under pressure: forget the oldest queued value of ``key``."""
        for index, (queued, data, _) in enumerate(self._outbox):
            if queued == key:
                del self._outbox[index]
                self._outbox_counts[key] -= 1
                self._outbox_bytes -= len(data)
                return

    def _flush_values(self) -> None:
        """Loop thread: send queued values in order, within the rate and in-flight bounds."""
        with self._outbox_lock:
            self._flush_scheduled = False
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return  # _after_join flushes once the rooms are joined again
        while True:
            if self._inflight > _INFLIGHT_MAX:
                return  # resumed when the writes in flight complete
            with self._outbox_lock:
                if not self._outbox:
                    return
                key, data, binary = self._outbox[0]
                room = self.rooms.get(key[0])
                if room is None or not room.joined:
                    if room is None:  # left the room: its values go nowhere
                        self._drop_oldest(key)
                        continue
                    return
            if self._data_bucket is not None:
                wait = self._data_bucket.take()
                if wait:
                    self._loop.call_later(wait, self._flush_values)
                    return
            try:
                future = ws.write_message(data, binary=binary)
            except Exception:  # closed meanwhile: the value waits for the next connection
                return
            with self._outbox_lock:
                if self._outbox and self._outbox[0][1] is data:
                    self._outbox.popleft()
                    self._outbox_counts[key] -= 1
                    self._outbox_bytes -= len(data)
            self._inflight += len(data)
            future.add_done_callback(functools.partial(self._written, len(data)))

    def _written(self, size: int, _: object = None) -> None:
        self._inflight -= size
        if self._outbox and not self._flush_scheduled:
            self._flush_values()

    async def _connect(self) -> WebSocketClientConnection:
        headers = {}
        if self._token:
            headers["Authorization"] = f"token {self._token}"
        if self.delegation:
            headers[p.DELEGATION_HEADER] = self.delegation
        if self._cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
        url = self.url.replace("http", "ws", 1) + p.WS_PATH
        request = HTTPRequest(url, headers=headers, connect_timeout=self.timeout)
        connecting = asyncio.ensure_future(
            websocket_connect(request, max_message_size=64 * 1024 * 1024)
        )
        if self.url.startswith("https://"):
            # A plain-http server never answers a TLS handshake: it waits for a request
            # line, and the handshake would only time out. Ask it in plain http instead.
            done, _ = await asyncio.wait([connecting], timeout=_PLAIN_HTTP_PROBE_AFTER)
            if not done and await self._speaks_plain_http():
                connecting.cancel()
                plain = "http://" + self.url.removeprefix("https://")
                raise ChatError(
                    "no_server", f"{self.url} speaks plain http, not https: use {plain}"
                )
        ws = await connecting
        before = dict(self._cookies)
        for header in ws.headers.get_list("Set-Cookie") if ws.headers else []:
            # jupyter_server names a token-authenticated user in a login cookie; sending
            # it back keeps the same identity across reconnects.
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            self._cookies.update({k: m.value for k, m in cookie.items()})
        if self.remember_identity and self._cookies != before:
            save_cookies(self.url, self._cookies)
        return ws

    async def _speaks_plain_http(self) -> bool:
        """Whether the host and port of an ``https://`` URL answer an http request.

        No credential goes with it. A TLS server that answers plain http at all says
        400 or redirects to https, so neither counts.
        """
        plain = "http://" + self.url.removeprefix("https://")
        response = await AsyncHTTPClient().fetch(
            plain, raise_error=False, follow_redirects=False, request_timeout=self.timeout
        )
        location = response.headers.get("Location", "") if response.headers else ""
        return response.code not in (400, 599) and not location.startswith("https://")

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        for callback in self._state_callbacks:
            try:
                callback(state)
            except Exception:
                log.exception("chat: a connection-state callback failed")

    def _connect_error(self, exc: Exception) -> ChatError:
        """What a failed connection attempt means, and what to do; never the token."""
        if isinstance(exc, ChatError):
            return exc
        if isinstance(exc, HTTPClientError) and exc.code == 599:  # no HTTP response at all
            return ChatError(
                "no_server",
                f"could not connect to {self.url}: {exc.message}; is the server running "
                "and reachable at that address?",
            )
        if isinstance(exc, HTTPClientError) and exc.code in (301, 302, 303, 307, 308):
            return ChatError(
                "refused",
                f"{self.url} sent the chat connection to a login page (HTTP {exc.code}): the "
                "token is missing or wrong, or this is not the server's base URL (the part "
                "of a Jupyter page's address before /lab or /tree)",
            )
        if isinstance(exc, HTTPClientError) and exc.code == 404:
            return ChatError(
                "no_server",
                f"{self.url} has no chat endpoint (HTTP 404): give the server's base URL "
                "(the part of a Jupyter page's address before /lab or /tree), and check "
                "that the chat extension is enabled there (jupyter server extension list)",
            )
        if isinstance(exc, HTTPClientError):
            return ChatError(
                "refused",
                f"{self.url} refused the connection (HTTP {exc.code}); check the token "
                "(or that the chat extension is enabled on that server)",
            )
        if isinstance(exc, WebSocketError):  # a 200 page where the WebSocket should be
            return ChatError(
                "no_server",
                f"{self.url} answered with a web page, not the chat WebSocket: give the "
                "server's base URL (the part of a Jupyter page's address before /lab or "
                "/tree), and check that the chat extension is enabled there",
            )
        if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
            plain = "http://" + self.url.removeprefix("https://")
            return ChatError("no_server", f"{self.url} speaks plain http, not https: use {plain}")
        return ChatError("no_server", f"cannot reach {self.url}: {exc}; is it running?")

    async def _run(self, first: concurrent.futures.Future[None]) -> None:
        attempt = 0
        while not self._closing:
            try:
                ws = await self._connect()
            except Exception as exc:
                if isinstance(exc, HTTPClientError) and exc.code == 403 and self.delegation:
                    log.warning(
                        "chat: the delegation was refused (expired?); speaking as this "
                        "kernel's own identity. Show the Chat widget again to renew it."
                    )
                    self.delegation = None
                    continue
                error = self._connect_error(exc)
                if not first.done():
                    first.set_exception(error)
                    return
                if error.code == "refused":
                    log.warning("chat: %s", error)
                else:
                    log.debug("chat: reconnect failed: %s", error)
            else:
                attempt = 0
                greeted = asyncio.ensure_future(self._connected.wait())
                greeted.add_done_callback(
                    lambda done: None if done.cancelled() else self._set_state("connected")
                )
                try:
                    await self._serve(ws, first)
                finally:
                    greeted.cancel()
                if self._closing or (first.done() and first.exception() is not None):
                    return
                self._set_state("reconnecting")
            attempt += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _serve(
        self, ws: WebSocketClientConnection, first: concurrent.futures.Future[None]
    ) -> None:
        """Read frames from one connection until it closes."""
        try:
            hello = await ws.read_message()
            if hello is None:
                return
            frame = p.decode_server(hello)
            if isinstance(frame, p.Error):  # refused, e.g. too many connections
                error = ChatError(frame.code, frame.message)
                if not first.done():
                    first.set_exception(error)
                    return
                log.warning("chat: %s refused the connection: %s", self.url, error)
                return
            if not isinstance(frame, p.Hello):
                raise ChatError("bad_frame", f"expected hello, got {type(frame).__name__}")
            self.user = _to_dict(frame.user)
            self.limits = frame.limits
            self._data_bucket = TokenBucket(frame.limits.data_rate, frame.limits.data_burst)
            self._ws = ws
            self._connected.set()
            self._resume()
            if not first.done():
                first.set_result(None)
            while (data := await ws.read_message()) is not None:
                try:
                    self._handle(data)
                except Exception:
                    log.exception("chat: failed to handle a frame from %s", self.url)
        except Exception:
            log.exception("chat: connection to %s failed", self.url)
        finally:
            self._connected.clear()
            self._ws = None
            for room in self.rooms.values():
                room.joined = False
            ws.close()

    def _resume(self) -> None:
        """After (re)connecting: rejoin rooms from their last seq, then resend."""
        for room in self.rooms.values():
            self._rejoin(room)

    def _rejoin(self, room: Room) -> None:
        """Send ``room``'s join again: the caller's own, or a resume from its last seq."""
        if self.rooms.get(room.name) is not room:
            return
        if room.name in self._joins:
            self._write_frame(self._joins[room.name])
        elif not room.joined:
            since = p.Since(epoch=room.epoch, seq=room.seq) if room.epoch else None
            self._write_frame(p.Join(room=room.name, since=since))

    def _handle(self, data: str | bytes) -> None:
        """Apply one frame from the server.

        What a frame carries may come from another user, so applying it may fail; a
        join still completes then (its waiters are answered and the frames that follow
        it counted), and the failure is logged without the frame's contents.
        """
        payload = None
        try:
            if isinstance(data, bytes):  # a live value with raw buffers
                data, payload = p.unpack_binary(data)
            frame = p.decode_server(data)
        except (msgspec.DecodeError, p.ProtocolError, UnicodeDecodeError, RecursionError):
            log.warning("chat: ignoring an undecodable frame from the server")
            return
        room = self.rooms.get(getattr(frame, "room", "") or "")
        match frame:
            case p.Message():
                if room is not None:
                    try:
                        room._apply_message(frame)
                    except Exception:  # the acknowledgement below still settles our send
                        log.exception("chat: room %r: could not apply a message", room.name)
                if frame.id in self._unacked:
                    self._settle_send(_to_dict(frame))
            case p.Joined():
                if room is not None:
                    try:
                        room._apply_joined(frame)
                    except Exception:
                        log.exception("chat: room %r: could not apply its joined frame", room.name)
                    room._following = max(frame.following, 0)
                    if not room._following:
                        self._after_join(room)
            case p.DataEvent():
                if room is not None:
                    try:
                        room._apply_data(frame, payload)
                    except Exception:
                        log.exception("chat: room %r: could not apply a value", room.name)
                    if room._following:  # the values that follow `joined`
                        room._following -= 1
                        if not room._following:
                            self._after_join(room)
            case p.Presence():
                if room is not None:
                    room._apply_presence(frame)
            case p.TypingEvent():
                if room is not None:
                    room._apply_typing(frame)
            case p.Access():
                access = _to_dict(frame)
                access.pop("id", None)
                if room is not None:
                    room.access = access
                future = self._requests.get(frame.id or "")
                if future is not None and not future.done():
                    future.set_result(access)
            case p.Left():
                if room is not None and room.joined:  # evicted from a private room
                    room._gone = f"you were removed from the private room {room.name!r}"
                    self._forget(room)
                    log.warning("chat: %s", room._gone)
            case p.HistoryPage():
                future = self._requests.get(frame.id)
                if room is not None and future is not None and not future.done():
                    future.set_result(room._apply_earlier(frame))
            case p.Error():
                self._handle_error(frame)
            case p.Hello():
                log.warning("chat: ignoring a second hello from %s", self.url)
            case _:
                assert_never(frame)

    def _after_join(self, room: Room) -> None:
        waiters, room._waiters = room._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(room)
        for room_name, frame in [(r.name, f) for r, f in self._unacked.values()]:
            if room_name == room.name:
                self._write_frame(frame)
        self._flush_values()

    def _handle_error(self, frame: p.Error) -> None:
        pending = self._unacked.get(frame.id or "")
        if frame.code in ("rate_limited", "unavailable") and pending is not None:
            self._loop.call_later(frame.retry_after or 0.1, self._write_frame, pending[1])
            return
        waiting = self.rooms.get(frame.room or "")
        joining = waiting is not None and (not waiting.joined or waiting.name in self._joins)
        if frame.code in ("rate_limited", "unavailable") and waiting and joining:
            # A join (or a rejoin after a reconnect) that came too fast: try it again.
            self._loop.call_later(frame.retry_after or 0.1, self._rejoin, waiting)
            return
        if pending is not None:
            del self._unacked[frame.id or ""]
        future = self._requests.get(frame.id or "")
        if future is not None and not future.done():
            future.set_exception(ChatError(frame.code, frame.message))
        else:
            log.warning("chat: server error %s: %s", frame.code, frame.message)
