"""The JupyterHub service host: the same chat core, for every user of a Hub.

Run by the Hub as a managed service (``jupyter-chat-ext hub-service``), it reads the
standard service environment (``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``,
``JUPYTERHUB_API_TOKEN``, ...), serves the protocol at ``{prefix}chat-ext/ws`` and
authenticates with the Hub: browsers by the service's OAuth cookie, programs by a Hub
API token. Either must carry the ``access:services!service=<name>`` scope. Identity
(username, display name) comes from the Hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import msgspec
from jupyterhub.services.auth import (
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import TraitError, Unicode, default, validate
from traitlets.config import Application

from .config import CoreSettings
from .handlers import AttachmentEndpoint, SessionSocket
from .handlers import Refused as _HubRefused
from .history import SQLiteHistory
from .protocol import ATTACHMENT_PATH, ATTACHMENTS_PATH, WS_PATH, User
from .rooms import RoomRegistry

COOKIE_SECRET_ENV = "JUPYTER_CHAT_EXT_COOKIE_SECRET"
DEFAULT_DB_FILE = "jupyter_chat_ext.sqlite"


class NotAPerson(Exception):
    """A Hub identity that is not a user (a service's token): it may not chat.

    A service is named in its own namespace: a service called ``alice`` would otherwise
    speak as the user ``alice``. A bot is a Hub user with its own token.
    """

    def __init__(self, model: dict[str, Any]) -> None:
        self.kind = str(model.get("kind"))
        self.name = str(model.get("name"))
        super().__init__(
            f"Hub {self.kind} {self.name!r} may not chat: only Hub users have a chat "
            "identity. Use a user's API token (a bot is a Hub user of its own)."
        )


def user_from_hub(model: dict[str, Any]) -> User:
    """The protocol's :class:`User` for a Hub user model (no 'Anonymous' here).

    Raises :class:`NotAPerson` for any other kind of Hub identity (a service token).
    """
    if model.get("kind", "user") != "user":
        raise NotAPerson(model)
    name = model["name"]
    display = model.get("display_name") or name
    return User(username=name, name=name, display_name=display, initials=display[:2].upper())


class HubChatWebSocketHandler(HubOAuthenticated, SessionSocket):  # type: ignore[misc]
    """``{prefix}chat-ext/ws`` on the Hub service, authenticated by the Hub.

    A handshake that names no Hub user (no credentials, an unknown or expired token,
    a cookie this service did not issue) gets 401: logging in to the Hub is the fix.
    A Hub user or token without the service's ``access:services`` scope gets 403.
    Neither is redirected to the Hub's login page: a WebSocket cannot follow it.
    """

    _not_allowed: dict[str, Any] | None = None

    def get_current_user(self) -> Any:
        """The Hub user model (from a token or the OAuth cookie), or None."""
        return HubOAuthenticated.get_current_user(self)

    def check_hub_user(self, model: dict[str, Any]) -> Any:
        """Remember who was identified but lacks the scope (they get 403, not 401)."""
        try:
            return super().check_hub_user(model)
        except UserNotAllowed:
            self._not_allowed = model
            raise

    def _scopes(self) -> str:
        return " or ".join(sorted(self.hub_scopes or ())) or "access:services"

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse a handshake without a Hub user (401) or without the scope (403)."""
        model = self.current_user
        if not model:
            if self._not_allowed is not None:
                kind = self._not_allowed.get("kind", "user")
                raise web.HTTPError(
                    403,
                    "Hub %s %r may not use this chat service: it needs the %s scope (a "
                    "Hub admin grants it in c.JupyterHub.load_roles; a token needs it "
                    "among its scopes)",
                    kind,
                    self._not_allowed.get("name"),
                    self._scopes(),
                )
            raise web.HTTPError(
                401,
                "not logged in to the Hub: open %s in a browser to log in, or send a "
                "valid Hub API token (Authorization: token ...) with the %s scope",
                os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/"),
                self._scopes(),
            )
        try:
            self._identity = user_from_hub(model)
        except NotAPerson as refused:
            raise web.HTTPError(403, "%s", refused) from None
        self._moderator = bool(model.get("admin"))
        await super().get(*args, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Say why the handshake was refused and what to do, as JSON (no HTML page)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"status": status_code, "message": message})


