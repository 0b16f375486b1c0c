"""Wire protocol v1: typed frames, a strict decoder and a fast encoder.

Every frame is a JSON object with an ``op`` field. Client frames are decoded into
the tagged-union :data:`ClientFrame`; anything else raises :class:`ProtocolError`
with a stable ``code`` (see ``docs/protocol.md``). Server frames are
:class:`msgspec.Struct` instances encoded with :func:`encode`, so a broadcast is
serialized once and the same bytes go to every receiver.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 2  # 2: presence batched (lists, count), member pages
WS_PATH: Final = "chat-ext/ws"  # under a server's base URL (or a Hub service's prefix)
DELEGATION_PATH: Final = "chat-ext/delegation"  # POST: a delegation for the caller
ATTACHMENTS_PATH: Final = "chat-ext/attachments"  # POST: upload
ATTACHMENT_PATH: Final = ATTACHMENTS_PATH + "/([0-9a-f]{64})"  # GET: fetch (a route pattern)
DELEGATION_HEADER: Final = "X-Chat-Delegation"  # presents a delegation at the handshake
ROOM_NAME_MAX: Final = 200
TOPIC_MAX: Final = 200
ID_MAX: Final = 128
MEMBERS_PAGE: Final = 100  # members in `joined` and, by default, in a `members` page
MEMBERS_PAGE_MAX: Final = 500
USERNAME_MAX: Final = 256  # the longest `after` cursor a `members` request may give
EMOJI_MAX: Final = 32  # characters of one reaction (an emoji, or a short :name:)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

ErrorCode = Literal[
    "bad_json",
    "bad_frame",
    "unknown_op",
    "invalid_field",
    "invalid_room",
    "invalid_topic",
    "not_joined",
    "message_too_large",
    "value_too_large",
    "rate_limited",
    "too_many_rooms",
    "too_many_connections",
    "too_many_topics",
    "forbidden",
    "room_exists",
    "not_found",
    "message_deleted",
    "too_many_reactions",
    "too_many_members",
    "room_not_empty",
    "not_supported",
    "unavailable",
    "internal",
]


class ProtocolError(Exception):
    """A frame was refused; ``code`` is stable, ``message`` says what to do."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        id: str | None = None,
        room: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.id = id
        self.room = room
        self.retry_after = retry_after

    def to_frame(self) -> Error:
        """Return the ``error`` frame that reports this error to the client."""
        return Error(
            code=self.code,
            message=self.message,
            id=self.id,
            room=self.room,
            retry_after=self.retry_after,
        )


# --------------------------------------------------------------------------- shared parts


# A count or position sent by a client: never negative, and within what both JSON
# numbers (2**53) and SQLite integers hold exactly.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**53)]


class Since(msgspec.Struct, forbid_unknown_fields=False):
    """The last point of a room's log a client has seen."""

    epoch: str
    seq: Count


# The longest value of each display field of a user, in characters (see User.bounded).
USER_FIELD_MAX: Final = {
    "name": 200,
    "display_name": 100,
    "initials": 4,
    "color": 64,
    "avatar_url": 2048,
}


class User(msgspec.Struct, omit_defaults=True):
    """An authenticated identity, always stamped by the server."""

    username: str
    name: str
    display_name: str
    initials: str | None = None
    color: str | None = None
    avatar_url: str | None = None
    kernel: bool = False  # sent by this person's kernel, on their behalf

    def bounded(self) -> User:
        """Return the identity as stamped on frames: display fields cut to their bounds.

        A display name is the user's to choose (jupyter_server's identity API): cut
        it, with control characters removed, so that it cannot inflate every frame.
        """
        changes: dict[str, str | None] = {}
        for field, limit in USER_FIELD_MAX.items():
            value = getattr(self, field)
            if value is None:
                continue
            clean = _CONTROL.sub("", value)
            if len(clean) > limit:
                clean = clean[: limit - 1] + "…"
            if clean != value:
                changes[field] = clean or None
        if "display_name" in changes and not changes["display_name"]:
            changes["display_name"] = self.username[: USER_FIELD_MAX["display_name"]]
        if "name" in changes and not changes["name"]:
            changes["name"] = self.username[: USER_FIELD_MAX["name"]]
        return msgspec.structs.replace(self, **changes) if changes else self


