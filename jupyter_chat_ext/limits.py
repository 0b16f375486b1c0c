"""Per-user accounting: rate limiters and the count of open connections.

Shared by all of a user's connections to one process (with several replicas, each
counts its own). ``TokenBucket`` is also what ``ChatClient`` paces its values with,
so the client imports this module and nothing of the server core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocol import ProtocolError

if TYPE_CHECKING:
    from .config import ChatSettings
    from .presence import Member


class TokenBucket:
    """A token-bucket rate limiter: ``rate`` tokens per second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> float:
        """Take one token; return 0 on success, else the seconds to wait for one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate if self.rate > 0 else float("inf")

    def refill_time(self) -> float:
        """Seconds until the bucket is full again (0 if it is)."""
        tokens = self._tokens + (self._clock() - self._stamp) * self.rate
        if tokens >= self.burst:
            return 0.0
        return (self.burst - tokens) / self.rate if self.rate > 0 else float("inf")


# Mentions pushed live to one person: past this, further ones wait in their unread list
# (sent at their next connect), so a flood of mentions cannot swamp their connections.
MENTION_PUSH_RATE = 2.0
MENTION_PUSH_BURST = 30


@dataclass(frozen=True)
class UserBuckets:
    """One user's rate limiters (shared by all of their connections to this process)."""

    messages: TokenBucket
    values: TokenBucket
    typing: TokenBucket
    joins: TokenBucket
    mentioned: TokenBucket  # mentions pushed TO this user (others' sends spend it)


class UserLimits:
    """Every user's rate limiters and open connections, against the settings' limits."""

    def __init__(self, settings: ChatSettings) -> None:
        self.settings = settings
        self._connections: dict[str, set[Member]] = {}
        self._buckets: dict[str, UserBuckets] = {}
        self._forgetting: dict[str, asyncio.TimerHandle] = {}  # -> _forget_when_full

    def attach(self, username: str, connection: Member) -> None:
        """Count a new connection of ``username``; refuse it past the per-user limit."""
        connections = self._connections.setdefault(username, set())
        limit = self.settings.max_connections_per_user
        if len(connections) >= limit:
            raise ProtocolError(
                "too_many_connections",
                f"{username} already has {limit} chat connections open on this server; "
                "close some tabs or kernels, then reconnect",
            )
        connections.add(connection)

    def connections(self, username: str) -> list[Member]:
        """The open connections of ``username`` to this process."""
        return list(self._connections.get(username, ()))

    def detach(self, username: str, connection: Member) -> None:
        """Forget a closed connection; with the user's last, their full rate limiters too."""
        connections = self._connections.get(username)
        if connections is not None:
            connections.discard(connection)
            if connections:
                return
            del self._connections[username]
        self._forget_when_full(username)

    def _forget_when_full(self, username: str) -> None:
        """Drop the rate limiters of a user with no connection once they are full again.

        Each new person (a token login without a cookie is one) would otherwise leave
        theirs behind for good. Not before they are full: reconnecting must not refill them.
        """
        timer = self._forgetting.pop(username, None)
        if timer is not None:
            timer.cancel()
        buckets = self._buckets.get(username)
        if buckets is None or username in self._connections:
            return
        wait = max(bucket.refill_time() for bucket in vars(buckets).values())
        if wait <= 0:
            del self._buckets[username]
        elif wait < float("inf"):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test): kept
                return
            self._forgetting[username] = loop.call_later(wait, self._forget_when_full, username)

    def buckets(self, username: str) -> UserBuckets:
        """The rate limiters shared by all of a user's connections."""
        if username not in self._buckets:
            s = self.settings
            self._buckets[username] = UserBuckets(
                messages=TokenBucket(s.message_rate_limit, s.message_burst),
                values=TokenBucket(s.data_rate_limit, s.data_burst),
                typing=TokenBucket(s.typing_rate_limit, s.typing_burst),
                joins=TokenBucket(s.join_rate_limit, s.join_burst),
                mentioned=TokenBucket(MENTION_PUSH_RATE, MENTION_PUSH_BURST),
            )
        return self._buckets[username]
