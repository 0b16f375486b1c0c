"""Chat and live data between Jupyter users, inside their notebooks.

``ChatClient`` talks to a chat server from a kernel, a script or a test; the
server extension (``ChatExtensionApp``) is enabled by ``pip install``.
"""

from __future__ import annotations

from typing import Any

from .client import ChatClient, ChatError, Room

__all__ = ["ChatClient", "ChatError", "Room", "__version__"]
__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server where the extension is (imported only by the server)."""
    from .app import ChatExtensionApp

    return [{"module": "jupyter_chat_ext", "app": ChatExtensionApp}]
