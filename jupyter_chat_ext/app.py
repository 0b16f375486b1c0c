"""ChatExtensionApp: the server extension's config traits, wiring and lifecycle."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, Type, Unicode, default

from .discovery import HUB_SERVICE_ENV, TOKEN_ENV, URL_ENV
from .handlers import ChatWebSocketHandler, DelegationHandler
from .history import HistoryStore, SQLiteHistory
from .rooms import ChatSettings, RoomRegistry

WS_PATH = "chat-ext/ws"
DELEGATION_PATH = "chat-ext/delegation"


class ChatExtensionApp(ExtensionApp):
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

    history_class = Type(
        default_value=SQLiteHistory,
        klass=HistoryStore,
        help="Where history is kept: a HistoryStore subclass, constructed with db_path.",
    ).tag(config=True)

    history_on_join = Int(
        100, min=0, help="How many recent messages a client receives when it joins a room."
    ).tag(config=True)
    history_page_size = Int(
        100, min=1, help="The most messages one 'history' request (load earlier) returns."
    ).tag(config=True)
    max_replay = Int(
        10_000,
        min=0,
        help="The largest gap a reconnecting client is sent whole; past it the client "
        "gets recent history with recovered=false.",
    ).tag(config=True)
    max_message_size = Int(
        16_384, min=1, help="The largest chat message body, in UTF-8 bytes."
    ).tag(config=True)
    max_value_size = Int(1_048_576, min=1, help="The largest live value, in bytes of JSON.").tag(
        config=True
    )
    message_rate_limit = Float(
        100.0, min=0.0, help="Chat messages per second one connection may send, sustained."
    ).tag(config=True)
    message_burst = Int(
        1_000, min=1, help="Chat messages one connection may send in a burst above the rate."
    ).tag(config=True)
    data_rate_limit = Float(
        2_000.0, min=0.0, help="Live values per second one connection may publish, sustained."
    ).tag(config=True)
    data_burst = Int(
        2_000, min=1, help="Live values one connection may publish in a burst above the rate."
    ).tag(config=True)
    typing_timeout = Float(
        5.0, min=0.1, help="Seconds after which a 'typing' indicator that was not renewed ends."
    ).tag(config=True)
    max_send_queue = Int(
        4 * 1024 * 1024,
        min=65_536,
        help="Bytes a connection may leave unread before it is closed as too slow "
        "(close code 4008). Past 64 KiB (or a quarter of it), typing and live values "
        "are conflated.",
    ).tag(config=True)
    max_connections_per_user = Int(
        20, min=1, help="Chat connections one user may have open at once (close code 4029)."
    ).tag(config=True)
    max_rooms_per_connection = Int(100, min=1, help="Rooms one connection may be in at once.").tag(
        config=True
    )
    max_room_name = Int(200, min=1, help="The longest room name, in characters.").tag(config=True)
    series_length = Int(
        100,
        min=0,
        help="Recent values kept per topic (small JSON values only) and sent to late joiners.",
    ).tag(config=True)
    heartbeat_interval = Float(
        10.0, min=0.05, help="Seconds between pings to each connection."
    ).tag(config=True)
    heartbeat_timeout = Float(
        30.0,
        min=0.1,
        help="Seconds without an answer to pings after which a connection is closed "
        "and its user leaves the rooms' presence.",
    ).tag(config=True)
    delegation_ttl = Float(
        1800.0,
        min=1.0,
        help="Seconds a delegation (the Chat widget lending its user's identity to its "
        "kernel) stays valid; the widget renews it while it is shown.",
    ).tag(config=True)
    room_idle_timeout = Float(
        60.0, min=0.0, help="Seconds an empty room stays in memory before it is unloaded."
    ).tag(config=True)

    hub_service_url = Unicode(
        help="On a JupyterHub: the URL of the hub-wide chat service for programs "
        "(e.g. https://hub.example.org/services/chat/). When set, kernels started by "
        "this server use it, with this server's Hub API token. Default: "
        "$JUPYTER_CHAT_EXT_HUB_SERVICE_URL (a Hub admin sets it in c.Spawner.environment)."
    ).tag(config=True)

    @default("hub_service_url")
    def _default_hub_service_url(self) -> str:
        return os.environ.get(HUB_SERVICE_ENV, "")

    registry: RoomRegistry

    def chat_settings(self) -> ChatSettings:
        """The core's settings, from the traits of the same names."""
        return ChatSettings(**{f.name: getattr(self, f.name) for f in fields(ChatSettings)})

    def initialize_settings(self) -> None:
        """Create the room registry and its history store."""
        self.registry = RoomRegistry(self.history_class(self.db_path), self.chat_settings())
        self.log.info("jupyter_chat_ext: history in %s", self.db_path)

    def initialize_handlers(self) -> None:
        """Serve the WebSocket at ``{base_url}chat-ext/ws`` and delegations beside it."""
        largest = max(self.max_message_size, self.max_value_size)
        # JSON escaping can make a frame up to 6x its payload (\uXXXX), plus the envelope.
        options: dict[str, Any] = {
            "registry": self.registry,
            "max_frame_size": 6 * largest + 65_536,
            "delegation_ttl": self.delegation_ttl,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
        }
        self.handlers.append((rf"/{WS_PATH}", ChatWebSocketHandler, options))
        ttl = {"delegation_ttl": self.delegation_ttl}
        self.handlers.append((rf"/{DELEGATION_PATH}", DelegationHandler, ttl))

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
        """Tell kernels started from now on where to chat: this server or the Hub's."""
        if self.hub_service_url:
            os.environ[URL_ENV] = self.hub_service_url
            os.environ[TOKEN_ENV] = os.environ.get("JUPYTERHUB_API_TOKEN", "")
            self.log.info("jupyter_chat_ext: kernels chat through %s", self.hub_service_url)
        else:
            os.environ[URL_ENV] = self.server_url()
            os.environ[TOKEN_ENV] = serverapp.identity_provider.token or ""

    async def stop_extension(self) -> None:
        """Finish pending writes and close the history store."""
        await self.registry.close()