class HubAttachmentHandler(HubOAuthenticated, AttachmentEndpoint):  # type: ignore[misc]
    """Attachments on the hub service: a Hub user's token or the service's login cookie.

    Refused as the WebSocket is: 401 without a Hub user, 403 without the scope or for
    a Hub service's token.
    """

    def initialize(self, registry: RoomRegistry) -> None:
        """Receive the room registry."""
        self.registry = registry

    def get_current_user(self) -> Any:
        """The Hub user model (from a token or the OAuth cookie), or None."""
        return HubOAuthenticated.get_current_user(self)

    async def prepare(self) -> None:
        """Authenticate, wait for a transfer slot, then check an upload's declared size."""
        model = self.current_user
        if not model:
            raise _HubRefused(
                401, "unauthenticated", "not logged in to the Hub: log in, or send a Hub API token"
            )
        try:
            self._identity = user_from_hub(model)
        except NotAPerson as refused:
            raise _HubRefused(403, "forbidden", str(refused)) from None
        await self._start()

    def requester(self) -> User:
        """See :meth:`AttachmentEndpoint.requester`."""
        return self._identity

    def check_xsrf_cookie(self) -> None:
        """Refuse a cookie-authenticated request made by another site (CSRF).

        JupyterHub's own check wants a token from the service's ``_xsrf`` cookie, which
        lives under the service's prefix, out of the notebook page's reach (the widget
        runs there). Instead: the browser must say the request is same-origin
        (``Sec-Fetch-Site``, ``Origin``), and an upload must carry ``X-Chat-Name``, a
        header no other site can send without a CORS preflight this service never
        grants. A request with a token is not asked (it carries no ambient credential).
        """
        headers = self.request.headers
        site = headers.get("Sec-Fetch-Site")
        origin = headers.get("Origin")
        if site is not None and site not in ("same-origin", "none"):
            raise web.HTTPError(403, "a request from another site (Sec-Fetch-Site: %s)", site)
        if origin is not None and urlparse(origin).netloc != self.request.host:
            raise web.HTTPError(403, "a request from another origin (%s)", origin)
        if self.request.method == "POST" and "X-Chat-Name" not in headers:
            raise web.HTTPError(403, "an upload must carry an X-Chat-Name header")


class WhoAmIHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """``{prefix}``: who you are to the service (a browser is sent through the Hub's login).

    The widget fetches it (same-origin redirects) to obtain the service's login cookie
    before opening its WebSocket.
    """

    @web.authenticated
    def get(self) -> None:
        """Return the user the service sees and where its WebSocket is."""
        try:
            user = user_from_hub(self.current_user)
        except NotAPerson as refused:
            raise web.HTTPError(403, "%s", refused) from None
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        self.finish(
            {
                "user": msgspec.to_builtins(user),
                "ws": url_path_join(prefix, WS_PATH),
                "attachments": url_path_join(prefix, ATTACHMENTS_PATH),
            }
        )