class Limits(msgspec.Struct):
    """The limits a server enforces, announced in ``hello``."""

    max_message_size: int
    max_value_size: int
    message_rate: float
    message_burst: int
    data_rate: float
    data_burst: int
    history_page_size: int
    room_name_max: int = ROOM_NAME_MAX
    max_rooms_per_connection: int = 100
    typing_timeout: float = 5.0
    max_attachment_size: int = 10 * 1024 * 1024
    max_preview_size: int = 65_536


# --------------------------------------------------------------------------- client frames


class Join(msgspec.Struct, tag_field="op", tag="join"):
    """Join a room (creating it), optionally resuming after ``since``.

    ``private`` creates the room as private, owned by the joining user, open to
    ``members`` (usernames); it is ignored for a room that already exists.
    """

    room: str
    id: str | None = None
    since: Since | None = None
    private: bool = False
    members: list[str] | None = None


class AccessChange(msgspec.Struct, tag_field="op", tag="access"):
    """The owner of a private room adds or removes members."""

    room: str
    id: str
    add: list[str] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)


class Leave(msgspec.Struct, tag_field="op", tag="leave"):
    """Leave a room."""

    room: str
    id: str | None = None


ATTACHMENT_KINDS: Final = ("figure", "image", "table", "array", "bundle", "file")
AttachmentKind = Literal["figure", "image", "table", "array", "bundle", "file"]
# The raster images a reader may display (in a page, an export): their signatures.
IMAGE_SIGNATURES: Final = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8 (see is_image)
}


def is_image(data: bytes, mime: str) -> bool:
    """Whether ``data`` starts with the signature of the raster image type ``mime``."""
    if not data.startswith(IMAGE_SIGNATURES.get(mime, ())):
        return False
    return mime != "image/webp" or data[8:12] == b"WEBP"


class AttachmentRequest(msgspec.Struct, forbid_unknown_fields=False):
    """What a ``send`` says of the attachment it carries: an upload of yours, and how to show it.

    ``preview`` and ``provenance`` are JSON objects that every reader treats as
    untrusted; together at most ``max_preview_size`` bytes.
    """

    upload: str
    kind: AttachmentKind = "file"
    preview: dict[str, Any] = msgspec.field(default_factory=dict)
    provenance: dict[str, Any] = msgspec.field(default_factory=dict)


class Send(msgspec.Struct, tag_field="op", tag="send"):
    """Post a chat message; ``id`` is chosen by the client and de-duplicates retries.

    ``reply_to`` makes it a reply to the message with that ``seq`` in the same room;
    ``attachment`` carries an upload (the body is then its caption, and may be empty).
    """

    room: str
    id: str
    body: str
    reply_to: Seq | None = None
    attachment: AttachmentRequest | None = None


class Edit(msgspec.Struct, tag_field="op", tag="edit"):
    """Replace the body of your message ``seq``."""

    room: str
    id: str
    seq: Seq
    body: str


class Delete(msgspec.Struct, tag_field="op", tag="delete"):
    """Delete message ``seq`` (yours, or any as a moderator); its body is erased."""

    room: str
    id: str
    seq: Seq


class React(msgspec.Struct, tag_field="op", tag="react"):
    """Add your reaction ``emoji`` to message ``seq`` (a second time changes nothing)."""

    room: str
    id: str
    seq: Seq
    emoji: str


class Unreact(msgspec.Struct, tag_field="op", tag="unreact"):
    """Take back your reaction ``emoji`` from message ``seq``."""

    room: str
    id: str
    seq: Seq
    emoji: str


class Typing(msgspec.Struct, tag_field="op", tag="typing"):
    """Say that the user started or stopped typing."""

    room: str
    active: bool


