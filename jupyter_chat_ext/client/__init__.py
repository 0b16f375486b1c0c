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

The package's modules, one job each: ``connection`` (ChatClient: the connection
loop, reconnect and resume, requests and their replies), ``connect`` (opening one
WebSocket, and what a failure means), ``room`` (Room, the public face of a room),
``mirror`` (RoomState: a room's state built from the server's frames, no socket),
``outbox`` (live values waiting to go out: bounds and pacing), ``stream``
(Stream), ``share`` (what a shared object becomes, and what a taken one is),
``provenance`` (where a shared object came from), ``transfer`` (attachments over
HTTP), ``callbacks`` and ``errors``.
"""

from __future__ import annotations

from .callbacks import MessageCallback
from .connection import ChatClient
from .errors import ChatError
from .room import Room
from .share import Bundle
from .stream import Stream

__all__ = ["Bundle", "ChatClient", "ChatError", "MessageCallback", "Room", "Stream"]
