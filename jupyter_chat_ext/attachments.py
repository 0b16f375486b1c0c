"""Attachments: uploads checked and stored once by content, held by the messages that carry them.

An attachment's bytes never travel through the chat socket (docs/protocol.md,
"Attachments"). A client uploads them over HTTP (:func:`accept_upload`): the server
checks who may post in the room, the size, the MIME type against the bytes, and keeps
them under their SHA-256 as a pending :class:`Upload` (a token, valid
``attachment_upload_ttl`` seconds). A ``send`` that names the token turns it into the
message's :class:`~jupyter_chat_ext.protocol.Attachment` and *holds* the blob for that
message. Deleting the message *releases* it; a blob no message holds and no pending
upload names is erased. Readers fetch the bytes over HTTP (:func:`fetch_attachment`),
refused (as not found) to anyone who may not read the room.

Stores: :class:`MemoryAttachments` (tests), :class:`SQLiteAttachments` (a file of its
own beside the history, so a 10 MiB write never holds the history's writer), and
``RedisAttachments`` in :mod:`jupyter_chat_ext.redis` for replicas.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import re
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

import msgspec

from .access import Action, refusal, room_access
from .protocol import (
    ATTACHMENT_KINDS,
    ATTACHMENTS_PATH,
    IMAGE_SIGNATURES,
    Attachment,
    AttachmentRequest,
    ProtocolError,
    check_room_name,
    is_image,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .rooms import RoomRegistry

T = TypeVar("T")

VALUE_MIME: Final = "application/vnd.jupyter-chat-ext.value"
BUNDLE_MIME: Final = "application/vnd.jupyter-chat-ext.bundle+json"
NAME_MAX: Final = 255
# A person's uploads and fetches served at once, per process (a browser's connections to
# one host); more wait their turn. Each holds up to max_attachment_size in memory.
TRANSFERS_PER_PERSON: Final = 6
MIME_MAX: Final = 127
# Shown in the page by the widget and served inline: raster images only.
INLINE_MIMES: Final = frozenset(IMAGE_SIGNATURES)
_MIME: Final = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_SVG_START: Final = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*"
    rb"(?:<!DOCTYPE[^>]*>\s*)?(?:<!--.*?-->\s*)*<svg[\s>]",
    re.S,
)


class UploadRefused(Exception):
    """An upload or fetch refused: HTTP ``status``, protocol error ``code``, and why."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Upload:
    """Bytes uploaded for a room, not yet (or already) sent in a message."""

    token: str
    username: str
    room: str
    name: str
    mime: str
    size: int
    sha256: str
    expires: float


@dataclass(frozen=True)
class Ref:
    """A message that holds a blob: its room, author and client id (stable across retries)."""

    room: str
    username: str
    id: str


@dataclass(frozen=True)
class Stored:
    """A blob as a reader fetches it: bytes, MIME type and a file name."""

    data: bytes
    mime: str
    name: str


def attachment_url(room: str, sha256: str) -> str:
    """Where the bytes of ``sha256`` in ``room`` are fetched, relative to the base URL."""
    return f"{ATTACHMENTS_PATH}/{sha256}?room={quote(room, safe='')}"


def check_content(mime: str, name: str, data: bytes) -> None:
    """Refuse a bad MIME type or name, or bytes that are not what the MIME type says."""
    if len(mime) > MIME_MAX or not _MIME.fullmatch(mime):
        raise UploadRefused(
            400,
            "invalid_field",
            f"Content-Type {mime[:MIME_MAX]!r} is not a MIME type (type/subtype)",
        )
    if not 1 <= len(name) <= NAME_MAX or not name.isprintable() or any(c in name for c in "/\\"):
        raise UploadRefused(
            400,
            "invalid_field",
            f"X-Chat-Name must be a file name of 1 to {NAME_MAX} printable characters "
            "without / or \\",
        )
    if mime in IMAGE_SIGNATURES:
        if not is_image(data, mime):
            raise _lying(mime)
    elif mime == "image/svg+xml":
        if not _SVG_START.match(data[:65536]):
            raise _lying(mime, "an <svg> document")
    elif mime == VALUE_MIME:
        _check_value(data)
    elif mime == BUNDLE_MIME:
        try:
            bundle = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            bundle = None
        if not isinstance(bundle, dict) or not all(_MIME.fullmatch(k) for k in bundle):
            raise _lying(mime, "a JSON object of MIME type to data")


