"""The WebSocket endpoint: authenticate, decode, hand to the core. It keeps no state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import quote, unquote

import msgspec
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.web import decode_signed_value
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from . import attachments, wsframes
from .history import StoreUnavailable
from .protocol import DELEGATION_HEADER, User, decode_user, encode
from .rooms import RoomRegistry
from .session import Session

AUTH_RESOURCE = "chat"
DELEGATION_NAME = "jupyter-chat-ext-delegation"
SEND_CHUNK: Final = 256 * 1024  # bytes of an attachment written per turn of the loop
# The identity a connection speaks as expired (a delegation): reconnect with a new one.
CLOSE_DELEGATION_EXPIRED: Final = 4001


def user_from_jupyter(user: Any) -> User:
    """Convert a jupyter_server ``User`` into the protocol's :class:`User`."""
    return User(
        username=user.username,
        name=user.name or user.username,
        display_name=user.display_name or user.name or user.username,
        initials=user.initials,
        color=user.color,
        avatar_url=user.avatar_url,
    )


async def _authorize(handler: JupyterHandler) -> None:
    authorized = await ensure_async(
        handler.authorizer.is_authorized(handler, handler.current_user, "execute", AUTH_RESOURCE)
    )
    if not authorized:
        raise web.HTTPError(403, "not authorized to chat on this server")


