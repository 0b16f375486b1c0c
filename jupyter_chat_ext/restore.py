"""The server's side of ``import``: exported messages back into a room with no history.

An import is the one place where the server takes a message's author and time from a
client, so only a moderator may (:func:`~jupyter_chat_ext.access.import_refusal`),
into a room they may read, that has no history yet. Everything else about the
messages is checked as a live message would be (body size, reactions), and what the
server computes itself (reply counts, ``rev``) is computed again, not taken.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from . import attachments, conversation
from .access import USERNAME_MAX, Action, check_members, import_refusal, require
from .history import supports
from .protocol import (
    ID_MAX,
    Import,
    ImportDone,
    ImportedMessage,
    Message,
    ProtocolError,
    is_reaction,
)

if TYPE_CHECKING:
    from .config import ChatSettings
    from .rooms import RoomRegistry


def _invalid(frame: Import, message: str) -> ProtocolError:
    return ProtocolError("invalid_field", message, id=frame.id, room=frame.room)


def _reactions(frame: Import, given: ImportedMessage, limit: int) -> dict[str, list[str]]:
    if len(given.reactions) > limit:
        raise _invalid(frame, f"message {given.seq} has more than {limit} different reactions")
    reactions: dict[str, list[str]] = {}
    for emoji, names in given.reactions.items():
        if not is_reaction(emoji):  # the rule a live reaction follows
            raise _invalid(frame, f"message {given.seq} has an invalid reaction {emoji[:40]!r}")
        kept = list(dict.fromkeys(names))
        if not all(1 <= len(name) <= USERNAME_MAX and name.isprintable() for name in kept):
            raise _invalid(frame, f"message {given.seq} has a reaction by an invalid username")
        if kept:
            reactions[emoji] = kept
    return reactions


def messages_of(frame: Import, settings: ChatSettings) -> list[Message]:
    """The messages of an ``import`` frame, checked, as the store keeps them."""
    if not frame.messages:
        raise _invalid(frame, "an import needs at least one message")
    seen: set[tuple[str, str]] = set()
    messages: list[Message] = []
    for index, given in enumerate(frame.messages):
        seq = frame.after + index + 1
        if given.seq != seq:
            raise _invalid(
                frame,
                f"imported messages are numbered from after+1 on, in order: expected "
                f"seq {seq}, got {given.seq}",
            )
        key = (given.user.username, given.id)
        if not 1 <= len(given.id) <= ID_MAX or not given.user.username or key in seen:
            raise _invalid(
                frame, f"message {seq} needs an id (1 to {ID_MAX} characters) unique per user"
            )
        seen.add(key)
        stamps = [given.ts] if given.edited is None else [given.ts, given.edited]
        if not all(math.isfinite(stamp) for stamp in stamps):
            raise _invalid(frame, f"message {seq} has a time that is not a finite number")
        user = given.user.bounded()
        if given.deleted:
            body, edited, reactions, mentions = "", None, {}, []
        else:
            body = given.body
            if not body.strip() and given.attachment is None:
                raise _invalid(frame, f"message {seq} has an empty body (and is not deleted)")
            size = len(body.encode())
            if size > settings.max_message_size:
                raise ProtocolError(
                    "message_too_large",
                    f"message {seq} is {size} bytes; the limit is {settings.max_message_size}",
                    id=frame.id,
                    room=frame.room,
                )
            edited = given.edited
            reactions = _reactions(frame, given, settings.max_reactions)
            # Only the names the body does mention: an import cannot add others.
            mentions = conversation.mentions_in(body, given.mentions)
        messages.append(
            Message(
                room=frame.room,
                seq=seq,
                id=given.id,
                user=user,
                ts=given.ts,
                body=body,
                reply_to=given.reply_to,
                edited=edited,
                deleted=given.deleted,
                reactions=reactions,
                mentions=mentions,
            )
        )
    return messages


async def run(registry: RoomRegistry, username: str, moderator: bool, frame: Import) -> ImportDone:
    """Answer an ``import`` frame: store its messages, tell whoever is in the room."""
    reason = import_refusal(moderator)
    if reason is not None:
        raise ProtocolError("forbidden", reason, id=frame.id, room=frame.room)
    if frame.access is not None and frame.after != 0:
        raise _invalid(frame, "`access` belongs in the first part of an import only")
    if not supports(registry.store, "import_messages"):
        raise ProtocolError(
            "not_supported",
            f"this server's history store ({type(registry.store).__name__}) cannot import",
            id=frame.id,
            room=frame.room,
        )
    messages = messages_of(frame, registry.settings)
    room = await registry.get(frame.room)
    held: list[tuple[str, attachments.Ref]] = []
    try:
        await room.settled()
        require(room.access, username, Action.READ, room=frame.room, frame_id=frame.id)
        if frame.access is not None:
            members = sorted({frame.access.owner, *frame.access.members})
            limit = registry.settings.max_room_members
            check_members(members, limit, room=frame.room, frame_id=frame.id)
            await room.create_private(frame.access.owner, members, frame.id)
        messages = await _attached(registry, username, frame, messages, held)
        seq = await room.import_messages(messages, frame.after, frame.id)
    except ProtocolError:  # refused: nothing was imported, so the uploads hold nothing
        for sha256, ref in held:
            await registry.attachments.release(sha256, ref)
        raise
    finally:
        registry.release(room)
    return ImportDone(room=frame.room, id=frame.id, seq=seq)


async def _attached(
    registry: RoomRegistry,
    username: str,
    frame: Import,
    messages: list[Message],
    held: list[tuple[str, attachments.Ref]],
) -> list[Message]:
    """The messages with their attachments: uploads of the importer's, held for each message.

    A deleted message keeps none. Each message then holds its attachment as if its
    author had shared it (the same :class:`~jupyter_chat_ext.attachments.Ref`), so
    that deleting it later releases it.
    """
    out: list[Message] = []
    for given, message in zip(frame.messages, messages, strict=True):
        if given.attachment is None or message.deleted:
            out.append(message)
            continue
        attachment, upload = await attachments.attach(
            registry, username, frame.room, given.attachment, frame.id
        )
        ref = attachments.Ref(frame.room, message.user.username, message.id)
        if not await registry.attachments.hold(upload, ref):
            raise ProtocolError(
                "not_found",
                f"the upload for message {message.seq} expired: upload it again",
                id=frame.id,
                room=frame.room,
            )
        held.append((upload.sha256, ref))
        out.append(msgspec.structs.replace(message, attachment=attachment))
    return out
