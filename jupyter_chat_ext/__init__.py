"""Chat and live data between Jupyter users, inside their notebooks.

``Chat`` is the notebook widget; ``ChatClient`` talks to a chat server from a
kernel, a script or a test; the server extension (``ChatExtensionApp``) is enabled
by ``pip install``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import ChatClient, ChatError, Room, Stream
from .link import Link
from .values import InvalidValue

if TYPE_CHECKING:
    from .widget import Chat

__all__ = [
    "Chat",
    "ChatClient",
    "ChatError",
    "InvalidValue",
    "Link",
    "Room",
    "Stream",
    "__version__",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The widget needs anywidget and ipywidgets: import them only when asked for.
    if name == "Chat":
        from .widget import Chat

        return Chat
    raise AttributeError(f"module 'jupyter_chat_ext' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server where the extension is (imported only by the server)."""
    from .app import ChatExtensionApp

    return [{"module": "jupyter_chat_ext", "app": ChatExtensionApp}]
