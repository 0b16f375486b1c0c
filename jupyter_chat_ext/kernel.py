"""Who a kernel speaks as: the person who ran the cell.

Each notebook tab that shows a ``Chat`` widget lends the kernel its viewer's identity
(a delegation from ``POST {base_url}chat-ext/delegation``) through the widget's comm.
The comm message names the tab's kernel connection (its header's ``session``), and so
does every execute request the tab sends. A cell therefore runs on behalf of the
viewer of the tab that ran it, even when several people share one kernel. A cell run
from a tab that lent no identity (no widget shown there, or nbclient) speaks as the
kernel's own identity: the server's owner, through the token the server gave it.

Nothing here verifies a delegation: the server does, when a client presents one.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import Any

_lock = threading.Lock()
# The frontend kernel connection (header "session") -> the delegation its viewer lent.
_delegations: dict[str, str] = {}
_MAX_TABS = 256  # tabs remembered per kernel (oldest forgotten first)


def delegation_user(delegation: str) -> dict[str, Any] | None:
    """The user a delegation names (read, not verified), or None if it is not one.

    A delegation is a tornado signed value (version 2): ``2|1:0|10:<ts>|<n>:<name>|
    <n>:<base64 user JSON>|<signature>``.
    """
    parts = delegation.split("|")
    if len(parts) != 6 or parts[0] != "2":
        return None
    try:
        payload = base64.b64decode(parts[4].split(":", 1)[1], validate=True)
        user = json.loads(payload)
    except (IndexError, ValueError, binascii.Error):
        return None
    if not isinstance(user, dict) or not isinstance(user.get("username"), str):
        return None
    return user


def _parent_session() -> str | None:
    """The frontend connection whose request this kernel is handling now, if any."""
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or not hasattr(kernel, "get_parent"):
        return None
    try:
        parent = kernel.get_parent("shell") or {}
    except (LookupError, TypeError):
        return None
    session = parent.get("header", {}).get("session")
    return session if isinstance(session, str) and session else None


def lend(delegation: str) -> bool:
    """Record a delegation sent by the tab whose message is being handled now.

    Returns False (and records nothing) if it does not name a user or no tab is known.
    """
    session = _parent_session()
    if session is None or delegation_user(delegation) is None:
        return False
    with _lock:
        _delegations.pop(session, None)
        _delegations[session] = delegation
        while len(_delegations) > _MAX_TABS:
            del _delegations[next(iter(_delegations))]
    return True


def current_delegation() -> str | None:
    """The delegation of the person who ran the current cell, or None for the owner."""
    session = _parent_session()
    if session is None:
        return None
    with _lock:
        return _delegations.get(session)


def forget_all() -> None:
    """Forget every delegation (for tests and kernel restarts)."""
    with _lock:
        _delegations.clear()
