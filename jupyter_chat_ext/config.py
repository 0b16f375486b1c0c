"""The chat core's settings as config traits, shared by both hosts.

``ChatExtensionApp`` (the server extension) and ``HubChatService`` (the JupyterHub
service) both mix in :class:`CoreSettings`, so every limit is set the same way:
``c.ChatExtensionApp.max_message_size = 4096`` or
``jupyter-chat-ext hub-service --HubChatService.max_message_size=4096``.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, HasTraits, Int, List, Type, Unicode

from .attachments import SQLiteAttachments
from .history import HistoryStore, SQLiteHistory
from .protocol import ROOM_NAME_MAX

if TYPE_CHECKING:
    from .rooms import RoomRegistry

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``size`` bytes; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no libc.so.6, or no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, size))


class CoreSettings(HasTraits):
    """Config traits named after :class:`~jupyter_chat_ext.rooms.ChatSettings` fields."""

    history_class = Type(
        default_value=SQLiteHistory,
        klass=HistoryStore,
        help="Where history is kept: a HistoryStore subclass, constructed with db_path "
        "(not used with redis_url).",
    ).tag(config=True)
    history_fsync = Bool(
        False,
        help="Sync the SQLite history to disk before a message is acknowledged "
        "(synchronous=FULL): a power loss or OS crash then loses no acknowledged "
        "message, and each batch of messages waits for one fsync. Off "
        "(synchronous=NORMAL), a crash of the server process still loses nothing "
        "acknowledged, but a power loss may lose the last second's messages.",
    ).tag(config=True)
    redis_url = Unicode(
        "",
        help="Share rooms with every other process on this Redis "
        "(redis://[:password@]host:port/db): history in Redis Streams, fan-out by "
        "pub/sub. For replicas of the hub service; never give it to users' servers.",
    ).tag(config=True)
    redis_node_timeout = Float(
        10.0,
        min=1.0,
        help="Seconds after which a replica that stopped beating in Redis is taken for "
        "dead and its users leave every room.",
    ).tag(config=True)
    history_on_join = Int(
        100, min=0, help="How many recent messages a client receives when it joins a room."
    ).tag(config=True)
    history_page_size = Int(
        100, min=1, help="The most messages one 'history' request (load earlier) returns."
    ).tag(config=True)
    max_replay = Int(
        10_000,
        min=0,
        help="The largest gap a reconnecting client is sent whole; past it the client "
        "gets recent history with recovered=false.",
    ).tag(config=True)
    max_message_size = Int(
        16_384, min=1, help="The largest chat message body, in UTF-8 bytes."
    ).tag(config=True)
    max_room_members = Int(
        1000,
        min=2,
        help="The most people a private room's member list may hold (the owner included).",
    ).tag(config=True)
    max_reactions = Int(
        50, min=1, help="The most different reactions (emoji) one message may have."
    ).tag(config=True)
    moderators = List(
        Unicode(),
        help="Usernames that may delete anyone's chat message (on the hub service, Hub "
        "admins may too).",
    ).tag(config=True)
    max_value_size = Int(1_048_576, min=1, help="The largest live value, in bytes of JSON.").tag(
        config=True
    )
    message_rate_limit = Float(
        100.0, min=0.0, help="Chat messages per second one connection may send, sustained."
    ).tag(config=True)
    message_burst = Int(
        1_000, min=1, help="Chat messages one connection may send in a burst above the rate."
    ).tag(config=True)
    data_rate_limit = Float(
        2_000.0, min=0.0, help="Live values per second one connection may publish, sustained."
    ).tag(config=True)
    data_burst = Int(
        2_000, min=1, help="Live values one connection may publish in a burst above the rate."
    ).tag(config=True)
    typing_rate_limit = Float(
        5.0,
        min=0.0,
        help="Typing events per second one user may send, sustained (a chat window sends "
        "one every 2 s while you type); past it they are refused with rate_limited.",
    ).tag(config=True)
    typing_burst = Int(
        20, min=1, help="Typing events one user may send in a burst above the rate."
    ).tag(config=True)
    join_rate_limit = Float(
        20.0,
        min=0.0,
        help="Room joins per second one user may make, sustained (reconnects included).",
    ).tag(config=True)
    join_burst = Int(
        2_000,
        min=1,
        help="Room joins one user may make in a burst above the rate: enough for every "
        "connection of theirs to rejoin every room at once after a restart.",
    ).tag(config=True)
    max_topics_per_room = Int(
        256,
        min=1,
        help="Live-value topics a room may have; a value on a new topic past it is refused "
        "with too_many_topics.",
    ).tag(config=True)
    max_join_bytes = Int(
        1_048_576,
        min=65_536,
        help="The most bytes of messages and live values a `joined` frame carries. History "
        "past it is left to 'load earlier' (a reconnect's gap past it is not replayed: "
        "recovered=false), and values past it follow as separate frames under the "
        "send-queue bound, so a join always fits what a client can read.",
    ).tag(config=True)
    typing_timeout = Float(
        5.0, min=0.1, help="Seconds after which a 'typing' indicator that was not renewed ends."
    ).tag(config=True)
    max_send_queue = Int(
        4 * 1024 * 1024,
        min=65_536,
        help="Bytes a connection may leave unread before it is closed as too slow "
        "(close code 4008). Past 64 KiB (or a quarter of it), typing and live values "
        "are conflated.",
    ).tag(config=True)
    max_connections_per_user = Int(
        20, min=1, help="Chat connections one user may have open at once (close code 4029)."
    ).tag(config=True)
    max_rooms_per_connection = Int(100, min=1, help="Rooms one connection may be in at once.").tag(
        config=True
    )
    max_room_name = Int(ROOM_NAME_MAX, min=1, help="The longest room name, in characters.").tag(
        config=True
    )
    max_attachment_size = Int(
        10 * 1024 * 1024,
        min=1,
        help="The largest attachment (a shared figure, table, array or file), in bytes; "
        "a larger upload is refused (HTTP 413, attachment_too_large) before it is read.",
    ).tag(config=True)
    attachment_upload_ttl = Float(
        3600.0,
        min=1.0,
        help="Seconds an uploaded attachment waits to be sent in a message before it is dropped.",
    ).tag(config=True)
    max_pending_uploads = Int(
        20,
        min=1,
        help="Uploads one user may have waiting (not yet sent in a message, not expired).",
    ).tag(config=True)
    max_preview_size = Int(
        65_536,
        min=256,
        help="Bytes of JSON an attachment's preview and provenance may take together "
        "(they travel in the message, to everyone in the room).",
    ).tag(config=True)
    series_length = Int(
        100,
        min=0,
        help="Recent values kept per topic (small JSON values only) and sent to late joiners.",
    ).tag(config=True)
    handshake_timeout = Float(
        60.0,
        min=0.0,
        help="Seconds a new connection (or an idle kept-alive one) has to send its whole "
        "request line and headers, the WebSocket upgrade request included; a client that "
        "sends nothing, or only part of a request, is disconnected then instead of holding "
        "a connection (tornado's own limit is 3600 s). On the hub service a request body "
        "gets as long again. On the server extension it applies to the whole Jupyter "
        "server (it only ever lowers the server's limit). It is also how long an idle "
        "kept-alive connection (a proxy's, a browser's) stays open: the default is "
        "nginx's client_header_timeout, long enough that such closes are rare. 0 leaves "
        "the server's limit.",
    ).tag(config=True)
    room_idle_timeout = Float(
        60.0, min=0.0, help="Seconds an empty room stays in memory before it is unloaded."
    ).tag(config=True)

    heartbeat_interval = Float(
        10.0,
        min=0.05,
        help="Seconds between pings to each connection (one timer pings them all).",
    ).tag(config=True)
    heartbeat_timeout = Float(
        30.0,
        min=0.1,
        help="Seconds a ping may go unanswered: a connection silent for "
        "heartbeat_interval + heartbeat_timeout is closed at the next ping and its user "
        "leaves the rooms' presence.",
    ).tag(config=True)
    tune_gc = Bool(
        True,
        help="Tune Python's garbage collector for a server holding many connections: "
        "at start, collect once and exempt every object alive then from later "
        "collections (gc.freeze()), and collect the young generation every 10,000 "
        "allocations instead of 700 (gc.set_threshold(10000, 50, 100)). Full "
        "collections pause the event loop for ~100 ms with 1,000 connections; with this "
        "they are rare (benchmarks/fanout.py: p99 from ~140 ms to ~40 ms). Applies to "
        "the whole server process.",
    ).tag(config=True)

    tune_malloc = Bool(
        True,
        help="On glibc (Linux), have malloc give every block over 128 KiB its own "
        "mapping, returned to the system when freed (mallopt M_MMAP_THRESHOLD; glibc "
        "otherwise raises that threshold each time such a block is freed). Big "
        "short-lived frames (a join's history, an attachment) "
        "then leave no holes in the heap: with 10,000 idle connections, 32 KB of RSS "
        "per connection instead of 44 KB (benchmarks/idle_memory.py). Applies to the "
        "whole server process; does nothing with another C library.",
    ).tag(config=True)

    def apply_process_tuning(self) -> None:
        """Apply ``tune_gc`` and ``tune_malloc`` (called by each host once it has started)."""
        if self.tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 50, 100)
        if self.tune_malloc:
            pin_mmap_threshold()

    def chat_settings(self) -> ChatSettings:
        """The core's settings, from the traits of the same names."""
        return ChatSettings(**{f.name: getattr(self, f.name) for f in fields(ChatSettings)})

    def max_frame_size(self) -> int:
        """The largest WebSocket frame a host accepts: the largest message or value.

        JSON escaping can make a frame up to 6x its payload (a backslash-u escape per
        byte), plus the envelope.
        """
        return 6 * max(self.max_message_size, self.max_value_size) + 65_536

    def make_registry(self, db_path: str | Path) -> RoomRegistry:
        """The room registry: on Redis if ``redis_url`` is set, else on ``history_class``."""
        from .rooms import RoomRegistry

        if self.redis_url:
            from .redis import RedisAttachments, RedisBackplane, RedisHistory

            backplane = RedisBackplane(self.redis_url, self.redis_node_timeout)
            return RoomRegistry(
                RedisHistory(backplane),
                self.chat_settings(),
                backplane,
                RedisAttachments(backplane),
            )
        path = Path(db_path)
        blobs = SQLiteAttachments(path.with_name(f"{path.stem}-attachments{path.suffix}"))
        history = self.history_class(db_path)
        if isinstance(history, SQLiteHistory):
            history.fsync = self.history_fsync
        return RoomRegistry(history, self.chat_settings(), attachments=blobs)


