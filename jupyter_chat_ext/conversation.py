"""How a change to a conversation changes a message: the rules every store applies.

A reply, an edit, a deletion, a reaction added or taken back is an entry of the
room's log (see docs/protocol.md, "Conversation changes"). The stores keep each
message's current state; they call the pure functions here, inside their atomic
step, to decide whether a change is allowed and what the message becomes. So the
rules are the same for SQLite, memory and Redis, and are tested without a store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass

import msgspec

from .access import change_refusal
from .protocol import Attachment, Change, ChangeKind, Message, ProtocolError, User

MENTION = re.compile(r"(?<![\w@])@([\w.\-]+)")
MENTIONS_MAX = 20  # people one message can notify: more is a broadcast, not a mention


@dataclass(frozen=True)
class ChangeEntry:
    """A change to append, before the store gives it a ``seq``."""

    room: str
    id: str
    user: User
    ts: float
    kind: ChangeKind
    target: int
    emoji: str | None = None
    body: str | None = None  # the new body of an edit
    mentions: tuple[str, ...] = ()  # who an edit's new body mentions
    moderator: bool = False  # the requester may delete anyone's message


def mentions_in(body: str, known: Container[str]) -> list[str]:
    """The usernames in ``known`` that ``body`` mentions as ``@username``, in order.

    At most :data:`MENTIONS_MAX` of them (the first), so one message cannot page a crowd.
    ``known`` is only asked whether it holds a name, so a big room's roster need not be
    copied for each message.
    """
    names = known
    found: list[str] = []
    for match in MENTION.finditer(body):
        name = match.group(1).rstrip(".-")
        if name in names and name not in found:
            found.append(name)
            if len(found) == MENTIONS_MAX:
                break
    return found


def _refuse(entry: ChangeEntry, code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, id=entry.id, room=entry.room)  # type: ignore[arg-type]


def check_parent(parent: Message | None, room: str, reply_to: int, frame_id: str) -> Message:
    """The parent of a reply with one more reply, or a refusal if it cannot have one."""
    if parent is None:
        raise ProtocolError(
            "not_found",
            f"no message {reply_to} in room {room!r} to reply to",
            id=frame_id,
            room=room,
        )
    if parent.deleted:
        raise ProtocolError(
            "message_deleted", f"message {reply_to} was deleted", id=frame_id, room=room
        )
    return msgspec.structs.replace(parent, replies=parent.replies + 1)


def apply(target: Message | None, entry: ChangeEntry, max_reactions: int) -> Message:
    """``target`` with ``entry`` applied (its ``rev`` is left to the store), or a refusal."""
    if target is None:
        return _missing(entry)
    reason = change_refusal(entry.kind, entry.user.username, target.user.username, entry.moderator)
    if reason is not None:
        raise _refuse(entry, "forbidden", f"room {entry.room!r}: {reason}")
    if target.deleted:
        if entry.kind == "delete":
            return target  # deleting twice changes nothing
        raise _refuse(entry, "message_deleted", f"message {entry.target} was deleted")
    match entry.kind:
        case "edit":
            assert entry.body is not None
            return msgspec.structs.replace(
                target, body=entry.body, edited=entry.ts, mentions=list(entry.mentions)
            )
        case "delete":
            return msgspec.structs.replace(
                target,
                body="",
                deleted=True,
                edited=None,
                reactions={},
                mentions=[],
                attachment=None,
            )
        case "react":
            assert entry.emoji is not None
            reactions = {emoji: list(names) for emoji, names in target.reactions.items()}
            if entry.emoji not in reactions and len(reactions) >= max_reactions:
                raise _refuse(
                    entry,
                    "too_many_reactions",
                    f"message {entry.target} has {max_reactions} different reactions "
                    "already: react with one of them",
                )
            names = reactions.setdefault(entry.emoji, [])
            if entry.user.username not in names:
                names.append(entry.user.username)
            return msgspec.structs.replace(target, reactions=reactions)
        case "unreact":
            assert entry.emoji is not None
            reactions = {emoji: list(names) for emoji, names in target.reactions.items()}
            names = reactions.get(entry.emoji, [])
            if entry.user.username in names:
                names.remove(entry.user.username)
                if not names:
                    del reactions[entry.emoji]
            return msgspec.structs.replace(target, reactions=reactions)
    raise AssertionError(entry.kind)  # pragma: no cover - the match is exhaustive


def _missing(entry: ChangeEntry) -> Message:
    raise _refuse(entry, "not_found", f"no message {entry.target} in room {entry.room!r}")


def newly_mentioned(before: Message | None, after: Message) -> tuple[str, ...]:
    """Who ``after`` mentions that ``before`` did not (an edit notifies only them)."""
    known = set(before.mentions) if before is not None else set()
    return tuple(name for name in after.mentions if name not in known)


def released(before: Message | None, after: Message) -> Attachment | None:
    """The attachment ``before`` carried and ``after`` does not (a deletion takes it)."""
    if before is not None and before.attachment is not None and after.attachment is None:
        return before.attachment
    return None


def is_retry(entry: ChangeEntry, stored: Change) -> bool:
    """Whether ``entry`` repeats the change ``stored`` under the same id (else: id reused)."""
    return (entry.kind, entry.target, entry.emoji) == (stored.kind, stored.target, stored.emoji)


def stamped(message: Message, rev: int) -> Message:
    """``message`` as changed by the log entry ``rev``."""
    return msgspec.structs.replace(message, rev=rev)


def change_frame(entry: ChangeEntry, seq: int, message: Message) -> Change:
    """The log entry (and broadcast) of an applied change."""
    return Change(
        room=entry.room,
        seq=seq,
        id=entry.id,
        user=entry.user,
        ts=entry.ts,
        kind=entry.kind,
        target=entry.target,
        message=message,
        emoji=entry.emoji,
    )


def count_replies(
    messages: list[Message],
    stored: Callable[[int], Message | None],
    room: str,
    frame_id: str,
) -> tuple[list[Message], dict[int, Message]]:
    """Imported ``messages`` with their replies counted, as if they were posted in order.

    Each reply adds one to its parent's ``replies`` (and sets the parent's ``rev`` to
    its seq) and takes the parent's new count as ``parent_replies``, as a live reply
    does; a parent deleted since is counted too. The parent is an earlier message of
    the import or a ``stored`` one. Returns the messages, and the stored parents that
    changed (by seq); a reply to no message is refused with ``not_found``.
    """
    new: dict[int, Message] = {}
    parents: dict[int, Message] = {}
    for message in messages:
        if message.reply_to is not None:
            seq = message.reply_to
            parent = new.get(seq) or parents.get(seq)
            if parent is None and seq < message.seq:
                parent = stored(seq)
            if parent is None:
                raise ProtocolError(
                    "not_found",
                    f"message {message.seq} replies to {seq}, which is no earlier message "
                    f"of room {room!r}",
                    id=frame_id,
                    room=room,
                )
            parent = msgspec.structs.replace(parent, replies=parent.replies + 1, rev=message.seq)
            (new if seq in new else parents)[seq] = parent
            message = msgspec.structs.replace(message, parent_replies=parent.replies)
        new[message.seq] = message
    return list(new.values()), parents
