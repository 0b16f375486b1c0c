"""Room: the public face of one joined room (what a caller reads, sends and subscribes to).

Its state is a :class:`~.mirror.RoomState` (``room.state``); what it asks of its
client is :class:`RoomHost`, the whole interface between the two. The client, in
turn, changes a room only through ``room.state`` and :meth:`Room._receive` /
:meth:`Room._end`, on its loop thread.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .. import export as exporting
from .. import protocol as p
from .. import values
from ..link import Link
from . import provenance, share
from .callbacks import MessageCallback, fire
from .errors import ChatError
from .mirror import RoomState
from .stream import Stream

if TYPE_CHECKING:
    from .connection import ChatClient


class RoomHost(Protocol):
    """What a :class:`Room` asks of its client; the blocking calls raise :class:`ChatError`."""

    @property
    def client(self) -> ChatClient:
        """The client the room belongs to."""

    @property
    def limits(self) -> p.Limits | None:
        """The server's limits (None before the first connection)."""

    @property
    def closed(self) -> bool:
        """Whether the client was closed."""

    @property
    def attachment_limit(self) -> int:
        """The server's ``max_attachment_size`` in bytes."""

    def request(
        self, room: Room, frame: p.Send | p.ChangeRequest, timeout: float | None
    ) -> dict[str, Any]:
        """Send a message or a change; block until acknowledged and return the message.

        For a change, the message it changed (as changed).
        """

    def load_earlier(self, room: Room, limit: int, timeout: float | None) -> list[dict[str, Any]]:
        """Fetch older messages into ``room.state``; block and return them."""

    def load_members(self, room: Room, timeout: float | None) -> list[dict[str, Any]]:
        """Fetch every member of ``room`` into ``room.state``; block and return them."""

    def load_page(
        self, room: Room, frame: p.HistoryRequest, timeout: float | None
    ) -> list[dict[str, Any]]:
        """Fetch a page before any seq, or around one, into ``room.state``; return its new ones."""

    def change_access(self, frame: p.AccessChange, timeout: float | None) -> dict[str, Any]:
        """Change a private room's members; block and return its access."""

    def upload(self, room: Room, prepared: share.Prepared, timeout: float | None) -> str:
        """Upload an attachment's bytes for ``room``; block and return the upload's id."""

    def download(self, url: str, max_size: int, timeout: float | None) -> bytes:
        """Fetch an attachment's bytes from the server (at most ``max_size``); block."""

    def mark_read(self, room: Room, seq: int, timeout: float | None) -> int:
        """Move the read marker forward to ``seq``; block and return the marker."""

    def queue_value(self, room: Room, topic: str, data: bytes, binary: bool) -> None:
        """Queue an encoded value to go out; never blocks."""

    def typing(self, room: Room, active: bool) -> None:
        """Tell the room that you are (not) typing; never blocks."""

    def leave(self, room: Room) -> None:
        """Leave ``room``; never blocks."""


