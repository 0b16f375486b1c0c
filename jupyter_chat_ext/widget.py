"""The ``Chat`` widget: a chat window in a notebook cell, and its Python API.

The window is an anywidget whose front-end opens its own WebSocket from the browser,
so it keeps working while the kernel is busy or dead. The Python methods (``send``,
``publish``, ``on_message``, ...) use a :class:`~jupyter_chat_ext.client.ChatClient`
in the kernel, created on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anywidget
from traitlets import Unicode, default

from . import client as client_module
from .client import ChatClient, Link, MessageCallback, Room, Stream
from .discovery import HUB_SERVICE_ENV

STATIC = Path(__file__).parent / "static"


class Chat(anywidget.AnyWidget):
    """A chat window for ``room``: messages, members, typing and live values.

    Example::

        from jupyter_chat_ext import Chat
        chat = Chat("general")
        chat                      # shows the window
        chat.send("hello")        # from Python, as this kernel's user
        chat.publish("loss", 0.12)
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    room = Unicode("general", help="The room shown first; set it to switch rooms.").tag(sync=True)
    url = Unicode(
        help="Base URL of the chat server for the browser; empty means this page's server. "
        "On a JupyterHub with a chat service it defaults to that service."
    ).tag(sync=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get(HUB_SERVICE_ENV, "")

    height = Unicode("440px", help="CSS height of the window.").tag(sync=True)

    def __init__(
        self, room: str = "general", *, client: ChatClient | None = None, **kwargs: Any
    ) -> None:
        super().__init__(room=room, **kwargs)
        self._client = client
        self._own_client = client is None
        self._rooms: dict[str, Room] = {}
        self.on_msg(self._on_frontend_message)

    def _on_frontend_message(self, _: Any, content: dict[str, Any], buffers: Any) -> None:
        # The browser lends this kernel its user's identity (see DelegationHandler),
        # so what the kernel sends shows as sent by the person looking at the widget.
        if content.get("kind") == "delegation" and isinstance(content.get("delegation"), str):
            client_module.kernel_delegation = content["delegation"]
            if self._client is not None and self._own_client:
                self._client.use_delegation(content["delegation"])

    @property
    def client(self) -> ChatClient:
        """The kernel's ChatClient (created, and connected, on first use)."""
        if self._client is None:
            self._client = ChatClient()
        return self._client

    @property
    def chat_room(self) -> Room:
        """The kernel-side :class:`Room` for the current ``room``."""
        name = self.room
        if name not in self._rooms:
            self._rooms[name] = self.client.join(name)
        return self._rooms[name]

    def send(self, body: str) -> dict[str, Any]:
        """Post a message to the room; returns it as stamped by the server."""
        return self.chat_room.send(body)

    def publish(self, topic: str, value: Any) -> str:
        """Publish a live value on ``topic`` (JSON, numpy, pandas; see Room.publish)."""
        return self.chat_room.publish(topic, value)

    def stream(self, topic: str) -> Stream:
        """The live values of ``topic``: latest, series, on_value, ``async for``."""
        return self.chat_room.stream(topic)

    def link(self, widget: Any, trait: str = "value", topic: str | None = None) -> Link:
        """Keep ``widget.<trait>`` equal in every notebook linking the same topic."""
        return self.chat_room.link(widget, trait, topic)

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` for each new message in the room."""
        return self.chat_room.on_message(callback)

    def on_data(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(event)`` for each live value in the room."""
        return self.chat_room.on_data(callback)

    @property
    def values(self) -> dict[str, Any]:
        """The latest value of each topic in the room."""
        return self.chat_room.values

    @property
    def members(self) -> list[dict[str, Any]]:
        """Who is in the room now."""
        return self.chat_room.members

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The room's messages seen by the kernel, in order."""
        return self.chat_room.messages