class Data(msgspec.Struct, tag_field="op", tag="data"):
    """Publish a live value on a topic.

    In a text frame ``value`` is any JSON. In a binary frame (see :func:`unpack_binary`)
    ``buffers`` lists the byte sizes of the raw buffers that follow the header, which
    ``value`` refers to as ``{"$ndarray": {..., "buffer": i}}`` (see ``values.py``).
    ``id`` is echoed in the broadcast, so a publisher can recognise its own values.
    """

    room: str
    topic: str
    value: msgspec.Raw
    id: str | None = None
    buffers: list[Count] | None = None


class HistoryRequest(msgspec.Struct, tag_field="op", tag="history"):
    """Ask for up to ``limit`` messages with seq lower than ``before``, or ``around`` one.

    Exactly one of ``before`` and ``around`` is given. ``around``: up to ``limit // 2``
    messages before that seq, then the message at that seq and those after it, up to
    ``limit`` in all (to open a room at a message, e.g. a search result).
    """

    room: str
    id: str
    before: Count | None = None
    limit: Count | None = None
    around: Seq | None = None


class MembersRequest(msgspec.Struct, tag_field="op", tag="members"):
    """Ask for up to ``limit`` of a room's members in username order after ``after``."""

    room: str
    id: str
    after: Annotated[str, msgspec.Meta(max_length=USERNAME_MAX)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MEMBERS_PAGE_MAX)] = MEMBERS_PAGE


class Search(msgspec.Struct, tag_field="op", tag="search"):
    """Find the messages with every word of ``query`` in the rooms you may read.

    ``rooms``: where to look (each must be one you may read); None: every room with
    history that you may read. Newest first, at most ``limit`` of them.
    """

    id: str
    query: str
    rooms: list[str] | None = None
    limit: Count | None = None


class ImportedMessage(msgspec.Struct, forbid_unknown_fields=False):
    """A message of an exported room, as an import gives it back (see :class:`Import`).

    Its fields are an exported message's; ``replies`` and ``rev`` (the server counts
    them again) and any others are ignored.
    """

    seq: Seq
    id: str
    user: User
    ts: float
    body: str
    reply_to: Seq | None = None
    edited: float | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = msgspec.field(default_factory=dict)
    mentions: list[str] = msgspec.field(default_factory=list)
    attachment: AttachmentRequest | None = None  # an upload of the importer's for the room


class PrivateAccess(msgspec.Struct, forbid_unknown_fields=False):
    """Who may use a private room: its owner and members (in an import)."""

    owner: str
    members: list[str]


class Import(msgspec.Struct, tag_field="op", tag="import"):
    """Restore exported messages into a room with no history (moderators only).

    A large room comes in parts: the first with ``after`` 0 (the room must have no
    history), each next one with ``after`` the last seq of the one before. The
    messages are numbered ``after + 1``, ``after + 2``, ... in order. ``access``
    (first part only) makes the new room private to those members, like an exported
    private room.
    """

    room: str
    id: str
    messages: list[ImportedMessage]
    after: Count = 0
    access: PrivateAccess | None = None


class MarkRead(msgspec.Struct, tag_field="op", tag="read"):
    """You have read room ``room`` up to ``seq`` (a marker only ever moves forward)."""

    room: str
    seq: Count
    id: str | None = None


ChangeRequest = Edit | Delete | React | Unreact
ClientFrame = (
    Join
    | Leave
    | Send
    | Typing
    | Data
    | HistoryRequest
    | AccessChange
    | Edit
    | Delete
    | React
    | Unreact
    | MarkRead
    | Search
    | Import
    | MembersRequest
)
CLIENT_OPS: Final = frozenset(
    {"join", "leave", "send", "typing", "data", "history", "access"}
    | {"edit", "delete", "react", "unreact", "read"}
    | {"search", "import", "members"}
)

# --------------------------------------------------------------------------- server frames


class Hello(msgspec.Struct, tag_field="op", tag="hello", omit_defaults=True):
    """First frame on every connection: who you are and the server's limits.

    ``moderator``: you may delete anyone's message (a client shows the action).
    """

    protocol: int
    user: User
    limits: Limits
    moderator: bool = False


