"""Link: a widget trait kept equal across notebooks through a live-value topic.

It belongs beside the widget: remote values are applied on the kernel's main loop,
where widgets live. It needs no anywidget, so ``from jupyter_chat_ext import Link``
stays cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import values

if TYPE_CHECKING:
    from .client import Room


class Link:
    """A widget trait kept equal across notebooks through a topic (see :meth:`Room.link`)."""

    def __init__(self, room: Room, widget: Any, trait: str, topic: str) -> None:
        self.room = room
        self.widget = widget
        self.trait = trait
        self.topic = topic
        self._own: deque[str] = deque(maxlen=256)  # ids of values we published
        self._applying = False
        self._stream = room.stream(topic)
        widget.observe(self._local_change, names=trait)
        self._stream.on_value(self._remote_value)
        current = room.values.get(topic)
        if topic in room.values and not isinstance(current, values.InvalidValue):
            self._apply(current)
        else:
            self._own.append(room.publish(topic, getattr(widget, trait)))

    def unlink(self) -> None:
        """Stop keeping the trait in step."""
        self.widget.unobserve(self._local_change, names=self.trait)
        self._stream.off_value(self._remote_value)

    def _local_change(self, change: dict[str, Any]) -> None:
        if not self._applying:
            self._own.append(self.room.publish(self.topic, change["new"]))

    def _remote_value(self, event: dict[str, Any]) -> None:
        if event.get("id") in self._own:
            return  # our own value coming back
        if isinstance(event["value"], values.InvalidValue):
            return  # another user's bad value never reaches the widget (logged once)
        self._schedule(lambda: self._apply(event["value"]))

    def _apply(self, value: Any) -> None:
        self._applying = True
        try:
            setattr(self.widget, self.trait, value)
        finally:
            self._applying = False

    @staticmethod
    def _schedule(func: Callable[[], None]) -> None:
        # Widgets belong to the kernel's main thread: apply there when in a kernel.
        try:
            from IPython.core.getipython import get_ipython

            kernel = getattr(get_ipython(), "kernel", None)
        except ImportError:
            kernel = None
        if kernel is not None and getattr(kernel, "io_loop", None) is not None:
            kernel.io_loop.add_callback(func)
        else:
            func()
