"""The ``Chat`` widget: a chat window in a notebook cell, and its Python API.

The window is an anywidget whose front-end opens its own WebSocket from the browser,
so it keeps working while the kernel is busy or dead. The Python methods (``send``,
``publish``, ``on_message``, ...) use a :class:`~jupyter_chat_ext.client.ChatClient`
in the kernel: the one of the person who ran the cell (see
:mod:`jupyter_chat_ext.kernel`), shared by every ``Chat`` in the kernel, so showing
or re-running ``Chat(...)`` adds no connection. The last ``Chat`` closed closes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anywidget
from traitlets import Unicode, default

from . import kernel
from .client import ChatClient, MessageCallback, Room, Stream
from .discovery import HUB_SERVICE_ENV
from .link import Link

STATIC = Path(__file__).parent / "static"


class KernelClients:
    """One :class:`ChatClient` per person speaking from this kernel, shared by every Chat."""

    def __init__(self) -> None:
        self._clients: dict[str, ChatClient] = {}  # username ("" = the kernel's own)
        self._holders: dict[str, set[int]] = {}  # username -> ids of the Chats using it

    def for_current_cell(self, holder: object) -> ChatClient:
        """The client of the person who ran the current cell (connected on first use)."""
        delegation = kernel.current_delegation()
        user = kernel.delegation_user(delegation) if delegation else None
        key = user["username"] if user else ""
        client = self._clients.get(key)
        if client is None or client.closed:
            if delegation:
                client = ChatClient(delegation=delegation)
            else:  # the owner: the same identity as their CLI on this machine
                client = ChatClient(delegation="", remember_identity=True)
            self._clients[key] = client
        elif delegation:
            client.use_delegation(delegation)
        self._holders.setdefault(key, set()).add(id(holder))
        return client

    def renew(self, delegation: str) -> None:
        """A tab renewed its delegation: the person's client keeps it for reconnects."""
        user = kernel.delegation_user(delegation)
        client = self._clients.get(user["username"]) if user else None
        if client is not None and not client.closed:
            client.use_delegation(delegation)

    def release(self, holder: object) -> None:
        """``holder`` is closed: close the clients no other Chat uses."""
        for key, holders in list(self._holders.items()):
            holders.discard(id(holder))
            if not holders:
                del self._holders[key]
                client = self._clients.pop(key, None)
                if client is not None:
                    client.close()


kernel_clients = KernelClients()


class Chat(anywidget.AnyWidget):
    """A chat window for ``room``: messages, members, typing and live values.

    Example::

        from jupyter_chat_ext import Chat
        chat = Chat("general")
        chat                      # shows the window
        chat.send("hello")        # from Python, as this kernel's user
        chat.publish("loss", 0.12)
        chat.share(df, "the cleaned table")   # a figure, a table, an array, a file
        chat.take(12)             # what message 12 shares, in this kernel
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
        self._client = client  # given by the caller: used for everyone, never closed here
        self._rooms: dict[tuple[int, str], Room] = {}
        self.on_msg(self._on_frontend_message)

    def _on_frontend_message(self, _: Any, content: dict[str, Any], buffers: Any) -> None:
        # Each tab lends this kernel its viewer's identity (see DelegationHandler), so
        # a cell run from that tab speaks as the person who ran it.
        delegation = content.get("delegation")
        if content.get("kind") != "delegation" or not isinstance(delegation, str):
            return
        if kernel.lend(delegation):
            kernel_clients.renew(delegation)

    @property
    def client(self) -> ChatClient:
        """The ChatClient of the person running this cell (connected on first use)."""
        if self._client is not None:
            return self._client
        return kernel_clients.for_current_cell(self)

    @property
    def chat_room(self) -> Room:
        """The kernel-side :class:`Room` for the current ``room``, as the cell's person."""
        client = self.client
        key = (id(client), self.room)
        room = self._rooms.get(key)
        if room is None or room.client is not client or room.gone is not None:
            room = self._rooms[key] = client.join(self.room)
        return room

    def close(self) -> None:
        """Close the window; the kernel's connections close with the last Chat."""
        self._rooms.clear()
        kernel_clients.release(self)
        super().close()

    def send(self, body: str, *, reply_to: int | None = None) -> dict[str, Any]:
        """Post a message (a reply to ``reply_to``'s seq); returns it as stamped."""
        return self.chat_room.send(body, reply_to=reply_to)

    def share(
        self, obj: Any, caption: str | None = None, mime: str | None = None
    ) -> dict[str, Any]:
        """Post ``obj`` (a figure, table, array, file...) as an attachment (see Room.share)."""
        return self.chat_room.share(obj, caption, mime)

    def take(self, seq: int) -> Any:
        """The object message ``seq`` shares, in this kernel (see Room.take)."""
        return self.chat_room.take(seq)

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """The room's messages seen by the kernel that carry an attachment."""
        return self.chat_room.attachments

    def edit(self, seq: int, body: str) -> dict[str, Any]:
        """Replace the body of your message ``seq`` (see Room.edit)."""
        return self.chat_room.edit(seq, body)

    def delete(self, seq: int) -> dict[str, Any]:
        """Delete message ``seq``; its body is erased everywhere (see Room.delete)."""
        return self.chat_room.delete(seq)

    def react(self, seq: int, emoji: str) -> dict[str, Any]:
        """Add your reaction ``emoji`` to message ``seq``."""
        return self.chat_room.react(seq, emoji)

    def unreact(self, seq: int, emoji: str) -> dict[str, Any]:
        """Take back your reaction ``emoji`` from message ``seq``."""
        return self.chat_room.unreact(seq, emoji)

    def on_change(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` after a held message is edited, deleted, reacted to."""
        return self.chat_room.on_change(callback)

    def search(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Messages of the room with every word of ``query``, newest first (see Room.search)."""
        return self.chat_room.search(query, limit)

    def load_around(self, seq: int, limit: int = 50) -> list[dict[str, Any]]:
        """Fetch the messages around ``seq`` into ``messages`` (see Room.load_around)."""
        return self.chat_room.load_around(seq, limit)

    def export(
        self, format: str = "markdown", *, attachments_dir: str | os.PathLike[str] | None = None
    ) -> str:
        """The whole conversation as markdown, html or json, attachments included (Room.export)."""
        return self.chat_room.export(format, attachments_dir=attachments_dir)

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