class Attachment(msgspec.Struct, omit_defaults=True):
    """The attachment a message carries: its description; the bytes are fetched at ``url``.

    ``url`` is relative to the base URL a client connected to (see docs/protocol.md,
    "Attachments"); ``sha256`` names the content (stored once however often shared).
    """

    name: str
    mime: str
    size: int
    sha256: str
    url: str
    kind: AttachmentKind = "file"
    preview: dict[str, Any] = msgspec.field(default_factory=dict)
    provenance: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, tag_field="op", tag="message", omit_defaults=True):
    """A durable chat message, with every later change to it applied.

    ``seq`` is its place in the room's log (gap-free over messages and changes).
    ``rev`` is the ``seq`` of the last log entry that changed it (0: none): of two
    copies of a message, the one with the higher ``rev`` is current. A reply's
    ``parent_replies`` is its parent's reply count once it was added (so a client
    holding the parent can update it).
    """

    room: str
    seq: int
    id: str
    user: User
    ts: float
    body: str
    reply_to: int | None = None
    replies: int = 0
    edited: float | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = msgspec.field(default_factory=dict)
    mentions: list[str] = msgspec.field(default_factory=list)
    rev: int = 0
    parent_replies: int | None = None
    attachment: Attachment | None = None


ChangeKind = Literal["edit", "delete", "react", "unreact"]


class Change(msgspec.Struct, tag_field="op", tag="change", omit_defaults=True):
    """A change to message ``target``: an entry of the room's log with its own ``seq``.

    ``message`` is the target with the change applied (when replayed: as it is now,
    so a deleted body never comes back); a client replaces its copy of the target
    with it if its ``rev`` is not older than the copy's. ``user`` made the change;
    ``id`` is their request's, echoed (their copy is the acknowledgement).
    """

    room: str
    seq: int
    id: str
    user: User
    ts: float
    kind: ChangeKind
    target: int
    message: Message
    emoji: str | None = None


class DataEvent(msgspec.Struct, tag_field="op", tag="data", omit_defaults=True):
    """A live value with its server-stamped sender and time.

    ``buffers`` is set when the event travels as a binary frame; ``series`` (recent
    ``[ts, value]`` pairs of small JSON values) only in ``joined.values``.
    """

    room: str
    topic: str
    value: msgspec.Raw
    user: User
    ts: float
    id: str | None = None
    buffers: list[Count] | None = None
    series: list[tuple[float, msgspec.Raw]] | None = None


class Access(msgspec.Struct, tag_field="op", tag="access", omit_defaults=True):
    """Who may use a private room: its owner and members (sent to its members)."""

    room: str
    members: list[str]
    owner: str | None = None  # None for a direct-message room
    id: str | None = None


class Joined(msgspec.Struct, tag_field="op", tag="joined", omit_defaults=True):
    """Answer to ``join``: the room's log position, members, history and values."""

    room: str
    epoch: str
    seq: int
    members: list[User]  # the first page: recent speakers first (see `members` for more)
    history: list[Message]
    values: dict[str, DataEvent]
    recovered: bool
    changes: list[Change] = msgspec.field(default_factory=list)  # in a recovered gap
    read: int = 0  # the joining user's read marker in this room
    id: str | None = None
    following: int = 0  # binary `data` frames (arrays, tables) sent right after this one
    access: Access | None = None  # set for private and direct rooms
    member_count: int = 0  # members in the room, each once (`members` may be fewer)


class ReadMarker(msgspec.Struct, tag_field="op", tag="read", omit_defaults=True):
    """Your read marker in ``room`` moved to ``seq`` (sent to all your connections)."""

    room: str
    seq: int
    id: str | None = None


class Mention(msgspec.Struct, tag_field="op", tag="mention"):
    """A message that mentions you (sent to all your connections, joined or not)."""

    room: str
    message: Message


class Mentions(msgspec.Struct, tag_field="op", tag="mentions"):
    """Your unread mentions across rooms, newest first (sent after ``hello``)."""

    mentions: list[Message]