class DelegationHandler(APIHandler):
    """``POST {base_url}chat-ext/delegation``: a short-lived, signed copy of your identity.

    The Chat widget hands it to its kernel, whose ChatClient presents it (header
    ``X-Chat-Delegation``) so that what the kernel sends is shown as sent by the
    person, marked as from a kernel. It is honoured only on connections that
    authenticate by themselves, and expires ``delegation_ttl`` seconds after it was
    issued: a connection that presented it is closed then (close code 4001).
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, delegation_ttl: float) -> None:
        """Receive the delegation lifetime from the app."""
        self.delegation_ttl = delegation_ttl

    @web.authenticated
    async def post(self) -> None:
        """Return ``{"delegation": ..., "expires_in": seconds}``."""
        await _authorize(self)
        user = user_from_jupyter(self.current_user)
        value = self.create_signed_value(DELEGATION_NAME, encode(user))
        self.finish({"delegation": value.decode(), "expires_in": self.delegation_ttl})


def request_identity(handler: JupyterHandler, ttl: float) -> tuple[User, float | None]:
    """Who an authenticated request speaks as, and until when (a delegation expires).

    The request's own user, or the person whose delegation (header
    ``X-Chat-Delegation``, issued at most ``ttl`` seconds ago) it presents, marked as
    a kernel. An invalid or expired delegation is refused (403).
    """
    delegation = handler.request.headers.get(DELEGATION_HEADER)
    if not delegation:
        return user_from_jupyter(handler.current_user), None
    value = decode_signed_value(
        handler.application.settings["cookie_secret"],
        DELEGATION_NAME,
        delegation,
        max_age_days=ttl / 86400,
    )
    issued = _signed_timestamp(delegation) if value is not None else None
    if value is None or issued is None:
        raise web.HTTPError(
            403, "chat delegation invalid or expired: show the Chat widget again to renew it"
        )
    return msgspec.structs.replace(decode_user(value), kernel=True), issued + ttl


def _signed_timestamp(value: str) -> int | None:
    """When a tornado signed value (version 2) was signed, in seconds since the epoch.

    Read only after ``decode_signed_value`` has verified the signature, which covers
    the timestamp: ``2|1:0|10:<timestamp>|<n>:<name>|<n>:<value>|<signature>``.
    """
    parts = value.split("|")
    try:
        return int(parts[2].split(":", 1)[1])
    except (IndexError, ValueError):
        return None


# Connections with frames queued in this turn of each event loop, flushed at its end.
_dirty: dict[asyncio.AbstractEventLoop, list[SessionSocket]] = {}


def _flush_soon(socket: SessionSocket) -> None:
    loop = asyncio.get_running_loop()
    sockets = _dirty.get(loop)
    if sockets is None:
        sockets = _dirty[loop] = []
        loop.call_soon(_flush_all, loop)
    sockets.append(socket)


def _flush_all(loop: asyncio.AbstractEventLoop) -> None:
    for socket in _dirty.pop(loop):
        socket._flush()


class SessionSocket(WebSocketHandler):
    """A WebSocket that hands its frames to a core :class:`Session` (any host).

    Subclasses authenticate in ``get()``, set ``self._identity`` (a protocol
    :class:`User`) and call ``super().get()``; this class does the rest and is the
    session's :class:`~jupyter_chat_ext.session.Transport`. A subclass whose identity
    is valid only until some time (a delegation) sets ``self._expires_at`` (seconds
    since the epoch): the connection is closed then with
    :data:`CLOSE_DELEGATION_EXPIRED`, and no frame received after it is handled.
    """

    session: Session | None = None
    _gone = False
    _identity: User
    _moderator = False  # may delete anyone's message (a subclass says: a Hub admin)
    _expires_at: float | None = None
    _expiry: asyncio.TimerHandle | None = None

    def initialize(
        self,
        registry: RoomRegistry,
        max_frame_size: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
    ) -> None:
        """Receive the room registry, the largest frame accepted and the heartbeat."""
        self.registry = registry
        self._max_frame_size = max_frame_size
        self._heartbeat = (heartbeat_interval, heartbeat_timeout)
        self._out: list[tuple[bytes, bool]] = []

    @property
    def ping_interval(self) -> float:
        """Seconds between pings (tornado sends them)."""
        return self._heartbeat[0]

    @property
    def ping_timeout(self) -> float:
        """Seconds a ping may go unanswered: tornado allows at most the interval."""
        return min(self._heartbeat)

    @property
    def max_message_size(self) -> int:
        """Frames larger than this close the connection (code 1009)."""
        return self._max_frame_size

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start a session (the core greets the client, or refuses it)."""
        if self._gone:  # the peer left during the handshake: on_close already ran
            return
        self.session = Session(self.registry, self._identity, self, self._moderator)
        self.session.open()
        if self._expires_at is not None:
            delay = max(0.0, self._expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """The identity expired: close, saying so (the client reconnects and re-authenticates)."""
        self._expiry = None
        if self._gone or self.ws_connection is None or self.ws_connection.is_closing():
            return
        self.close(
            CLOSE_DELEGATION_EXPIRED,
            "delegation expired: reconnect with a renewed one (show the Chat widget again)",
        )

    def send(self, frame: bytes, binary: bool = False) -> bool:
        """Queue a frame (see :class:`~jupyter_chat_ext.session.Transport`).

        Frames queued in one turn of the event loop are written together, with one
        system call, at the end of the turn.
        """
        if self._gone or self.ws_connection is None or self.ws_connection.is_closing():
            return False
        if not self._out:
            _flush_soon(self)
        self._out.append((frame, binary))
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not out:  # already flushed (by close)
            return
        size = sum(len(frame) for frame, _ in out)
        stream = wsframes.raw_stream(self)
        try:
            if stream is not None:
                data = b"".join([part for f, b in out for part in (wsframes.header(f, b), f)])
                rest = wsframes.write(stream, data)
            else:  # compressed (or closing): tornado frames each message itself
                for frame, binary in out:
                    rest = self.write_message(frame, binary=binary)
        except (WebSocketClosedError, StreamClosedError):
            return  # on_close cleans up
        if rest is None:  # all written now
            if self.session is not None:
                self.session.flushed(size)
        else:
            rest.add_done_callback(lambda f: self._written(f, size))

    def _written(self, future: asyncio.Future[Any], size: int) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the connection closed during the write; on_close cleans up
        if self.session is not None:
            self.session.flushed(size)

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Hand a frame to the session; tornado waits for a returned awaitable.

        A frame that arrives once the identity has expired is not handled: the
        connection closes instead, even if the expiry timer has not fired yet.
        """
        assert self.session is not None
        if self._expires_at is not None and time.time() >= self._expires_at:
            self._expire()
            return None
        return self.session.receive(message, binary=isinstance(message, bytes))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection; its user leaves the rooms now, not after the handshake.

        Tornado waits up to 5 s for the peer to acknowledge a close, and a peer that is
        dead or stuck never does.
        """
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._flush()  # what was queued before the close goes first (an error saying why)
        super().close(code, reason)
        if self.session is not None:
            IOLoop.current().add_callback(self.session.close)

    def on_close(self) -> None:
        """Leave every room."""
        self._gone = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.session is not None:
            self.session.close()


class ChatWebSocketHandler(WebSocketMixin, SessionSocket, JupyterHandler):
    """``{base_url}chat-ext/ws``: one chat connection, any number of rooms.

    jupyter_server authenticates the handshake (token or login cookie; the Origin is
    checked for cookie-authenticated requests) and the authorizer is asked for
    ``execute`` on the ``chat`` resource; a refused handshake gets 403.
    """

    auth_resource = AUTH_RESOURCE

    def initialize(  # type: ignore[override]
        self,
        registry: RoomRegistry,
        max_frame_size: int,
        delegation_ttl: float,
        heartbeat_interval: float,
        heartbeat_timeout: float,
    ) -> None:
        """Receive the room registry and the connection settings from the app."""
        super().initialize(registry, max_frame_size, heartbeat_interval, heartbeat_timeout)
        self._delegation_ttl = delegation_ttl

    @property
    def ping_interval(self) -> float:
        """Milliseconds between pings (jupyter_server's WebSocketMixin sends them)."""
        return self._heartbeat[0] * 1000

    @property
    def ping_timeout(self) -> float:
        """Milliseconds without a pong after which the peer is dead and is closed."""
        return self._heartbeat[1] * 1000

    def set_default_headers(self) -> None:
        """Skip JupyterHandler's HTML headers: meaningless for a WebSocket."""

    def identity(self) -> User:
        """Who this connection speaks as: its user, or the person who delegated to it.

        A delegation is valid for ``delegation_ttl`` seconds from when it was issued;
        the connection that presents it is closed when it expires (see
        :class:`SessionSocket`), so it never speaks for the person longer than that.
        """
        user, self._expires_at = request_identity(self, self._delegation_ttl)
        return user

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Authenticate and authorize, then upgrade to a WebSocket."""
        await _authorize(self)
        self._identity = self.identity()
        await super().get(*args, **kwargs)


@web.stream_request_body
class AttachmentEndpoint(web.RequestHandler):
    """``{base}chat-ext/attachments``: upload (POST) and fetch (GET) attachments, any host.

    A host subclass authenticates the request and says who it is from
    (:meth:`requester`). Uploads are streamed: one whose ``Content-Length`` is over
    ``max_attachment_size`` is refused (413) before a byte of it is read. Refusals are
    JSON ``{"code", "message"}`` (docs/protocol.md, "Attachments").
    """

    registry: RoomRegistry
    _body: bytearray | None = None
    _slot: str | None = None  # the person whose transfer slot this request holds

    def requester(self) -> User:
        """The user this request is from (a host authenticates)."""
        raise NotImplementedError

    async def _start(self) -> None:
        """Wait for a transfer slot of the requester's, then check an upload's size.

        Called in prepare, once the requester is known: before an upload's body is read
        or a fetch's bytes are loaded (:class:`~jupyter_chat_ext.attachments.TransferSlots`).
        """
        username = self.requester().username
        await self.registry.transfers.acquire(username)
        self._slot = username
        self._start_upload()

    def _end(self) -> None:
        if self._slot is not None:
            self.registry.transfers.release(self._slot)
            self._slot = None

    def on_finish(self) -> None:
        """Give the transfer slot back."""
        self._end()

    def on_connection_close(self) -> None:
        """Give the transfer slot back (the peer left mid-transfer)."""
        super().on_connection_close()
        self._end()

    def _start_upload(self) -> None:
        """Check the upload's declared size once the headers are in."""
        if self.request.method != "POST":
            return
        limit = self.registry.settings.max_attachment_size
        declared = self.request.headers.get("Content-Length")
        if declared is None or not declared.isdigit():
            raise Refused(411, "invalid_field", "an upload needs a Content-Length header")
        if int(declared) > limit:
            raise Refused(
                413,
                "attachment_too_large",
                f"the attachment is {int(declared)} bytes; the limit is {limit} "
                "(max_attachment_size): share a smaller one",
            )
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(limit)
        self._body = bytearray()

    def data_received(self, chunk: bytes) -> None:
        """Collect an upload's bytes (at most its declared length: tornado checks)."""
        if self._body is not None:
            self._body += chunk

    async def post(self) -> None:
        """Keep an upload for the room ``?room=``: 201 with its token."""
        user = self.requester()
        room = self.get_query_argument("room", "")
        mime = self.request.headers.get("Content-Type", "application/octet-stream")
        name = unquote(self.request.headers.get("X-Chat-Name", "") or "attachment")
        try:
            upload = await attachments.accept_upload(
                self.registry,
                user.username,
                room,
                mime.split(";")[0].strip().lower(),
                name,
                bytes(self._body or b""),
            )
        except attachments.UploadRefused as refused:
            return self._refuse(refused)
        except StoreUnavailable as exc:
            return self._refuse(Refused(503, "unavailable", f"cannot store it now: {exc}", 1.0))
        self.set_status(201)
        self.finish(
            {
                "upload": upload.token,
                "sha256": upload.sha256,
                "size": upload.size,
                "mime": upload.mime,
                "name": upload.name,
            }
        )

    async def get(self, sha256: str) -> None:
        """The bytes of attachment ``sha256`` as carried in ``?room=`` (404 if not readable)."""
        user = self.requester()
        room = self.get_query_argument("room", "")
        try:
            stored = await attachments.fetch_attachment(self.registry, user.username, room, sha256)
        except attachments.UploadRefused as refused:
            return self._refuse(refused)
        except StoreUnavailable as exc:
            return self._refuse(Refused(503, "unavailable", f"cannot read it now: {exc}", 1.0))
        inline = stored.mime in attachments.INLINE_MIMES
        self.set_header("Content-Type", stored.mime)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
        self.set_header(
            "Content-Disposition",
            f"{'inline' if inline else 'attachment'}; filename*=UTF-8''{quote(stored.name)}",
        )
        self.set_header("Cache-Control", "private, max-age=86400")
        self.set_header("Etag", f'"{sha256}"')
        self.set_header("Content-Length", str(len(stored.data)))
        # In pieces, each flushed before the next: a big attachment to many readers
        # takes turns with every other connection of the loop instead of one long write.
        view = memoryview(stored.data)
        for start in range(0, len(view), SEND_CHUNK):
            self.write(bytes(view[start : start + SEND_CHUNK]))
            await self.flush()
        self.finish()

    def _refuse(self, refused: attachments.UploadRefused) -> None:
        self.clear()
        self.set_status(refused.status)
        if refused.retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(refused.retry_after))))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"code": refused.code, "message": refused.message})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Refusals raised before the handler ran (size, authentication) as JSON too."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, attachments.UploadRefused):
            return self._refuse(exc)
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(
            status_code, "invalid_field" if status_code < 500 else "internal"
        )
        self._refuse(attachments.UploadRefused(status_code, code, message))


