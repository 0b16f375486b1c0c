"""ChatExtensionApp: the server extension's config traits, wiring and lifecycle."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, NoReturn

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado.httpserver import HTTPServer
from traitlets import Float, TraitError, Unicode, default, validate

from .config import CoreSettings
from .discovery import HUB_SERVICE_ENV, HUB_SERVICE_KERNEL_ENV, TOKEN_ENV, URL_ENV
from .handlers import ChatAttachmentHandler, ChatWebSocketHandler, DelegationHandler
from .protocol import ATTACHMENT_PATH, ATTACHMENTS_PATH, DELEGATION_PATH, WS_PATH
from .rooms import RoomRegistry


def limit_header_timeout(server: HTTPServer, seconds: float) -> None:
    """Have ``server`` drop connections whose request headers take over ``seconds``.

    tornado takes this as ``HTTPServer(idle_connection_timeout=...)`` (default 3600 s),
    and jupyter_server creates its server without it. Every connection of a server
    reads its timeouts, at each request, from the one ``conn_params`` object
    (``HTTP1ConnectionParameters``) the server holds: lowering ``header_timeout``
    there applies to the connections open now and to every later one.
    """
    params = server.conn_params
    current = params.header_timeout
    params.header_timeout = seconds if current is None else min(current, seconds)


class ChatExtensionApp(CoreSettings, ExtensionApp):
    """Chat rooms and live values for everyone who uses this Jupyter server.

    Every setting is a config trait: ``c.ChatExtensionApp.max_message_size = 4096``
    in ``jupyter_server_config.py``, or ``--ChatExtensionApp.max_message_size=4096``.
    """

    name = "jupyter_chat_ext"
    load_other_extensions = True

    db_path = Unicode(
        help="SQLite file holding the rooms' message history. "
        "Default: jupyter_chat_ext/chat.sqlite under the Jupyter data dir."
    ).tag(config=True)

    @default("db_path")
    def _default_db_path(self) -> str:
        return str(Path(jupyter_data_dir()) / "jupyter_chat_ext" / "chat.sqlite")

    delegation_ttl = Float(
        1800.0,
        min=1.0,
        help="Seconds a delegation (the Chat widget lending its user's identity to its "
        "kernel) stays valid; the widget renews it while it is shown. A connection "
        "that presented one is closed when it expires (close code 4001) and reconnects "
        "with the renewal.",
    ).tag(config=True)

    hub_service_url = Unicode(
        help="On a JupyterHub: the public URL of the hub-wide chat service "
        "(e.g. https://hub.example.org/services/chat/). When set, Chat widgets open it "
        "from the browser, and kernels started by this server chat there (or at "
        "hub_service_kernel_url) with this server's Hub API token. Default: "
        "$JUPYTER_CHAT_EXT_HUB_SERVICE_URL (a Hub admin sets it in c.Spawner.environment)."
    ).tag(config=True)

    @default("hub_service_url")
    def _default_hub_service_url(self) -> str:
        return os.environ.get(HUB_SERVICE_ENV, "")

    hub_service_kernel_url = Unicode(
        help="On a JupyterHub: the address of the same chat service for kernels, when "
        "they cannot reach hub_service_url (the public one, which the browser uses): "
        "e.g. http://chat-ext:10101/services/chat/ (the service itself) or "
        "http://proxy-public/services/chat/ (the Hub's proxy inside a Kubernetes "
        "cluster). Used only with hub_service_url. Default: "
        "$JUPYTER_CHAT_EXT_HUB_SERVICE_KERNEL_URL, else hub_service_url."
    ).tag(config=True)

    @default("hub_service_kernel_url")
    def _default_hub_service_kernel_url(self) -> str:
        value = os.environ.get(HUB_SERVICE_KERNEL_ENV, "")
        return str(self._check_hub_service_kernel_url({"value": value}))

    @validate("hub_service_kernel_url")
    def _check_hub_service_kernel_url(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not value.startswith(("http://", "https://")):
            raise TraitError(
                f"ChatExtensionApp.hub_service_kernel_url (or ${HUB_SERVICE_KERNEL_ENV}) is "
                f"{value!r}; it must start with http:// or https:// (for example "
                "http://chat-ext:10101/services/chat/), or be empty to use hub_service_url"
            )
        return value

    registry: RoomRegistry

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        """Read this extension's settings; a bad one stops the server, naming it.

        jupyter_server would log the error and load the extension with every setting
        at its default (a valid ``db_path`` beside the bad value included).
        """
        try:
            super()._link_jupyter_server_extension(serverapp)
            self.hub_service_kernel_url  # noqa: B018 - a default read from $ENV is checked here
        except Exception as exc:  # TraitError, or traitlets' own for a repeated option
            self._refuse_to_start(f"a setting is invalid: {exc}")

    def initialize_settings(self) -> None:
        """Create the room registry and its history store."""
        try:
            self.registry = self.make_registry(self.db_path)
        except (OSError, ValueError, sqlite3.Error) as exc:  # ValueError says what to do
            self._refuse_to_start(str(exc).rstrip("."))
        where = "Redis" if self.redis_url else self.db_path
        self.log.info("jupyter_chat_ext: history in %s", where)

    def _refuse_to_start(self, problem: str) -> NoReturn:
        problem = problem.rstrip(".")
        message = (
            f"jupyter_chat_ext: {problem}. Fix it in jupyter_server_config.py or on the "
            "command line (docs/configuration.md lists every setting); the server does not "
            "start with the chat half-configured."
        )
        self.log.critical(message)
        raise SystemExit(1)

    def initialize_handlers(self) -> None:
        """Serve the WebSocket at ``{base_url}chat-ext/ws`` and delegations beside it."""
        options: dict[str, Any] = {
            "registry": self.registry,
            "max_frame_size": self.max_frame_size(),
            "delegation_ttl": self.delegation_ttl,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
        }
        self.handlers.append((rf"/{WS_PATH}", ChatWebSocketHandler, options))
        ttl = {"delegation_ttl": self.delegation_ttl}
        self.handlers.append((rf"/{DELEGATION_PATH}", DelegationHandler, ttl))
        blobs = {"registry": self.registry, "delegation_ttl": self.delegation_ttl}
        for path in (ATTACHMENTS_PATH, ATTACHMENT_PATH):
            self.handlers.append((rf"/{path}", ChatAttachmentHandler, blobs))

    def server_url(self) -> str:
        """The URL kernels on this machine use to reach the server (with base_url)."""
        app = self.serverapp
        assert app is not None
        if app.sock:
            return str(app.connection_url)
        host = "[::1]" if ":" in (app.ip or "") else "127.0.0.1"
        scheme = "https" if app.certfile else "http"
        return f"{scheme}://{host}:{app.port}{app.base_url}"

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start the registry (as the hub service does), and tell kernels where to chat."""
        await self.registry.start()
        self.apply_process_tuning()
        # No HTTP server of its own when the server is embedded (pytest-jupyter).
        http_server = getattr(serverapp, "http_server", None)
        if self.handshake_timeout and http_server is not None:
            limit_header_timeout(http_server, self.handshake_timeout)
        kernel_url = self.hub_service_kernel_url
        if kernel_url and not self.hub_service_url:
            self.log.warning(
                "jupyter_chat_ext: hub_service_kernel_url (%s) is ignored: set "
                "hub_service_url ($%s) too, or kernels and browsers would chat in "
                "different places",
                kernel_url,
                HUB_SERVICE_ENV,
            )
        if self.hub_service_url:
            os.environ[HUB_SERVICE_ENV] = self.hub_service_url  # the widget's (public) URL
            os.environ[URL_ENV] = kernel_url or self.hub_service_url
            os.environ[TOKEN_ENV] = os.environ.get("JUPYTERHUB_API_TOKEN", "")
            self.log.info("jupyter_chat_ext: kernels chat through %s", os.environ[URL_ENV])
        else:
            os.environ[URL_ENV] = self.server_url()
            os.environ[TOKEN_ENV] = serverapp.identity_provider.token or ""

    async def stop_extension(self) -> None:
        """Finish pending writes and close the history store."""
        if hasattr(self, "registry"):  # not if a bad setting stopped the start
            await self.registry.close()
