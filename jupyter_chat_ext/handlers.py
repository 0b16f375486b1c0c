"""The WebSocket endpoint: authenticate, decode, hand to the core. It keeps no state."""

from __future__ import annotations

import contextvars
from typing import Any, Final
from urllib.parse import quote, unquote, urlparse

import msgspec
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream
from tornado.web import decode_signed_value
from tornado.websocket import WebSocketProtocol13

from . import attachments, wsconn
from .history import StoreUnavailable
from .protocol import DELEGATION_HEADER, User, decode_user, encode
from .rooms import RoomRegistry
from .session import Session

AUTH_RESOURCE = "chat"
DELEGATION_NAME = "jupyter-chat-ext-delegation"
SEND_CHUNK: Final = 256 * 1024  # bytes of an attachment written per turn of the loop


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


class SessionSocket(web.RequestHandler):
    """The WebSocket handshake of a chat connection (any host); then a lean connection.

    Subclasses authenticate in ``get()``, set ``self._identity`` (a protocol
    :class:`User`) and call ``super().get()``, which checks the upgrade request and
    its origin, answers ``101`` with any cookies the authentication set, and hands the
    socket to a :class:`~jupyter_chat_ext.wsconn.Connection` that carries the
    session: the handler, its request and headers are then dropped. A subclass whose
    identity is valid only until some time (a delegation) sets ``self._expires_at``
    (seconds since the epoch): the session ends the connection then with
    :data:`~jupyter_chat_ext.session.CLOSE_IDENTITY_EXPIRED`.
    """

    _identity: User
    _moderator = False  # may delete anyone's message (a subclass says: a Hub admin)
    _expires_at: float | None = None

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

    def origin_allowed(self, origin: str) -> bool:
        """Tornado's rule for WebSockets: the ``Origin`` is this server's host."""
        return urlparse(origin).netloc.lower() == self.request.headers.get("Host")

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Upgrade to a WebSocket (RFC 6455) and start the session."""
        headers = self.request.headers
        if self.request.version != "HTTP/1.1":  # RFC 6455 4.1 (and 1.0 closes after 101)
            raise web.HTTPError(400, "A WebSocket handshake must be HTTP/1.1.")
        if headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPError(400, 'Can "Upgrade" only to "WebSocket".')
        if "upgrade" not in {
            part.strip().lower() for part in headers.get("Connection", "").split(",")
        }:
            raise web.HTTPError(400, '"Connection" must be "Upgrade".')
        origin = headers.get("Origin") or headers.get("Sec-Websocket-Origin")
        if origin is not None and not self.origin_allowed(origin):
            raise web.HTTPError(403, "Cross origin websockets not allowed")
        key = headers.get("Sec-WebSocket-Key")
        if headers.get("Sec-WebSocket-Version") != "13" or not key:
            self.set_status(426, "Upgrade Required")
            self.set_header("Sec-WebSocket-Version", "13")
            self.finish()
            return
        http = self.request.connection
        if not isinstance(http, HTTP1Connection) or http.stream.closed():
            return  # the peer left during authentication (or this is not HTTP/1.1)
        self.clear_header("Content-Type")
        self.set_status(101)
        self.set_header("Upgrade", "websocket")
        self.set_header("Connection", "Upgrade")
        self.set_header("Sec-WebSocket-Accept", WebSocketProtocol13.compute_accept_value(key))
        self.finish()
        stream = self.detach()
        if stream.closed():  # the peer reset the socket while the 101 was written
            return
        # In a context of its own: jupyter_server's (a contextvar refers to this handler)
        # would go with every callback and task of the connection, and keep the handler,
        # its request and headers alive as long as the connection.
        contextvars.Context().run(self._serve, stream)

    def _serve(self, stream: IOStream) -> None:
        connection = wsconn.Connection(
            stream, self._max_frame_size, wsconn.Heartbeat.of(*self._heartbeat)
        )
        session = Session(
            self.registry, self._identity, connection, self._moderator, self._expires_at
        )
        connection.start(session)
        session.open()


class ChatWebSocketHandler(SessionSocket, JupyterHandler):
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

    def set_default_headers(self) -> None:
        """Skip JupyterHandler's HTML headers: meaningless for a WebSocket."""

    def origin_allowed(self, origin: str) -> bool:
        """jupyter_server's rule for WebSockets (the Origin is this host, or allowed)."""
        return bool(WebSocketMixin.check_origin(self, origin))

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
