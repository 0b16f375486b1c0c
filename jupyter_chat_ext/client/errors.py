"""ChatError: the one exception a caller of the client sees."""

from __future__ import annotations


class ChatError(Exception):
    """Anything that went wrong for a caller of the client.

    ``code`` is the server's error code (see docs/protocol.md) or one of the
    client's own: ``no_server``, ``refused``, ``timeout``, ``closed``,
    ``wrong_thread``, ``invalid_value``, ``invalid_attachment`` (attachment bytes that
    are not what their message says). The message says what to do.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