class Left(msgspec.Struct, tag_field="op", tag="left", omit_defaults=True):
    """Answer to ``leave``."""

    room: str
    id: str | None = None


class TypingEvent(msgspec.Struct, tag_field="op", tag="typing"):
    """Someone in the room started or stopped typing."""

    room: str
    user: User
    active: bool


class Presence(msgspec.Struct, tag_field="op", tag="presence", omit_defaults=True):
    """Changes of a room's member list since the last ``presence``, and its new size.

    ``joined``: users who came or whose entry changed (updates by username);
    ``left``: users whose last connection left. ``count``: members now. ``more``:
    too many changes to list (a crowd came or went): only the count is given.
    """

    room: str
    count: int
    joined: list[User] = msgspec.field(default_factory=list)
    left: list[User] = msgspec.field(default_factory=list)
    more: bool = False


class MembersPage(msgspec.Struct, tag_field="op", tag="members", omit_defaults=True):
    """Answer to ``members``: members in username order; ``next`` is the following page's cursor."""

    room: str
    id: str
    members: list[User]
    count: int
    next: str | None = None


class HistoryPage(msgspec.Struct, tag_field="op", tag="history", omit_defaults=True):
    """Answer to ``history``: older messages in seq order."""

    room: str
    id: str
    messages: list[Message]


class Found(Message):
    """A message a search found, as it is now, with the spans of its matching words.

    ``marks``: ``[start, end)`` offsets in the body, in characters (Unicode code
    points; in JavaScript, indexes of ``Array.from(body)``), in order.
    """

    marks: list[tuple[int, int]] = msgspec.field(default_factory=list)


class SearchResults(msgspec.Struct, tag_field="op", tag="search"):
    """Answer to ``search``: the messages found, newest first."""

    id: str
    results: list[Found]


class ImportDone(msgspec.Struct, tag_field="op", tag="import"):
    """Answer to ``import``: the part is stored; ``seq`` is the room's last seq now."""

    room: str
    id: str
    seq: int


class Error(msgspec.Struct, tag_field="op", tag="error", omit_defaults=True):
    """A refused frame; the connection stays open."""

    code: str
    message: str
    id: str | None = None
    room: str | None = None
    retry_after: float | None = None


ServerFrame = (
    Hello
    | Joined
    | Left
    | Message
    | Change
    | ReadMarker
    | Mention
    | Mentions
    | TypingEvent
    | DataEvent
    | Presence
    | MembersPage
    | HistoryPage
    | SearchResults
    | ImportDone
    | Access
    | Error
)

# --------------------------------------------------------------------------- codec

_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


def encode(frame: msgspec.Struct) -> bytes:
    """Serialize a frame to JSON bytes (once per broadcast, not per receiver)."""
    return _encoder.encode(frame)


_user_decoder = msgspec.json.Decoder(User)


def decode_user(data: bytes | str) -> User:
    """Decode a JSON user object (as stored in history or a delegation)."""
    return _user_decoder.decode(data)


def decode_server(data: bytes | str) -> ServerFrame:
    """Decode a frame sent by a server (used by clients)."""
    return _server_decoder.decode(data)


# Invisible characters an emoji sequence may hold: zero-width joiner, variation
# selector 16, and the tag characters of subdivision flags. Other format characters
# (bidi overrides, zero-width spaces, BOM) would make look-alike or invisible reactions.
_EMOJI_FORMAT = frozenset({0x200D, 0xFE0F}) | frozenset(range(0xE0020, 0xE0080))
COMBINING_MAX: Final = 4


def is_reaction(emoji: str) -> bool:
    """Whether ``emoji`` is acceptable as a reaction (see :data:`EMOJI_MAX`)."""
    if not 1 <= len(emoji) <= EMOJI_MAX:
        return False
    combining = visible = 0
    for char in emoji:
        category = unicodedata.category(char)
        if category[0] in "CZ" and not (category == "Cf" and ord(char) in _EMOJI_FORMAT):
            return False
        if category in ("Mn", "Me"):
            combining += 1
        elif category != "Cf":
            visible += 1
    first = unicodedata.category(emoji[0])
    return visible > 0 and combining <= COMBINING_MAX and first not in ("Mn", "Me", "Cf")


