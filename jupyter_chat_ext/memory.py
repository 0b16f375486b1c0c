"""Giving memory back to the system after a burst of connections.

A burst of connections (a class joining, a reconnect storm after a restart) leaves
the process holding memory it no longer uses: Python frees the connections' objects,
but the allocator keeps the pages they were on, scattered among objects that live
on. :class:`Release` counts connections; when most of a burst has gone, it runs a full
garbage collection and glibc's ``malloc_trim(0)`` once, a little later, so that the
server's RSS comes back near its level before the burst. Nothing happens in ordinary
use: only when at least ``BURST`` connections have closed and at most half of the
peak remain.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import sys
from typing import Final

log = logging.getLogger(__name__)

BURST: Final = 1_000  # connections closed since the peak before memory is given back
DELAY: Final = 10.0  # seconds after that: the rest of the burst has time to close


def malloc_trim() -> bool:
    """Return the free memory at the top and in the holes of glibc's heap; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others
        return False
    trim(0)
    return True


class Release:
    """Counts a process's connections; gives memory back once a burst of them has gone."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self.count = 0
        self.peak = 0
        self.releases = 0  # how many times memory was given back (for tests and logs)
        self._timer: asyncio.TimerHandle | None = None

    def opened(self) -> None:
        """A connection opened."""
        self.count += 1
        self.peak = max(self.peak, self.count)

    def closed(self) -> None:
        """A connection closed: after a burst, give memory back soon."""
        self.count -= 1
        gone = self.peak - self.count
        if self._enabled and self._timer is None and gone >= BURST and self.count <= self.peak // 2:
            self._timer = asyncio.get_running_loop().call_later(DELAY, self.release)

    def release(self) -> None:
        """Collect garbage and trim the heap now; the next burst is counted from here."""
        self._timer = None
        self.peak = self.count
        gc.collect()
        malloc_trim()
        self.releases += 1
        log.info("chat: gave memory back after a burst of connections (%d open)", self.count)

    def close(self) -> None:
        """Cancel a release not yet done."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
