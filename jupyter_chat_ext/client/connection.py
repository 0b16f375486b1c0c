"""ChatClient: the connection loop behind every room.

It runs an event loop on a background thread; connects (see :mod:`.connect`),
reconnects with jittered exponential backoff and resumes every room from its last
``seq``; matches replies to requests (joins, sends, history, access changes); and
routes each frame from the server to its room (:mod:`.room`, whose state is a
:mod:`.mirror`). Live values go out through a :mod:`.outbox`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import msgspec
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection
from typing_extensions import assert_never

from .. import export
from .. import protocol as p
from ..discovery import DiscoveryError, discover
from ..identity_store import load_cookies, save_cookies
from ..kernel import current_delegation, delegation_user
from ..limits import TokenBucket
from . import transfer
from .callbacks import fire
from .connect import Inbox, connect_error, credential_headers, open_websocket
from .errors import ChatError
from .mirror import access_dict, found_dict, message_dict, to_dict
from .outbox import RoomReadiness, ValueOutbox, Written
from .room import Room, not_joined
from .share import DEFAULT_MAX_ATTACHMENT_SIZE, Prepared

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_YET_UPLOADED = "u-" + "0" * 32  # as long as an upload id: the import's parts fit
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def _without_attachment(
    message: p.ImportedMessage, name: str, reason: str, missing: list[dict[str, Any]]
) -> p.ImportedMessage:
    """An imported ``message`` without its attachment, noted in ``missing``.

    A message that was only its attachment (no caption) says what was left out.
    """
    missing.append({"seq": message.seq, "name": name, "reason": reason})
    body = message.body if message.body.strip() else f"(attachment {name!r} not imported: {reason})"
    return msgspec.structs.replace(message, attachment=None, body=body)


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
        self._unacked: dict[str, tuple[Room, p.Send | p.ChangeRequest]] = {}
        self._joins: dict[str, p.Join] = {}  # room -> a join() under way
        self._join_waiters: dict[Room, list[asyncio.Future[Any]]] = {}
        self._following: dict[Room, int] = {}  # values still to come after `joined`
        self._mentions: dict[tuple[str, int], dict[str, Any]] = {}  # unread, by (room, seq)
        self._mentions_lock = threading.Lock()
        self._mention_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._pages: dict[str, p.HistoryRequest] = {}  # history requests of load_page()
        self.series_length = series_length
        self._host = _Host(self)
        self._outbox = ValueOutbox(self._wake_outbox)
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

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called; a closed client cannot be used again."""
        return self._closing

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
        known = self.rooms.get(room)
        if not private and known is not None and known.joined and known.gone is None:
            return known  # (a room left a moment ago is still listed: join anew)
        return self._call(self._join(room, private, members), timeout)

    def mentions(self) -> list[dict[str, Any]]:
        """Messages that mention you and that you have not read, newest first.

        Across every room you may read, joined or not; ``room.mark_read()`` (here or
        in any of your other connections: a tab, a kernel) clears a room's.
        """
        with self._mentions_lock:
            found = list(self._mentions.values())
        return sorted(found, key=lambda m: m["ts"], reverse=True)

    def on_mention(
        self, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[dict[str, Any]], None]:
        """Call ``callback(message)`` when a new message mentions you (any room)."""
        self._mention_callbacks.append(callback)
        return callback

    def search(
        self,
        query: str,
        rooms: list[str] | None = None,
        limit: int = 50,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The messages with every word of ``query``, newest first (at most ``limit``).

        ``rooms=None`` searches every room with history that you may read (joined or
        not); naming a room you may not read raises ``ChatError('forbidden')``. Each
        result is a message dict, as it is now, with ``marks``: the ``(start, end)``
        character spans of its matching words in ``body`` (see
        :func:`jupyter_chat_ext.search.highlight`). Words match case- and
        accent-insensitively; ``word*`` matches words starting with ``word``.
        """
        if not isinstance(query, str) or not query.strip():
            raise ChatError("invalid_field", "the query must be a non-empty string")
        if isinstance(rooms, str):
            rooms = [rooms]
        frame = p.Search(
            id=uuid.uuid4().hex,
            query=query,
            rooms=None if rooms is None else list(rooms),
            limit=limit,
        )
        found: list[dict[str, Any]] = self._call(self._ask(frame), timeout)
        return found

    def import_room(
        self,
        data: str | bytes | dict[str, Any],
        room: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Restore a JSON export (``room.export("json")``) into a room with no history.

        Moderators only (else ``ChatError('forbidden')``); into the exported room, or
        ``room``. The messages keep their authors, times, edits, deletions, reactions
        and replies (renumbered from 1); a private room's members come back with them.
        Attachments come back too: their bytes (the export's ``data``) are uploaded
        as yours, then held by their messages as their authors'. One that cannot be
        (no data in the export, or refused by this server: too large...) is left
        out; its message keeps its caption (or, with none, says what was left out).
        A room with history refuses it (``room_not_empty``). Returns
        ``{"room": name, "messages": count, "seq": last seq, "attachments": count,
        "missing_attachments": [{"seq", "name", "reason"}, ...]}``.
        """
        try:
            exported = export.load(data)
        except export.ExportError as exc:
            raise ChatError("invalid_export", str(exc)) from None
        target = room or exported["room"]
        access = exported["access"]
        private = None
        if access and access.get("owner"):
            private = p.PrivateAccess(owner=access["owner"], members=list(access["members"]))
        elif access and target != exported["room"]:
            raise ChatError(
                "invalid_field",
                "a direct-message room's export imports into that same room only",
            )
        limits = self.limits
        budget = max(limits.max_message_size, limits.max_value_size) if limits else 65_536
        messages = export.renumbered(exported["messages"])
        missing: list[dict[str, Any]] = []
        files: dict[int, Prepared] = {}
        for index, message in enumerate(messages):
            given = exported["attachments"].get((message.user.username, message.id))
            if given is not None:
                messages[index] = self._import_attachment(message, given, files, missing)
        parts = export.import_parts(target, messages, private, budget, lambda: uuid.uuid4().hex)
        seq = 0
        for part in parts:
            part.messages = [
                self._uploaded(target, message, files, missing, timeout)
                for message in part.messages
            ]
            done: dict[str, Any] = self._call(self._ask(part), timeout)
            seq = done["seq"]
        return {
            "room": target,
            "messages": len(messages),
            "seq": seq,
            "attachments": sum(m.attachment is not None for part in parts for m in part.messages),
            "missing_attachments": sorted(missing, key=lambda each: each["seq"]),
        }

    @staticmethod
    def _import_attachment(
        message: p.ImportedMessage,
        given: dict[str, Any],
        files: dict[int, Prepared],
        missing: list[dict[str, Any]],
    ) -> p.ImportedMessage:
        """``message`` with the exported attachment ``given`` (its upload still to be made).

        The bytes go in ``files`` (by seq); without them the attachment goes in
        ``missing``.
        """
        name: str = given["name"] if isinstance(given.get("name"), str) else "attachment"
        try:
            data = export.attachment_bytes(given)
        except export.ExportError as exc:
            return _without_attachment(message, name, str(exc), missing)
        known = given.get("kind") in p.ATTACHMENT_KINDS
        kind: p.AttachmentKind = given["kind"] if known else "file"
        mime: str = given["mime"] if isinstance(given.get("mime"), str) else ""
        files[message.seq] = Prepared(data, mime or "application/octet-stream", name, kind)
        request = p.AttachmentRequest(
            upload=_NOT_YET_UPLOADED,
            kind=kind,
            preview=given["preview"] if isinstance(given.get("preview"), dict) else {},
            provenance=given["provenance"] if isinstance(given.get("provenance"), dict) else {},
        )
        return msgspec.structs.replace(message, attachment=request)

    def _uploaded(
        self,
        room: str,
        message: p.ImportedMessage,
        files: dict[int, Prepared],
        missing: list[dict[str, Any]],
        timeout: float | None,
    ) -> p.ImportedMessage:
        """``message`` with its attachment uploaded to ``room`` (left out if refused)."""
        if message.attachment is None:
            return message
        prepared = files[message.seq]
        wait = self.timeout if timeout is None else timeout
        try:
            token = self._call(self._upload(room, prepared, wait), wait + 1)
        except ChatError as exc:
            if exc.code not in ("attachment_too_large", "invalid_field"):
                raise
            return _without_attachment(message, prepared.name, str(exc), missing)
        attachment = msgspec.structs.replace(message.attachment, upload=token)
        return msgspec.structs.replace(message, attachment=attachment)

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
        room = self.rooms.setdefault(name, Room(self._host, name, self.series_length, self.url))
        frame = p.Join(room=name, id=uuid.uuid4().hex, private=private, members=members)
        with self._request(frame.id or "") as future:
            self._join_waiters.setdefault(room, []).append(future)
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

    async def _load_members(self, room: Room) -> list[dict[str, Any]]:
        """Every member of ``room``, a ``members`` page at a time (merged into its state)."""
        members: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            frame = p.MembersRequest(room.name, uuid.uuid4().hex, after, p.MEMBERS_PAGE_MAX)
            page: p.MembersPage = await self._ask(frame)
            members += room.state.apply_members(page, first=after is None)
            if page.next is None or (after is not None and page.next <= after):
                return members
            after = page.next

    async def _load_page(self, room: Room, frame: p.HistoryRequest) -> list[dict[str, Any]]:
        """A history page before any seq or around one, merged into ``room``'s messages."""
        self._pages[frame.id] = frame
        try:
            page: list[dict[str, Any]] = await self._ask(frame)
            return page
        finally:
            self._pages.pop(frame.id, None)

    async def _ask(self, frame: p.HistoryRequest | p.Search | p.Import | p.MembersRequest) -> Any:
        """Send a request (once connected) and return what its answer settles it with."""
        with self._request(frame.id) as future:
            while not self._write_frame(frame):
                await self._connected.wait()
                await asyncio.sleep(0)  # let the rooms be joined again first
            return await future

    async def _mark_read(self, room: Room, seq: int) -> int:
        frame_id = uuid.uuid4().hex
        frame = p.MarkRead(room=room.name, seq=seq, id=frame_id)
        with self._request(frame_id) as future:
            if not self._write_frame(frame):
                raise ChatError("not_connected", "not connected; try again when reconnected")
            marker: int = await future
            return marker

    def _read_up_to(self, room_name: str, seq: int) -> None:
        """Loop thread: our read marker in ``room_name`` is now ``seq``."""
        room = self.rooms.get(room_name)
        if room is not None:
            room.state.mark_read(seq)
        with self._mentions_lock:
            for key in [k for k in self._mentions if k[0] == room_name and k[1] <= seq]:
                del self._mentions[key]

    def _mentioned(self, message: p.Message) -> None:
        """Loop thread: a message mentions us (skipped if already known or read)."""
        room = self.rooms.get(message.room)
        if room is not None and message.seq <= room.state.read:
            return
        data = message_dict(message, self.url)
        with self._mentions_lock:
            if (message.room, message.seq) in self._mentions:
                return
            self._mentions[(message.room, message.seq)] = data
        fire(self._mention_callbacks, data, message.room)

    async def _upload(self, room: str, prepared: Prepared, timeout: float) -> str:
        """Upload an attachment for ``room`` with this client's credentials; its upload id."""
        headers = credential_headers(self._token, self.delegation, self._cookies)
        answer = await transfer.upload(self.url, room, prepared, headers, timeout)
        upload: str = answer["upload"]
        return upload

    async def _download(self, url: str, max_size: int, timeout: float) -> bytes:
        headers = credential_headers(self._token, self.delegation, self._cookies)
        return await transfer.download(url, headers, max_size, timeout)

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
        room.state.joined = False
        error = not_joined(room, "; the message was not sent")
        for frame_id, (queued, _) in list(self._unacked.items()):
            if queued is room:
                del self._unacked[frame_id]
                future = self._requests.get(frame_id)
                if future is not None and not future.done():
                    future.set_exception(error)
        for future in self._join_waiters.pop(room, []):
            if not future.done():
                future.set_exception(not_joined(room, " before it was joined"))
        self._following.pop(room, None)
        self._outbox.drop_room(room.name)

    async def _send(self, room: Room, frame: p.Send | p.ChangeRequest) -> dict[str, Any]:
        """Send a message or a change (again after a reconnect) until it is acknowledged."""
        if room.gone is not None:  # left between the call and now
            raise not_joined(room, f"; join it again with client.join({room.name!r})")
        with self._request(frame.id) as future:
            self._unacked[frame.id] = (room, frame)
            if room.joined:
                self._write_frame(frame)
            message: dict[str, Any] = await future
            return message

    def _settle_send(self, message: dict[str, Any], frame_id: str | None = None) -> None:
        """A message (or change) of ours arrived: it acknowledges the request of its id."""
        frame_id = frame_id or message["id"]
        if self._unacked.pop(frame_id, None) is None:
            return
        future = self._requests.get(frame_id)
        if future is not None and not future.done():
            future.set_result(message)

    def _wake_outbox(self) -> None:
        """Any thread: the outbox has values to send; flush it on the loop."""
        self._loop.call_soon_threadsafe(self._flush_values)

    def _flush_values(self) -> None:
        """Loop thread: send queued values, paced; try again when the rate allows."""
        ws = self._ws
        connected = ws is not None and self._connected.is_set()

        def write(data: bytes, binary: bool) -> Written:
            assert ws is not None
            return ws.write_message(data, binary=binary)

        def readiness(name: str) -> RoomReadiness:
            room = self.rooms.get(name)
            if room is None:  # left the room: its values go nowhere
                return "drop" if connected else "wait"
            return "send" if connected and room.joined else "wait"

        wait = self._outbox.flush(write, readiness)
        if wait:
            self._loop.call_later(wait, self._flush_values)

    async def _connect(self, inbox: Inbox) -> WebSocketClientConnection:
        before = dict(self._cookies)
        ws = await open_websocket(
            self.url,
            token=self._token,
            delegation=self.delegation,
            cookies=self._cookies,
            timeout=self.timeout,
            inbox=inbox,
        )
        if self.remember_identity and self._cookies != before:
            save_cookies(self.url, self._cookies)
        return ws

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        for callback in self._state_callbacks:
            try:
                callback(state)
            except Exception:
                log.exception("chat: a connection-state callback failed")

    async def _run(self, first: concurrent.futures.Future[None]) -> None:
        attempt = 0
        while not self._closing:
            inbox = Inbox()
            try:
                ws = await self._connect(inbox)
            except Exception as exc:
                if isinstance(exc, HTTPClientError) and exc.code == 403 and self.delegation:
                    log.warning(
                        "chat: the delegation was refused (expired?); speaking as this "
                        "kernel's own identity. Show the Chat widget again to renew it."
                    )
                    self.delegation = None
                    continue
                error = connect_error(self.url, exc)
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
                    await self._serve(ws, inbox, first)
                finally:
                    greeted.cancel()
                if self._closing or (first.done() and first.exception() is not None):
                    return
                self._set_state("reconnecting")
            attempt += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _serve(
        self, ws: WebSocketClientConnection, inbox: Inbox, first: concurrent.futures.Future[None]
    ) -> None:
        """Handle the frames of one connection until it closes."""
        try:
            hello = await inbox.first()
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
            self.user = to_dict(frame.user)
            self.limits = frame.limits
            with self._mentions_lock:  # the server sends the unread ones, if any, next
                self._mentions.clear()
            self._outbox.bucket = TokenBucket(frame.limits.data_rate, frame.limits.data_burst)
            self._ws = ws
            self._connected.set()
            self._resume()
            if not first.done():
                first.set_result(None)
            inbox.serve(self._handle_safely)
            await inbox.closed
        except Exception:
            log.exception("chat: connection to %s failed", self.url)
        finally:
            self._connected.clear()
            self._ws = None
            for room in self.rooms.values():
                room.state.joined = False
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

    def _handle_safely(self, data: str | bytes) -> None:
        """Apply one frame; a failure is logged, and the next frame is handled as usual."""
        try:
            self._handle(data)
        except Exception:
            log.exception("chat: failed to handle a frame from %s", self.url)

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
                        room._receive(frame)
                    except Exception:  # the acknowledgement below still settles our send
                        log.exception("chat: room %r: could not apply a message", room.name)
                if frame.id in self._unacked:
                    self._settle_send(message_dict(frame, self.url))
            case p.Change():
                if room is not None:
                    try:
                        room._receive(frame)
                    except Exception:  # the acknowledgement below still settles our change
                        log.exception("chat: room %r: could not apply a change", room.name)
                if frame.id in self._unacked:
                    self._settle_send(message_dict(frame.message, self.url), frame.id)
            case p.Joined():
                if room is not None:
                    try:
                        for message in room._receive(frame):
                            self._settle_send(message)
                        for change in frame.changes:
                            self._settle_send(message_dict(change.message, self.url), change.id)
                    except Exception:
                        log.exception("chat: room %r: could not apply its joined frame", room.name)
                    self._following[room] = max(frame.following, 0)
                    if not self._following[room]:
                        self._after_join(room)
            case p.DataEvent():
                if room is not None:
                    try:
                        room._receive(frame, payload)
                    except Exception:
                        log.exception("chat: room %r: could not apply a value", room.name)
                    if self._following.get(room):  # the values that follow `joined`
                        self._following[room] -= 1
                        if not self._following[room]:
                            self._after_join(room)
            case p.Presence() | p.TypingEvent():
                if room is not None:
                    room._receive(frame)
            case p.Access():
                if room is not None:
                    room.state.apply_access(frame)
                future = self._requests.get(frame.id or "")
                if future is not None and not future.done():
                    future.set_result(access_dict(frame))
            case p.Left():
                if room is not None and room.joined:  # evicted from a private room
                    room._end(f"you were removed from the private room {room.name!r}")
                    self._forget(room)
                    log.warning("chat: %s", room.gone)
            case p.HistoryPage():
                future = self._requests.get(frame.id)
                if room is not None and future is not None and not future.done():
                    request = self._pages.get(frame.id)
                    if request is None:
                        future.set_result(room.state.apply_earlier(frame))
                    else:
                        size = self.limits.history_page_size if self.limits else 100
                        future.set_result(room.state.apply_page(request, frame, size))
            case p.MembersPage():
                future = self._requests.get(frame.id)
                if future is not None and not future.done():
                    future.set_result(frame)
            case p.SearchResults():
                future = self._requests.get(frame.id)
                if future is not None and not future.done():
                    future.set_result([found_dict(found, self.url) for found in frame.results])
            case p.ImportDone():
                future = self._requests.get(frame.id)
                if future is not None and not future.done():
                    future.set_result({"room": frame.room, "seq": frame.seq})
            case p.ReadMarker():
                self._read_up_to(frame.room, frame.seq)
                future = self._requests.get(frame.id or "")
                if future is not None and not future.done():
                    future.set_result(frame.seq)
            case p.Mention():
                self._mentioned(frame.message)
            case p.Mentions():
                with self._mentions_lock:
                    self._mentions.clear()
                for mentioned in frame.mentions:
                    self._mentioned(mentioned)
            case p.Error():
                self._handle_error(frame)
            case p.Hello():
                log.warning("chat: ignoring a second hello from %s", self.url)
            case _:
                assert_never(frame)

    def _after_join(self, room: Room) -> None:
        self._following.pop(room, None)
        for future in self._join_waiters.pop(room, []):
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


class _Host:
    """The :class:`~.room.RoomHost` of a client's rooms: what a Room may ask of it."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    @property
    def limits(self) -> p.Limits | None:
        return self.client.limits

    @property
    def closed(self) -> bool:
        return self.client.closed

    @property
    def attachment_limit(self) -> int:
        limits = self.client.limits
        return limits.max_attachment_size if limits else DEFAULT_MAX_ATTACHMENT_SIZE

    def request(
        self, room: Room, frame: p.Send | p.ChangeRequest, timeout: float | None
    ) -> dict[str, Any]:
        return self.client._call(self.client._send(room, frame), timeout)

    def load_earlier(self, room: Room, limit: int, timeout: float | None) -> list[dict[str, Any]]:
        return self.client._call(self.client._load_earlier(room, limit), timeout)

    def load_page(
        self, room: Room, frame: p.HistoryRequest, timeout: float | None
    ) -> list[dict[str, Any]]:
        return self.client._call(self.client._load_page(room, frame), timeout)

    def load_members(self, room: Room, timeout: float | None) -> list[dict[str, Any]]:
        return self.client._call(self.client._load_members(room), timeout)

    def change_access(self, frame: p.AccessChange, timeout: float | None) -> dict[str, Any]:
        return self.client._call(self.client._access(frame), timeout)

    def upload(self, room: Room, prepared: Prepared, timeout: float | None) -> str:
        timeout = self.client.timeout if timeout is None else timeout
        return self.client._call(self.client._upload(room.name, prepared, timeout), timeout + 1)

    def download(self, url: str, max_size: int, timeout: float | None) -> bytes:
        timeout = self.client.timeout if timeout is None else timeout
        return self.client._call(self.client._download(url, max_size, timeout), timeout + 1)

    def mark_read(self, room: Room, seq: int, timeout: float | None) -> int:
        return self.client._call(self.client._mark_read(room, seq), timeout)

    def queue_value(self, room: Room, topic: str, data: bytes, binary: bool) -> None:
        self.client._outbox.put(room.name, topic, data, binary)

    def typing(self, room: Room, active: bool) -> None:
        self.client._post(self.client._send_typing, room, active)

    def leave(self, room: Room) -> None:
        self.client._post(self.client._leave, room)
