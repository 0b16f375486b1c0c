"""The Tornado internals the coalesced write path relies on, in one place.

Tornado's ``WebSocketHandler.write_message`` frames and sends each message on its
own: one ``send()`` system call per frame. A chat connection is often handed many
frames in one turn of the event loop (a burst of broadcasts, a batch of stored
messages), so :class:`~jupyter_chat_ext.handlers.SessionSocket` frames them itself
and writes them together. That needs what Tornado does not promise as API:

- ``handler.ws_connection`` is a ``WebSocketProtocol13`` with an ``is_closing()``
  method and a ``stream`` (the connection's ``IOStream``);
- its ``_compressor`` is ``None`` unless permessage-deflate was negotiated (with
  compression the frames cannot be built here, and the slow path is used);
- a plain ``IOStream`` with nothing waiting to be written (``writing()`` is False)
  may be written to directly with ``write_to_fd``: what the socket does not take
  goes to ``IOStream.write``, behind nothing, so the byte order is kept. That skips
  a future, a buffer and two callbacks per write, most of a broadcast's cost.

``tests/test_wsframes.py`` checks these against the installed Tornado, so an upgrade
that changes them fails loudly instead of corrupting connections.
"""

from __future__ import annotations

import struct
from asyncio import Future
from typing import Any

from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler

_FIN = 0x80
_TEXT = 0x1
_BINARY = 0x2

_last: tuple[bytes, bool, bytes] | None = None


def header(payload: bytes, binary: bool = False) -> bytes:
    """The header of an unmasked, final server frame carrying ``payload``.

    A broadcast hands the same ``payload`` object to every receiver in turn, so the
    last header is remembered and reused: each frame is framed once, not per receiver.
    """
    global _last
    last = _last
    if last is not None and last[0] is payload and last[1] == binary:
        return last[2]
    first = _FIN | (_BINARY if binary else _TEXT)
    length = len(payload)
    if length < 126:
        head = bytes((first, length))
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, 126, length)
    else:
        head = struct.pack("!BBQ", first, 127, length)
    _last = (payload, binary, head)
    return head


def raw_stream(handler: WebSocketHandler) -> IOStream | None:
    """The stream to write pre-built frames to, or None to use ``write_message``.

    None when the connection is closing or gone, or compresses its frames.
    """
    connection: Any = handler.ws_connection
    if connection is None or connection.is_closing():
        return None
    if getattr(connection, "_compressor", None) is not None:
        return None
    stream = getattr(connection, "stream", None)
    return stream if isinstance(stream, IOStream) else None


def write(stream: IOStream, data: bytes) -> Future[None] | None:
    """Write ``data`` to ``stream``, now as far as the socket takes it.

    Returns None if the socket took it all, else the future of tornado's write of
    the rest (done once that is written too).
    """
    view = memoryview(data)
    if type(stream) is IOStream and not stream.writing() and not stream.closed():
        try:
            sent = stream.write_to_fd(view)
        except OSError:  # would block, or the peer is gone: tornado's write handles both
            sent = 0
        if sent == len(data):
            return None
        view = view[sent:]
    return stream.write(view)