class Refused(attachments.UploadRefused, web.HTTPError):
    """An :class:`~jupyter_chat_ext.attachments.UploadRefused` tornado can raise as HTTP."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        attachments.UploadRefused.__init__(self, status, code, message, retry_after)
        web.HTTPError.__init__(self, status, "%s", message)


class ChatAttachmentHandler(AttachmentEndpoint, JupyterHandler):
    """Attachments on the extension host: authenticated as the WebSocket is.

    A token or the login cookie (with ``X-XSRFToken`` for a browser's POST, as
    jupyter_server asks), and a kernel's delegation, so that what a kernel uploads or
    fetches is its person's.
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, registry: RoomRegistry, delegation_ttl: float) -> None:
        """Receive the room registry and the delegation lifetime."""
        self.registry = registry
        self._delegation_ttl = delegation_ttl

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate and authorize, then check an upload's declared size."""
        await super().prepare(_redirect_to_login=False)
        if not self.check_origin():
            raise web.HTTPError(404)
        if self.current_user is None:
            raise web.HTTPError(403, "not authenticated: log in, or send a token")
        await _authorize(self)
        self._identity = request_identity(self, self._delegation_ttl)[0]
        await self._start()

    def requester(self) -> User:
        """See :meth:`AttachmentEndpoint.requester`."""
        return self._identity

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON refusals (not jupyter_server's page)."""
        AttachmentEndpoint.write_error(self, status_code, **kwargs)