def _default(name: str) -> Any:
    """The default of the trait ``name``: written once, in :class:`CoreSettings`."""
    return CoreSettings.class_traits()[name].default_value


@dataclass(frozen=True)
class ChatSettings:
    """The limits and timings the core enforces, as the hosts configured them.

    Each field is the config trait of the same name (see :class:`CoreSettings` and
    docs/configuration.md); its default is that trait's.
    """

    history_on_join: int = _default("history_on_join")
    history_page_size: int = _default("history_page_size")
    max_replay: int = _default("max_replay")
    max_message_size: int = _default("max_message_size")
    max_room_members: int = _default("max_room_members")
    max_reactions: int = _default("max_reactions")
    moderators: list[str] = field(default_factory=list)
    max_value_size: int = _default("max_value_size")
    message_rate_limit: float = _default("message_rate_limit")
    message_burst: int = _default("message_burst")
    data_rate_limit: float = _default("data_rate_limit")
    data_burst: int = _default("data_burst")
    typing_rate_limit: float = _default("typing_rate_limit")
    typing_burst: int = _default("typing_burst")
    join_rate_limit: float = _default("join_rate_limit")
    join_burst: int = _default("join_burst")
    max_topics_per_room: int = _default("max_topics_per_room")
    max_join_bytes: int = _default("max_join_bytes")
    typing_timeout: float = _default("typing_timeout")
    room_idle_timeout: float = _default("room_idle_timeout")
    max_send_queue: int = _default("max_send_queue")
    max_connections_per_user: int = _default("max_connections_per_user")
    max_rooms_per_connection: int = _default("max_rooms_per_connection")
    max_room_name: int = _default("max_room_name")
    series_length: int = _default("series_length")
    max_attachment_size: int = _default("max_attachment_size")
    attachment_upload_ttl: float = _default("attachment_upload_ttl")
    max_pending_uploads: int = _default("max_pending_uploads")
    max_preview_size: int = _default("max_preview_size")
