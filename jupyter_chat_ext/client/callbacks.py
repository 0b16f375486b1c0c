"""The callbacks a caller registers, and calling them so that one failing stops nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

MessageCallback = Callable[[dict[str, Any]], None]


def fire(callbacks: Iterable[MessageCallback], event: dict[str, Any], room: str) -> None:
    """Call each of ``callbacks`` with ``event``; a failing one is logged, the rest still run."""
    for callback in list(callbacks):
        try:
            callback(event)
        except Exception:
            log.exception("chat: callback %r failed in room %r", callback, room)