def check_room_name(room: str, limit: int = ROOM_NAME_MAX) -> None:
    """Refuse a room name that is empty, too long or has control characters (``invalid_room``)."""
    _check_name(room, "room name", limit, "invalid_room", None)


def _check_name(value: str, what: str, limit: int, code: ErrorCode, frame_id: str | None) -> None:
    if not 1 <= len(value) <= limit or _CONTROL.search(value):
        raise ProtocolError(
            code,
            f"{what} must be 1 to {limit} characters without control characters "
            f"(got {len(value)} characters)",
            id=frame_id,
        )


VALUE_DEPTH_MAX: Final = 200  # nesting of a live value's JSON (clients decode up to this)


def _check_depth(value: msgspec.Raw) -> None:
    """Refuse a value nested deeper than clients decode (every reader would choke on it)."""
    raw = bytes(value)
    if raw.count(b"[") + raw.count(b"{") <= VALUE_DEPTH_MAX:
        return  # cannot be deeper: no need to scan
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    if deepest > VALUE_DEPTH_MAX:
        raise ProtocolError(
            "invalid_field",
            f"a live value may nest at most {VALUE_DEPTH_MAX} levels (this one: {deepest}); "
            "publish a flatter value",
        )


def check_topic(topic: str) -> None:
    """Raise :class:`ProtocolError` (``invalid_topic``) unless ``topic`` is a valid topic."""
    if not isinstance(topic, str):
        kind = type(topic).__name__
        raise ProtocolError("invalid_topic", f"a topic must be a string, not {kind}")
    _check_name(topic, "topic", TOPIC_MAX, "invalid_topic", None)


DIRECT_PREFIX: Final = "dm:"


def direct_room(first: str, second: str) -> str:
    """The name of the direct-message room of two users (the same for both orders)."""
    return DIRECT_PREFIX + _encoder.encode(sorted([first, second])).decode()


def direct_members(room: str) -> list[str] | None:
    """The two usernames of a direct-message room's name, or None for other rooms."""
    if not room.startswith(DIRECT_PREFIX):
        return None
    try:
        members = msgspec.json.decode(room[len(DIRECT_PREFIX) :], type=list[str])
    except msgspec.DecodeError:
        return None
    return members if len(members) == 2 and members == sorted(members) else None


def _validate(frame: ClientFrame, room_name_max: int) -> ClientFrame:
    frame_id = getattr(frame, "id", None)
    if frame_id is not None and not 1 <= len(frame_id) <= ID_MAX:
        raise ProtocolError(
            "invalid_field", f"`id` must be 1 to {ID_MAX} characters", id=frame_id[:ID_MAX]
        )
    if isinstance(frame, Search):
        for room in frame.rooms or ():
            _check_name(room, "room name", room_name_max, "invalid_room", frame_id)
        if frame.limit is not None and frame.limit < 1:
            raise ProtocolError("invalid_field", "`limit` must be at least 1", id=frame_id)
        return frame
    _check_name(frame.room, "room name", room_name_max, "invalid_room", frame_id)
    if isinstance(frame, Data):
        check_topic(frame.topic)
        _check_depth(frame.value)
    elif isinstance(frame, Send | Edit) and not frame.body.strip():
        if not (isinstance(frame, Send) and frame.attachment is not None):
            raise ProtocolError("invalid_field", "`body` must not be empty", id=frame_id)
    elif isinstance(frame, React | Unreact) and not is_reaction(frame.emoji):
        raise ProtocolError(
            "invalid_field",
            f"`emoji` must be 1 to {EMOJI_MAX} characters: an emoji (or a short word), "
            "without spaces, control or invisible formatting characters",
            id=frame_id,
            room=frame.room,
        )
    elif isinstance(frame, HistoryRequest):
        if frame.limit is not None and frame.limit < 1:
            raise ProtocolError("invalid_field", "`limit` must be at least 1", id=frame_id)
        if (frame.before is None) == (frame.around is None):
            raise ProtocolError(
                "invalid_field", "give either `before` or `around` (a seq)", id=frame_id
            )
    return frame