def _check_value(data: bytes) -> None:
    """A shared value's frame: its header is ``{sizes, value}`` and the sizes add up.

    The server does not decode the value itself (it needs no numpy); every reader does,
    as untrusted (:func:`jupyter_chat_ext.values.unpack`).
    """
    size = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    try:
        if size < 0 or 4 + size > len(data):
            raise ValueError
        header = msgspec.json.decode(data[4 : 4 + size], type=_ValueHeader)
        if any(s < 0 for s in header.sizes) or sum(header.sizes) != len(data) - 4 - size:
            raise ValueError
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise _lying(VALUE_MIME, "a value packed by jupyter_chat_ext.values.pack") from None


class _ValueHeader(msgspec.Struct):
    sizes: list[int]
    value: msgspec.Raw


def _lying(mime: str, what: str | None = None) -> UploadRefused:
    return UploadRefused(
        400,
        "invalid_field",
        f"the bytes are not {what or mime}: send the right Content-Type "
        "(application/octet-stream for any file)",
    )


# ------------------------------------------------------------------------- the stores


class AttachmentStore(abc.ABC):
    """Blobs by SHA-256, the pending uploads that name them, the messages that hold them."""

    @abc.abstractmethod
    async def put(self, upload: Upload, data: bytes) -> None:
        """Keep ``data`` (once per content) and the pending ``upload`` that names it."""

    @abc.abstractmethod
    async def claim(self, token: str, now: float) -> Upload | None:
        """The upload ``token`` names, unless it expired (a retried send may claim again)."""

    @abc.abstractmethod
    async def hold(self, upload: Upload, ref: Ref) -> bool:
        """Record that the message ``ref`` carries the upload's blob; False if it is gone.

        A message holds one blob: a second ``hold`` for ``ref`` with other bytes (a
        retried send naming another upload) leaves the first in place.
        """

    @abc.abstractmethod
    async def release(self, sha256: str, ref: Ref) -> None:
        """The message ``ref`` no longer holds ``sha256`` (and only that): erase it if unheld."""

    @abc.abstractmethod
    async def described(self, sha256: str, room: str) -> tuple[str, str] | None:
        """The MIME type and file name of ``sha256`` if a message of ``room`` holds it."""

    @abc.abstractmethod
    async def read(self, sha256: str) -> bytes | None:
        """The bytes of ``sha256`` (ask :meth:`described` first: it decides access)."""

    async def fetch(self, sha256: str, room: str) -> Stored | None:
        """The blob with its type and name, if a message of ``room`` holds it."""
        described = await self.described(sha256, room)
        data = await self.read(sha256) if described is not None else None
        return None if data is None or described is None else Stored(data, *described)

    @abc.abstractmethod
    async def pending(self, username: str, now: float) -> int:
        """How many of ``username``'s uploads are neither sent nor expired."""

    @abc.abstractmethod
    async def sweep(self, now: float) -> None:
        """Drop expired uploads, and erase the blobs nothing names any more."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class MemoryAttachments(AttachmentStore):
    """Attachments in this process's memory (tests; a server that keeps no history)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._uploads: dict[str, tuple[Upload, bool]] = {}  # token -> (upload, held)
        self._refs: dict[Ref, tuple[str, str, str]] = {}  # -> sha256, mime, name

    async def put(self, upload: Upload, data: bytes) -> None:
        """See :meth:`AttachmentStore.put`."""
        self._blobs.setdefault(upload.sha256, data)
        self._uploads[upload.token] = (upload, False)

    async def claim(self, token: str, now: float) -> Upload | None:
        """See :meth:`AttachmentStore.claim`."""
        found = self._uploads.get(token)
        return found[0] if found is not None and found[0].expires > now else None

    async def hold(self, upload: Upload, ref: Ref) -> bool:
        """See :meth:`AttachmentStore.hold`."""
        if upload.sha256 not in self._blobs:
            return False
        self._refs.setdefault(ref, (upload.sha256, upload.mime, upload.name))
        if upload.token in self._uploads:
            self._uploads[upload.token] = (upload, True)
        return True

    async def release(self, sha256: str, ref: Ref) -> None:
        """See :meth:`AttachmentStore.release`."""
        if self._refs.get(ref, ("",))[0] == sha256:
            del self._refs[ref]
        self._erase_unused(sha256, time.time())

    def _erase_unused(self, sha256: str, now: float) -> None:
        named = any(r[0] == sha256 for r in self._refs.values()) or any(
            u.sha256 == sha256 and u.expires > now and not held
            for u, held in self._uploads.values()
        )
        if not named:
            self._blobs.pop(sha256, None)

    async def described(self, sha256: str, room: str) -> tuple[str, str] | None:
        """See :meth:`AttachmentStore.described`."""
        for ref, (sha, mime, name) in self._refs.items():
            if sha == sha256 and ref.room == room:
                return mime, name
        return None

    async def read(self, sha256: str) -> bytes | None:
        """See :meth:`AttachmentStore.read`."""
        return self._blobs.get(sha256)

    async def pending(self, username: str, now: float) -> int:
        """See :meth:`AttachmentStore.pending`."""
        return sum(
            1
            for u, held in self._uploads.values()
            if u.username == username and not held and u.expires > now
        )

    async def sweep(self, now: float) -> None:
        """See :meth:`AttachmentStore.sweep`."""
        for token, (upload, _) in list(self._uploads.items()):
            if upload.expires <= now:
                del self._uploads[token]
        for sha in list(self._blobs):
            self._erase_unused(sha, now)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    token TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    expires REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS uploads_by_user ON uploads (username, expires);
