"""How the rooms of one process meet the same rooms in other processes.

A single server needs nothing: the base :class:`Backplane` does nothing. Replicas of the
JupyterHub service share rooms through :class:`~jupyter_chat_ext.redis.RedisBackplane`.
Rooms hand the backplane the frames they broadcast (presence, typing, live values,
access changes; chat messages travel with their append, see the Redis history store),
and the backplane hands frames from other processes to a :class:`Receiver`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .protocol import User


class Receiver(Protocol):
    """What a backplane delivers to: the room registry of this process."""

    def receive(self, room: str, frame: bytes, binary: bool, node: str) -> None:
        """A frame another process broadcast in ``room`` (which is loaded here)."""

    def resumed(self, room: str) -> None:
        """The backplane was cut and is back: ``room`` may have missed frames."""

    def prune(self, alive: set[str]) -> None:
        """Only the processes in ``alive`` are still running: forget the others' users."""

    def notified(self, username: str, frame: bytes) -> None:
        """A frame another process sent to every connection of ``username``."""


@dataclass
class Snapshot:
    """A room's shared state as other processes left it, read when it loads here."""

    presence: list[tuple[str, User]] = field(default_factory=list)  # (node, user)
    values: list[tuple[bytes, bool]] = field(default_factory=list)  # (frame, binary)


class Backplane:
    """The channel between processes that serve the same rooms.

    This base class is the default for one process: every method does nothing.
    """

    #: True if other processes may serve the same rooms (rooms then keep no idle cache).
    distributed: bool = False
    #: This process's id among its peers.
    node: str = "local"

    async def start(self, receiver: Receiver) -> None:
        """Connect; frames from other processes go to ``receiver`` from now on."""

    async def watch(self, room: str) -> None:
        """Receive ``room``'s frames from now on (returns once that is in effect)."""

    def unwatch(self, room: str) -> None:
        """Stop receiving ``room``'s frames (it has no member in this process)."""

    async def snapshot(self, room: str) -> Snapshot:
        """Who is in ``room`` in other processes, and its latest live values."""
        return Snapshot()

    def present(self, room: str, user: User, here: bool) -> None:
        """``user`` came to (``here``) or left ``room`` in this process; tell the others."""

    def relay(
        self, room: str, frame: bytes, binary: bool = False, topic: str | None = None
    ) -> None:
        """Pass a broadcast frame to the other processes (``topic``: a live value's)."""

    def notify(self, username: str, frame: bytes) -> None:
        """Pass a frame for every connection of ``username`` to the other processes."""

    async def close(self) -> None:
        """Tell the others this process is gone and disconnect."""