def _seq(seq: int) -> int:
    """A message's ``seq`` as given by a caller, checked before it goes out."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ChatError(
            "invalid_field", f"seq must be a message's seq (a positive int), not {seq!r}"
        )
    return seq


def not_joined(room: Room, what: str = "") -> ChatError:
    """The error for using a room that was left or removed (``room.gone`` says why)."""
    return ChatError("not_joined", f"{room.gone}{what}")


class Room:
    """A joined room. Reads are safe from any thread; callbacks run on the client's thread."""

    def __init__(
        self, host: RoomHost, name: str, series_length: int = 100, base_url: str = ""
    ) -> None:
        self._host = host
        self.name = name
        self.state = RoomState(name, series_length, base_url)
        self._streams: dict[str, Stream] = {}
        self._streams_lock = threading.Lock()
        self._message_callbacks: list[MessageCallback] = []
        self._data_callbacks: list[MessageCallback] = []
        self._presence_callbacks: list[MessageCallback] = []
        self._change_callbacks: list[MessageCallback] = []
        self._gone: str | None = None  # why this room can no longer be used (left, removed)

    def __repr__(self) -> str:
        return f"<Room {self.name!r} seq={self.seq} members={len(self.members)}>"

    @property
    def client(self) -> ChatClient:
        """The :class:`ChatClient` this room belongs to."""
        return self._host.client

    @property
    def gone(self) -> str | None:
        """Why this room can no longer be used (left, removed), or None while it can."""
        return self._gone

    @property
    def epoch(self) -> str | None:
        """The server's history epoch for this room (None before the first join)."""
        return self.state.epoch

    @property
    def seq(self) -> int:
        """The ``seq`` of the newest message held."""
        return self.state.seq

    @property
    def history(self) -> list[dict[str, Any]]:
        """The messages the first join brought."""
        return self.state.history

    @property
    def joined(self) -> bool:
        """Whether the room is joined on the current connection."""
        return self.state.joined

    @property
    def access(self) -> dict[str, Any] | None:
        """The owner and members of a private room (None for a public one)."""
        return self.state.access

    @property
    def messages(self) -> list[dict[str, Any]]:
        """History and every message since, in seq order, without duplicates."""
        return self.state.messages

    @property
    def values(self) -> dict[str, Any]:
        """The latest value seen for each topic."""
        return self.state.values

    @property
    def members(self) -> list[dict[str, Any]]:
        """The members known here (each once): all of them in a room of up to 100.

        A bigger room's ``joined`` brings the first 100 (recent speakers first) and
        arrivals follow; :meth:`load_members` fetches the rest, :attr:`member_count`
        says how many there are.
        """
        return self.state.members

    @property
    def member_count(self) -> int:
        """How many people are in the room now (each once, however many connections)."""
        return self.state.member_count

    def load_members(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Fetch the whole member list, page by page; return it (also in :attr:`members`).

        In a room where a crowd came or went at once, ``presence`` gives only the new
        count: this is how to see who is there now.
        """
        self._check_usable()
        return self._host.load_members(self, timeout)

    @property
    def typing_users(self) -> list[dict[str, Any]]:
        """The other users typing now."""
        return self.state.typing_users

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` for every new message; usable as a decorator."""
        self._message_callbacks.append(callback)
        return callback

    def on_data(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(event)`` for every live value; ``event`` has topic, value, user, ts."""
        self._data_callbacks.append(callback)
        return callback

    def on_presence(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback({"joined": user})`` or ``callback({"left": user})`` on arrivals."""
        self._presence_callbacks.append(callback)
        return callback

    @property
    def unread(self) -> int:
        """Messages held here from others, not deleted, past your read marker.

        The marker is yours across tabs, devices and kernels (see :meth:`mark_read`).
        """
        return self.state.unread(self._host.client.user.get("username"))

    def mark_read(self, seq: int | None = None, timeout: float | None = None) -> int:
        """Mark the room read up to ``seq`` (default: the newest message held).

        The marker only moves forward; every connection of yours (tabs, kernels)
        follows, and it clears your unread mentions in this room. Returns the marker.
        """
        self._check_usable()
        target = self.seq if seq is None else _seq(seq)
        return self._host.mark_read(self, target, timeout)

    def on_change(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` with a held message after it changed.

        An edit, a deletion, a reaction added or taken back, or a new reply to it (its
        ``replies`` count); ``message`` is the whole message as it is now.
        """
        self._change_callbacks.append(callback)
        return callback

    def send(
        self, body: str, timeout: float | None = None, *, reply_to: int | None = None
    ) -> dict[str, Any]:
        """Post a message and block until the server acknowledges it.

        Returns the stamped message (seq, id, user, ts, body, ...). ``reply_to`` (a
        message's ``seq``) makes it a reply. If the connection is down the message
        waits and is sent when it returns; on timeout it stays queued.
        """
        self._check_body(body)
        parent = None if reply_to is None else _seq(reply_to)
        frame = p.Send(room=self.name, id=uuid.uuid4().hex, body=body, reply_to=parent)
        return self._host.request(self, frame, timeout)

    def edit(self, seq: int, body: str, timeout: float | None = None) -> dict[str, Any]:
        """Replace the body of your message ``seq``; returns the message as edited.

        Only its author may (else ``ChatError('forbidden')``); a deleted message
        cannot be edited (``message_deleted``).
        """
        self._check_body(body)
        frame = p.Edit(room=self.name, id=uuid.uuid4().hex, seq=_seq(seq), body=body)
        return self._host.request(self, frame, timeout)

    def delete(self, seq: int, timeout: float | None = None) -> dict[str, Any]:
        """Delete message ``seq`` (yours; any, as a moderator); its body is erased everywhere."""
        self._check_usable()
        frame = p.Delete(room=self.name, id=uuid.uuid4().hex, seq=_seq(seq))
        return self._host.request(self, frame, timeout)

    def react(self, seq: int, emoji: str, timeout: float | None = None) -> dict[str, Any]:
        """Add your reaction ``emoji`` to message ``seq``; returns the message."""
        self._check_usable()
        frame = p.React(room=self.name, id=uuid.uuid4().hex, seq=_seq(seq), emoji=emoji)
        return self._host.request(self, frame, timeout)

    def unreact(self, seq: int, emoji: str, timeout: float | None = None) -> dict[str, Any]:
        """Take back your reaction ``emoji`` from message ``seq``; returns the message."""
        self._check_usable()
        frame = p.Unreact(room=self.name, id=uuid.uuid4().hex, seq=_seq(seq), emoji=emoji)
        return self._host.request(self, frame, timeout)

    def share(
        self,
        obj: Any,
        caption: str | None = None,
        mime: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Post a message that carries ``obj`` as an attachment; returns the message.

        By the object's type:

        - a matplotlib ``Figure`` (``plt.gcf()``): a PNG at the figure's dpi (an SVG with
          ``mime="image/svg+xml"``);
        - a PIL image: a PNG;
        - a numpy array, a pandas Series or DataFrame: the exact value (dtype, shape,
          index), with a preview (first rows; or min/mean/max and a small sample);
        - anything that displays in Jupyter (Plotly, Altair, ``_repr_mimebundle_``,
          ``_repr_png_``, ``_repr_html_``, ...): its MIME bundle;
        - bytes with ``mime=`` (``share(data, mime="image/png")``);
        - a ``pathlib.Path``: the file, named as it is, its MIME type guessed from its
          name unless ``mime=`` says.

        ``caption`` is the message's body. The attachment carries where it came from
        (``provenance``: the notebook, the cell's number and code, the library's
        version; see :mod:`jupyter_chat_ext.client.provenance`). Over the server's
        ``max_attachment_size``: ``ChatError('attachment_too_large')``, before any byte
        is sent. The bytes go over HTTP; the message then waits for the connection
        like :meth:`send`.
        """
        self._check_usable()
        if caption is not None:
            self._check_body(caption, allow_empty=True)
        prepared = share.prepare(obj, mime, self._host.attachment_limit)
        limits = self._host.limits
        most = limits.max_preview_size if limits else share.MAX_PREVIEW_SIZE
        fields = share.describe(prepared, provenance.stamp(prepared.libraries), most)
        upload = self._host.upload(self, prepared, timeout)
        frame = p.Send(
            room=self.name,
            id=uuid.uuid4().hex,
            body=caption or "",
            attachment=p.AttachmentRequest(upload=upload, **fields),
        )
        return self._host.request(self, frame, timeout)

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """The messages held that carry an attachment (see :meth:`take`), in seq order."""
        return self.state.attachments

    def take(self, seq: int, timeout: float | None = None) -> Any:
        """The object that message ``seq`` shares, fetched from the server.

        - a value (``kind`` ``table`` or ``array``): an equal numpy array, pandas Series
          or DataFrame (dtype, shape, index and values);
        - a PNG, JPEG, GIF or WebP (a figure, an image): an ``IPython.display.Image``,
          which shows in the notebook; its ``.data`` is the bytes (without IPython:
          the bytes);
        - a MIME bundle (Plotly, Altair, ...): a :class:`~.share.Bundle`, which
          displays what cannot run script; ``.data`` is the whole bundle;
        - anything else (a file, an SVG): its bytes.

        The message's ``attachment`` says what it is (``mime``, ``kind``, ``name``,
        ``size``, ``preview``) and where it came from (``provenance``). It was shared
        by another person: nothing in it is executed or unpickled, and bytes that are
        not what the message says raise ``ChatError('invalid_attachment')``. A message
        with no attachment (or deleted) raises ``not_found``.
        """
        self._check_usable()
        message = self._held(_seq(seq), timeout)
        attachment = message["attachment"] if message is not None else None
        if attachment is None:
            state = "was deleted" if message and message["deleted"] else "carries no attachment"
            if message is None:
                state = "is not a message of the room"
            raise ChatError("not_found", f"message {seq} of room {self.name!r} {state}")
        return share.load(self._fetch(attachment, timeout), attachment)

    def _fetch(self, attachment: dict[str, Any], timeout: float | None) -> bytes:
        """An attachment's bytes from the server, checked against what its message says."""
        url = attachment.get("url")
        base = self.state.base_url
        if not isinstance(url, str) or not base or not url.startswith(base):
            raise share.invalid("its address is not on the server this client speaks to")
        limit = self._host.attachment_limit
        claimed = attachment.get("size")
        if isinstance(claimed, int) and claimed > limit:
            raise share.invalid(f"it claims {claimed} bytes, over the server's limit {limit}")
        max_size = claimed if isinstance(claimed, int) and claimed >= 0 else limit
        data = self._host.download(url, max_size, timeout)
        share.check_bytes(data, attachment)
        return data

    def _held(self, seq: int, timeout: float | None) -> dict[str, Any] | None:
        """Message ``seq``, from those held or else fetched with the messages around it."""
        held = self.state.message(seq)
        if held is not None:
            return held
        found = [m for m in self.load_around(seq, 1, timeout) if m["seq"] == seq]
        return found[0] if found else None

    def _check_body(self, body: str, allow_empty: bool = False) -> None:
        self._check_usable()
        if not isinstance(body, str) or not (allow_empty or body.strip()):
            raise ChatError("invalid_field", "a message must be a non-empty string")
        limits = self._host.limits
        limit = limits.max_message_size if limits else None
        if limit is not None and len(body.encode()) > limit:
            raise ChatError(
                "message_too_large",
                f"message is {len(body.encode())} bytes; the server's limit is {limit}. "
                "Split it or share a file instead.",
            )

    def publish(self, topic: str, value: Any) -> str:
        """Publish a live value on ``topic``; never waits for the network.

        ``value`` is JSON, a numpy array or a pandas Series/DataFrame (arrays travel
        as raw bytes and arrive with the same dtype and shape). ``room.values[topic]``
        shows it at once. Values go out in order, paced to the server's rate; a
        publisher faster than that never waits: past 1,000 queued values of a topic
        (or 16 MiB in all) the oldest are dropped, so the newest always get through.
        Values published while disconnected are sent on reconnect.
        Returns the id the value carries (see :meth:`link`).
        """
        if self._host.closed:
            raise ChatError("closed", "the client is closed; create a new ChatClient")
        self._check_usable()
        try:
            p.check_topic(topic)
        except p.ProtocolError as exc:
            raise ChatError(exc.code, exc.message) from None
        try:
            tree, buffers = values.encode(value)
        except values.UnsupportedValue as exc:
            raise ChatError("invalid_value", str(exc)) from None
        size = len(tree) + sum(b.nbytes for b in buffers or ())
        limits = self._host.limits
        limit = limits.max_value_size if limits else None
        if limit is not None and size > limit:
            raise ChatError(
                "value_too_large",
                f"value is {size} bytes; the server's limit is {limit}. "
                "Publish a smaller or downsampled value.",
            )
        value_id = uuid.uuid4().hex
        frame = p.Data(room=self.name, topic=topic, value=msgspec.Raw(tree), id=value_id)
        if buffers is None:
            data = p.encode(frame)
        else:
            frame.buffers = [b.nbytes for b in buffers]
            data = p.pack_binary(p.encode(frame), list(buffers))  # a copy: safe to mutate now
        self.state.set_value(topic, value)
        self._host.queue_value(self, topic, data, buffers is not None)
        return value_id

    def stream(self, topic: str) -> Stream:
        """The live values of ``topic``: ``latest``, ``series``, callbacks, ``async for``."""
        with self._streams_lock:
            if topic not in self._streams:
                self._streams[topic] = Stream(self, topic)
            return self._streams[topic]

    def link(self, widget: Any, trait: str = "value", topic: str | None = None) -> Link:
        """Keep ``widget.<trait>`` equal in every notebook that links the same topic.

        Both ways and without echo loops; the last writer wins. Returns a
        :class:`~jupyter_chat_ext.link.Link` whose ``unlink()`` stops it.
        """
        return Link(self, widget, trait, topic or trait)

    def load_earlier(
        self, limit: int = 100, timeout: float | None = None, *, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Fetch up to ``limit`` messages older than the oldest held; they join ``messages``.

        Returns them (oldest first); an empty list means the room's beginning.
        ``before`` (a seq) fetches those older than it instead, e.g. the end of one
        of the :attr:`holes`, to fill it from there.
        """
        if before is None:
            return self._host.load_earlier(self, limit, timeout)
        frame = p.HistoryRequest(room=self.name, id=uuid.uuid4().hex, before=before, limit=limit)
        return self._host.load_page(self, frame, timeout)

    def load_around(
        self, seq: int, limit: int = 50, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Fetch the messages around ``seq`` (to open the room at one, e.g. a search result).

        Up to ``limit // 2`` messages before ``seq``, then the message ``seq`` and those
        after it, ``limit`` in all (at most the server's ``history_page_size``). They
        join :attr:`messages` in seq order, without duplicates; the window is
        returned (oldest first), only the messages that were not held already. A
        window that does not reach the messages held leaves a hole between them
        (:attr:`holes`), which ``load_earlier(before=...)`` fills.
        """
        self._check_usable()
        frame = p.HistoryRequest(room=self.name, id=uuid.uuid4().hex, around=_seq(seq), limit=limit)
        return self._host.load_page(self, frame, timeout)

    @property
    def holes(self) -> list[tuple[int, int]]:
        """Seq ranges ``(after, before)`` between held messages whose messages are not all held.

        Empty unless :meth:`load_around` opened the room at an older message; then the
        messages with a seq strictly between ``after`` and ``before`` may be missing
        from :attr:`messages` (``load_earlier(before=before)`` fetches them).
        """
        return self.state.holes

    def search(
        self, query: str, limit: int = 50, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The messages of this room with every word of ``query``, newest first.

        See :meth:`ChatClient.search <jupyter_chat_ext.client.connection.ChatClient.search>`
        (results carry ``marks``, the spans of the matching words).
        """
        self._check_usable()
        return self.client.search(query, [self.name], limit, timeout)

    def export(
        self,
        format: str = "markdown",
        timeout: float | None = None,
        *,
        attachments_dir: str | os.PathLike[str] | None = None,
    ) -> str:
        """The whole conversation as ``markdown``, ``html`` or ``json`` text.

        Loads every earlier message first (and fills any :attr:`holes`), so it is the
        whole room, each message with every change applied: edits, deletions (as
        "(deleted)"), reactions, replies, mentions. Bodies stay as their source (math
        and code are not rendered); HTML is escaped. ``json`` imports back with
        :meth:`ChatClient.import_room`.

        Attachments (those of messages not deleted) are fetched from the server and
        included: ``html`` embeds images and offers other files as downloads, ``json``
        holds their bytes (``attachment.data``, base64). ``markdown`` links them: with
        ``attachments_dir`` it writes each file there (named ``<sha256 prefix>-<name>``,
        each content once) and links ``<attachments_dir's name>/<file>``, for a
        Markdown file written in its parent directory; without it, it links the
        server's copy (nothing is fetched). An attachment that cannot be fetched does
        not fail the export: it is shown as unavailable, with the reason.
        """
        self._check_usable()
        fmt = exporting.format_of(format)  # an unknown format fails before any loading
        if attachments_dir is not None and fmt != "markdown":
            raise ValueError("attachments_dir is for a Markdown export (html and json hold them)")
        limits = self._host.limits
        page = limits.history_page_size if limits else 100
        while self.load_earlier(page, timeout):
            pass
        while holes := self.holes:
            self.load_earlier(page, timeout, before=holes[-1][1])
        messages = self.messages
        files: dict[int, exporting.Included] = {}
        if fmt != "markdown" or attachments_dir is not None:
            for message in messages:
                attachment = exporting.attached(message)
                if attachment is not None:
                    files[message["seq"]] = self._included(attachment, timeout)
        if attachments_dir is not None:
            files = exporting.write_files(Path(attachments_dir), messages, files)
        return exporting.render(fmt, self.name, messages, self.access, files=files)

    def _included(self, attachment: dict[str, Any], timeout: float | None) -> exporting.Included:
        """An attachment's bytes for an export, or why they could not be fetched."""
        try:
            return exporting.Included(data=self._fetch(attachment, timeout))
        except ChatError as exc:
            return exporting.Included(unavailable=f"{exc.code}: {exc}")

    def invite(self, *usernames: str, timeout: float | None = None) -> dict[str, Any]:
        """Let ``usernames`` join this private room (its owner only); returns the access."""
        frame = p.AccessChange(room=self.name, id=uuid.uuid4().hex, add=list(usernames))
        return self._host.change_access(frame, timeout)

    def remove(self, *usernames: str, timeout: float | None = None) -> dict[str, Any]:
        """Take ``usernames`` out of this private room (its owner only); they are evicted."""
        frame = p.AccessChange(room=self.name, id=uuid.uuid4().hex, remove=list(usernames))
        return self._host.change_access(frame, timeout)

    def typing(self, active: bool = True) -> None:
        """Show (or stop showing) that you are typing; it expires by itself."""
        self._host.typing(self, active)

    def leave(self) -> None:
        """Leave the room; its callbacks are not called any more.

        Sends still waiting for an acknowledgement fail with ``not_joined`` and are
        never sent; values not yet sent are dropped. Join again for a new :class:`Room`.
        """
        self._gone = f"you left room {self.name!r}"
        self._host.leave(self)

    def _check_usable(self) -> None:
        if self._gone is not None:
            raise not_joined(self, f"; join it again with client.join({self.name!r})")

    # ---- the client's side (its loop thread) ------------------------------------------

    def _receive(
        self,
        frame: p.Joined | p.Message | p.Change | p.DataEvent | p.Presence | p.TypingEvent,
        payload: memoryview | None = None,
    ) -> list[dict[str, Any]]:
        """Apply a frame to ``state`` and call the callbacks; returns the new messages.

        ``payload`` is a live value's raw buffers.
        """
        match frame:
            case p.Joined():
                fresh = self.state.apply_joined(frame)
                for each in fresh:
                    fire(self._message_callbacks, each, self.name)
                self._announce_changes()
                return fresh
            case p.Message():
                message = self.state.apply_message(frame)
                if message is None:
                    return []
                fire(self._message_callbacks, message, self.name)
                self._announce_changes()
                return [message]
            case p.Change():
                self.state.apply_change(frame)
                self._announce_changes()
            case p.DataEvent():
                event = self.state.apply_data(frame, payload)
                with self._streams_lock:
                    stream = self._streams.get(frame.topic)
                fire(self._data_callbacks, event, self.name)
                if stream is not None:
                    stream._deliver(event)
            case p.Presence():
                for event in self.state.apply_presence(frame):
                    fire(self._presence_callbacks, event, self.name)
            case p.TypingEvent():
                self.state.apply_typing(frame)
        return []

    def _announce_changes(self) -> None:
        for message in self.state.take_changes():
            fire(self._change_callbacks, message, self.name)

    def _end(self, reason: str) -> None:
        """The room can no longer be used, for ``reason`` (e.g. removed from it)."""
        self._gone = reason