def _classify(data: bytes | str) -> ProtocolError:
    """Explain why ``data`` is not a valid client frame (the slow path)."""
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return ProtocolError("bad_json", "frame is not valid UTF-8 JSON")
    except RecursionError:
        return _too_deep()
    if not isinstance(raw, dict):
        return ProtocolError("bad_frame", f"frame must be a JSON object, not {type(raw).__name__}")
    raw_id = raw.get("id")
    frame_id = raw_id[:ID_MAX] if isinstance(raw_id, str) else None
    op = raw.get("op")
    if not isinstance(op, str):
        return ProtocolError("bad_frame", "frame has no string `op` field", id=frame_id)
    if op not in CLIENT_OPS:
        known = ", ".join(sorted(CLIENT_OPS))
        return ProtocolError("unknown_op", f"unknown op {op[:50]!r}; known: {known}", id=frame_id)
    try:
        msgspec.convert(raw, ClientFrame)
    except (msgspec.ValidationError, RecursionError) as exc:
        return ProtocolError("invalid_field", f"invalid `{op}` frame: {exc}", id=frame_id)
    return ProtocolError("bad_frame", "frame could not be decoded", id=frame_id)


_binary_header = msgspec.json.Decoder(Data)
_HEADER_SIZE = 4


def pack_binary(header: bytes, buffers: list[bytes | memoryview]) -> bytes:
    """Build a binary frame: 4-byte big-endian header length, JSON header, buffers."""
    return b"".join([len(header).to_bytes(_HEADER_SIZE, "big"), header, *buffers])


def unpack_binary(data: bytes) -> tuple[bytes, memoryview]:
    """Split a binary frame into its JSON header and the buffers' bytes."""
    view = memoryview(data)
    if len(view) < _HEADER_SIZE:
        raise ProtocolError("bad_frame", "binary frame shorter than its 4-byte header length")
    size = int.from_bytes(view[:_HEADER_SIZE], "big")
    if _HEADER_SIZE + size > len(view):
        raise ProtocolError("bad_frame", "binary frame header length is past the frame's end")
    return bytes(view[_HEADER_SIZE : _HEADER_SIZE + size]), view[_HEADER_SIZE + size :]


def decode_binary(data: bytes, room_name_max: int = ROOM_NAME_MAX) -> tuple[Data, memoryview]:
    """Decode a binary ``data`` frame: its header (validated) and its buffers' bytes."""
    header, payload = unpack_binary(data)
    try:
        frame = _binary_header.decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(
            "bad_frame", "a binary frame must carry a JSON `data` header (see docs/protocol.md)"
        ) from None
    if frame.buffers is None or any(size < 0 for size in frame.buffers):
        raise ProtocolError("invalid_field", "a binary `data` frame needs `buffers` sizes")
    if sum(frame.buffers) != len(payload):
        raise ProtocolError(
            "invalid_field",
            f"`buffers` add up to {sum(frame.buffers)} bytes but {len(payload)} follow",
        )
    _validate(frame, room_name_max)
    return frame, payload


def decode(data: bytes | str, room_name_max: int = ROOM_NAME_MAX) -> ClientFrame:
    """Decode and validate one client frame, raising :class:`ProtocolError` if bad."""
    try:
        frame = _client_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise _classify(data) from None
    except RecursionError:
        raise _too_deep() from None
    return _validate(frame, room_name_max)


def _too_deep() -> ProtocolError:
    return ProtocolError(
        "bad_frame",
        "frame is nested too deeply to decode; send flatter JSON (see docs/protocol.md)",
    )


def decode_relayed(frame: bytes, binary: bool) -> ServerFrame:
    """Decode a frame another process broadcast (a binary one is a live value)."""
    return decode_server(unpack_binary(frame)[0] if binary else frame)