class HubChatService(CoreSettings, Application):
    """``jupyter-chat-ext hub-service``: the chat core as a JupyterHub service."""

    name = "jupyter-chat-ext-hub-service"
    description = "Chat and live values for every user of a JupyterHub."

    db_path = Unicode(
        DEFAULT_DB_FILE,
        help="SQLite file of the rooms' history. A relative path is taken from the "
        "service's working directory: the Hub's own, unless the service's 'cwd' says "
        "otherwise. Its folder must exist and be writable (the service creates no "
        "folders); the service logs the absolute path at start.",
    ).tag(config=True)
    service_url = Unicode(help="Where to listen (default: $JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )
    cookie_secret = Unicode(
        help="Hex key signing the service's login cookies (default: "
        "$JUPYTER_CHAT_EXT_COOKIE_SECRET, else a random key per process). Replicas "
        "must share one, or a browser logged in on one is a stranger to the others."
    ).tag(config=True)

    @default("cookie_secret")
    def _default_cookie_secret(self) -> str:
        value = os.environ.get(COOKIE_SECRET_ENV, "") or os.urandom(32).hex()
        return str(self._check_cookie_secret({"value": value}))

    @validate("cookie_secret")
    def _check_cookie_secret(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        try:
            if len(bytes.fromhex(value)) >= 16:
                return value
        except ValueError:
            pass
        raise TraitError(
            f"HubChatService.cookie_secret (or ${COOKIE_SECRET_ENV}) must be at least 32 "
            "hex digits (for example the output of `openssl rand -hex 32`)"
        )

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO  # say where it listens and keeps history, as the Hub does

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    aliases: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "db-path": "HubChatService.db_path",
        "url": "HubChatService.service_url",
        "redis-url": "HubChatService.redis_url",
        "log-level": "Application.log_level",
    }

    def history_file(self) -> Path | None:
        """The absolute path of the SQLite history, once its folder is known to be writable.

        None when no file of ours holds the history (``redis_url``, or a
        ``history_class`` other than SQLite). Raises :class:`TraitError` naming
        ``db_path`` when the folder is missing or not writable: the service creates no
        folders, so a mistyped path or a volume that was not mounted stops it at
        start instead of keeping the history where nobody will look for it.
        """
        if self.redis_url or not issubclass(self.history_class, SQLiteHistory):
            return None
        path = Path(self.db_path).expanduser().resolve()
        folder = path.parent
        fix = "or pass --db-path=/a/writable/folder/chat.sqlite"
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise TraitError(
                f"HubChatService.db_path is {path}, but {folder} {problem}: create that "
                f"folder (on storage that outlives the service), {fix}"
            )
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".jupyter_chat_ext-probe-"):
                pass
        except OSError as exc:
            raise TraitError(
                f"HubChatService.db_path is {path}, but the service cannot create files in "
                f"{folder} ({exc.strerror}), where SQLite keeps the file and its -wal and "
                f"-shm files: let the service's user write there, {fix}"
            ) from exc
        return path

    def make_app(self) -> web.Application:
        """The tornado application serving the chat under the service prefix."""
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        path = self.history_file()
        if path is not None:
            self.log.info("chat history in %s (HubChatService.db_path)", path)
        elif self.redis_url:
            self.log.info("chat history in Redis (HubChatService.redis_url)")
        else:
            name = self.history_class.__name__
            self.log.info("chat history kept by %s (HubChatService.history_class)", name)
        registry = self.make_registry(path or self.db_path)
        self.registry = registry
        options = {
            "registry": registry,
            "max_frame_size": self.max_frame_size(),
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
        }
        blobs = {"registry": registry}
        return web.Application(
            [
                (url_path_join(prefix, WS_PATH), HubChatWebSocketHandler, options),
                (url_path_join(prefix, ATTACHMENTS_PATH), HubAttachmentHandler, blobs),
                (url_path_join(prefix, ATTACHMENT_PATH), HubAttachmentHandler, blobs),
                (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
                (prefix, WhoAmIHandler),
            ],
            cookie_secret=bytes.fromhex(self.cookie_secret),
        )

    def start(self) -> None:
        """Listen on the service URL until SIGTERM."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        url = urlparse(self.service_url)
        timeout = self.handshake_timeout or None  # a request's headers, then its body
        server = HTTPServer(self.make_app(), idle_connection_timeout=timeout, body_timeout=timeout)
        await self.registry.start()
        self.apply_process_tuning()
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info("jupyter-chat-ext hub service listening on %s", self.service_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()
        await self.registry.close()
