"""The WebSocket endpoint: authenticate, decode, hand to the core. It keeps no state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from .protocol import User
from .rooms import RoomRegistry
from .session import Session

AUTH_RESOURCE = "chat"


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


def _consume(future: asyncio.Future[None]) -> None:
    # A write to a socket that closed meanwhile fails; on_close cleans up.
    if not future.cancelled():
        future.exception()


class ChatWebSocketHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``{base_url}chat-ext/ws``: one chat connection, any number of rooms.

    jupyter_server authenticates the handshake (token or login cookie; the Origin is
    checked for cookie-authenticated requests) and the authorizer is asked for
    ``execute`` on the ``chat`` resource; a refused handshake gets 403.
    """

    auth_resource = AUTH_RESOURCE
    session: Session | None = None

    def initialize(self, registry: RoomRegistry, max_frame_size: int) -> None:
        """Receive the room registry and the largest frame accepted (from the app)."""
        self.registry = registry
        self._max_frame_size = max_frame_size

    @property
    def max_message_size(self) -> int:
        """Frames larger than this close the connection (code 1009)."""
        return self._max_frame_size

    def set_default_headers(self) -> None:
        """Skip JupyterHandler's HTML headers: meaningless for a WebSocket."""

    async def pre_get(self) -> None:
        """Ask the authorizer whether this user may chat."""
        authorized = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "execute", AUTH_RESOURCE)
        )
        if not authorized:
            raise web.HTTPError(403, "not authorized to chat on this server")

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Authenticate and authorize, then upgrade to a WebSocket."""
        await self.pre_get()
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start a session and greet the client with ``hello``."""
        super().open(*args, **kwargs)
        self.session = Session(self.registry, user_from_jupyter(self.current_user), self._write)
        self._write(self.session.hello())

    def _write(self, frame: bytes) -> None:
        try:
            self.write_message(frame).add_done_callback(_consume)
        except WebSocketClosedError:
            self.close()

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Hand a frame to the session; tornado waits for a returned awaitable."""
        assert self.session is not None
        return self.session.receive(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        """Leave every room."""
        if self.session is not None:
            self.session.close()