CREATE INDEX IF NOT EXISTS uploads_by_blob ON uploads (sha256);
CREATE TABLE IF NOT EXISTS refs (
    room TEXT NOT NULL,
    username TEXT NOT NULL,
    id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    mime TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (room, username, id)
);
CREATE INDEX IF NOT EXISTS refs_by_blob ON refs (sha256, room);
"""
_ERASE_UNUSED = (
    "DELETE FROM blobs WHERE sha256 = ?1 "
    "AND NOT EXISTS (SELECT 1 FROM refs WHERE sha256 = ?1) "
    "AND NOT EXISTS (SELECT 1 FROM uploads WHERE sha256 = ?1 AND held = 0 AND expires > ?2)"
)


class SQLiteAttachments(AttachmentStore):
    """Attachments in a SQLite file of their own (WAL), on one thread off the event loop.

    Erased blobs are overwritten (``secure_delete``) and the WAL is cut after each
    erasure, so a deleted message's attachment is gone from the disk too.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-attachments")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        changed = 0
        try:
            for sql, params in statements:
                changed += db.execute(sql, params).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return changed

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._connect().execute(sql, params).fetchall()

    async def put(self, upload: Upload, data: bytes) -> None:
        """See :meth:`AttachmentStore.put`."""
        u = upload
        await self._run(
            self._write,
            [
                ("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)", (u.sha256, data)),
                (
                    "INSERT INTO uploads (token, username, room, name, mime, size, sha256, "
                    "expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (u.token, u.username, u.room, u.name, u.mime, u.size, u.sha256, u.expires),
                ),
            ],
        )

    async def claim(self, token: str, now: float) -> Upload | None:
        """See :meth:`AttachmentStore.claim`."""
        rows = await self._run(
            self._read,
            "SELECT token, username, room, name, mime, size, sha256, expires FROM uploads "
            "WHERE token = ? AND expires > ?",
            (token, now),
        )
        return Upload(*rows[0]) if rows else None

    async def hold(self, upload: Upload, ref: Ref) -> bool:
        """See :meth:`AttachmentStore.hold`."""
        u = upload
        return await self._run(self._hold, u, ref)

    def _hold(self, u: Upload, ref: Ref) -> bool:
        db = self._connect()
        if not db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (u.sha256,)).fetchone():
            return False  # (only this thread erases blobs: it is still there below)
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO refs (room, username, id, sha256, mime, name) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (ref.room, ref.username, ref.id, u.sha256, u.mime, u.name),
                ),
                ("UPDATE uploads SET held = 1 WHERE token = ?", (u.token,)),
            ]
        )
        return True

    async def release(self, sha256: str, ref: Ref) -> None:
        """See :meth:`AttachmentStore.release`."""
        await self._run(self._release, sha256, ref, time.time())

    def _release(self, sha256: str, ref: Ref, now: float) -> None:
        erased = self._write(
            [
                (
                    "DELETE FROM refs WHERE room = ? AND username = ? AND id = ? AND sha256 = ?",
                    (ref.room, ref.username, ref.id, sha256),
                ),
                (_ERASE_UNUSED, (sha256, now)),
            ]
        )
        if erased:
            self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def described(self, sha256: str, room: str) -> tuple[str, str] | None:
        """See :meth:`AttachmentStore.described`."""
        rows = await self._run(
            self._read,
            "SELECT mime, name FROM refs WHERE sha256 = ? AND room = ? LIMIT 1",
            (sha256, room),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def read(self, sha256: str) -> bytes | None:
        """See :meth:`AttachmentStore.read`."""
        rows = await self._run(self._read, "SELECT data FROM blobs WHERE sha256 = ?", (sha256,))
        return bytes(rows[0][0]) if rows else None

    async def pending(self, username: str, now: float) -> int:
        """See :meth:`AttachmentStore.pending`."""
        rows = await self._run(
            self._read,
            "SELECT count(*) FROM uploads WHERE username = ? AND expires > ? AND held = 0",
            (username, now),
        )
        return int(rows[0][0])

    async def sweep(self, now: float) -> None:
        """See :meth:`AttachmentStore.sweep`."""
        await self._run(self._sweep, now)

    def _sweep(self, now: float) -> None:
        erased = self._write(
            [
                ("DELETE FROM uploads WHERE expires <= ?", (now,)),
                (
                    "DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM refs) "
                    "AND sha256 NOT IN (SELECT sha256 FROM uploads WHERE held = 0)",
                    (),
                ),
            ]
        )
        if erased:
            self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


# ------------------------------------------------------------- what the hosts ask for


async def accept_upload(
    registry: RoomRegistry, username: str, room: str, mime: str, name: str, data: bytes
) -> Upload:
    """Check and keep an upload by ``username`` for ``room``; raises :class:`UploadRefused`."""
    settings = registry.settings
    try:
        check_room_name(room, settings.max_room_name)
    except ProtocolError as exc:
        raise UploadRefused(403, exc.code, exc.message) from None
    await _require(registry, username, room, Action.POST, 403)
    bucket = registry.limits.buckets(username).messages
    wait = bucket.take()
    if wait:
        raise UploadRefused(
            429, "rate_limited", f"too many messages and uploads: wait {wait:.1f} s", wait
        )
    now = time.time()
    if await registry.attachments.pending(username, now) >= settings.max_pending_uploads:
        raise UploadRefused(
            429,
            "rate_limited",
            f"you have {settings.max_pending_uploads} uploads not yet sent in a message: "
            "send them (or wait until they expire)",
            60.0,
        )
    check_content(mime, name, data)
    upload = Upload(
        token="u-" + secrets.token_urlsafe(24),
        username=username,
        room=room,
        name=name,
        mime=mime,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        expires=now + settings.attachment_upload_ttl,
    )
    await registry.attachments.put(upload, data)
    return upload


class TransferSlots:
    """At most ``per_person`` attachment transfers (uploads, fetches) of one person at once.

    An upload holds its body in memory until the last byte is in, a fetch its bytes until
    the peer has read them, and a peer can stall: without a bound, one person's stalled
    connections would hold any amount of memory. A transfer past the bound waits for a
    slot before a byte of its body is read or its bytes are loaded, so waiting costs
    only the connection, and a stalled transfer holds up its own person only.
    """

    def __init__(self, per_person: int) -> None:
        self.per_person = per_person
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # transfers holding or awaiting a slot, per person

    async def acquire(self, username: str) -> None:
        """Wait for a slot of ``username``'s (then :meth:`release` it, exactly once)."""
        slots = self._slots.get(username)
        if slots is None:
            slots = self._slots[username] = asyncio.Semaphore(self.per_person)
        self._users[username] = self._users.get(username, 0) + 1
        try:
            await slots.acquire()
        except BaseException:
            self._leave(username)
            raise

    def release(self, username: str) -> None:
        """Give back a slot :meth:`acquire` gave."""
        self._slots[username].release()
        self._leave(username)

    def _leave(self, username: str) -> None:
        left = self._users[username] - 1
        if left:
            self._users[username] = left
        else:  # nobody holds or awaits one: forget the person
            del self._users[username], self._slots[username]

    def waiting(self, username: str) -> int:
        """How many of ``username``'s transfers await a slot."""
        return max(0, self._users.get(username, 0) - self.per_person)


class BlobCache:
    """The bytes of recently fetched attachments, shared by the requests that serve them.

    Fifty readers of a 5 MiB figure fetching it at once get the one ``bytes`` object
    (read from the store once: concurrent reads wait for the first), not fifty copies.
    At most ``limit`` bytes are kept, the least recently used dropped first.
    """

    def __init__(self, limit: int = 64 * 1024 * 1024) -> None:
        self.limit = limit
        self._kept: dict[str, bytes] = {}
        self._loading: dict[str, asyncio.Future[bytes | None]] = {}

    async def get(self, sha256: str, store: AttachmentStore) -> bytes | None:
        """The bytes of ``sha256``, from here or read once from ``store``."""
        data = self._kept.pop(sha256, None)
        if data is not None:
            self._kept[sha256] = data  # the most recently used
            return data
        loading = self._loading.get(sha256)
        if loading is None:
            loading = asyncio.ensure_future(store.read(sha256))
            self._loading[sha256] = loading
            loading.add_done_callback(lambda done: self._loaded(sha256, done))
        return await asyncio.shield(loading)

    def _loaded(self, sha256: str, loading: asyncio.Future[bytes | None]) -> None:
        self._loading.pop(sha256, None)
        if loading.cancelled() or loading.exception() is not None:
            return
        data = loading.result()
        if data is None or len(data) > self.limit:
            return
        self._kept[sha256] = data
        while sum(len(d) for d in self._kept.values()) > self.limit:
            del self._kept[next(iter(self._kept))]

    def forget(self, sha256: str) -> None:
        """Drop ``sha256`` (a holder was released: its bytes may be erased)."""
        self._kept.pop(sha256, None)


async def fetch_attachment(registry: RoomRegistry, username: str, room: str, sha256: str) -> Stored:
    """The bytes of ``sha256`` as carried in ``room``, for ``username`` (or not found)."""
    gone = UploadRefused(
        404, "not_found", "no such attachment, or it is in a room you may not read"
    )
    if not 1 <= len(room) <= registry.settings.max_room_name:
        raise gone
    await _require(registry, username, room, Action.READ, 404, gone)
    described = await registry.attachments.described(sha256, room)
    data = await registry.blob_cache.get(sha256, registry.attachments) if described else None
    if described is None or data is None:
        raise gone
    return Stored(data, *described)


async def _require(
    registry: RoomRegistry,
    username: str,
    room: str,
    action: Action,
    status: int,
    refused: UploadRefused | None = None,
) -> None:
    access = room_access(room, await registry.store.get_access(room))
    reason = refusal(access, username, action)
    if reason is not None:
        raise refused or UploadRefused(status, "forbidden", f"room {room!r}: {reason}")


async def attach(
    registry: RoomRegistry, username: str, room: str, request: AttachmentRequest, frame_id: str
) -> tuple[Attachment, Upload]:
    """The attachment a ``send`` carries, from its upload (yours, for this room, not expired)."""
    upload = await registry.attachments.claim(request.upload, time.time())
    if upload is None or upload.username != username or upload.room != room:
        raise ProtocolError(
            "not_found",
            "no such upload of yours for this room (uploads expire "
            f"{registry.settings.attachment_upload_ttl:.0f} s after they are made): "
            "upload it again",
            id=frame_id,
            room=room,
        )
    if request.kind not in ATTACHMENT_KINDS:  # pragma: no cover - the frame's type checks it
        raise ProtocolError("invalid_field", "unknown attachment kind", id=frame_id, room=room)
    extra = len(msgspec.json.encode([request.preview, request.provenance]))
    if extra > registry.settings.max_preview_size:
        raise ProtocolError(
            "invalid_field",
            f"an attachment's preview and provenance take {extra} bytes of JSON; at most "
            f"{registry.settings.max_preview_size} (send a smaller preview)",
            id=frame_id,
            room=room,
        )
    attachment = Attachment(
        name=upload.name,
        mime=upload.mime,
        size=upload.size,
        sha256=upload.sha256,
        url=attachment_url(room, upload.sha256),
        kind=request.kind,
        preview=request.preview,
        provenance=request.provenance,
    )
    return attachment, upload
