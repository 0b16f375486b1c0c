"""Who may do what in a room: every access decision of the core, in one place.

A room is public (``access`` is None: anyone who may chat on the server may use it),
private (an owner and a member list; only members may use it, only the owner may
change the list), or direct (``dm:["a","b"]``: its two users, no owner). Every path
that reads from or writes to a room asks :func:`require` first, on every frame, not
only when joining, so that a membership taken away takes effect at once everywhere.
"""

from __future__ import annotations

import enum

from .protocol import Access, ProtocolError, direct_members


class Action(enum.Enum):
    """What a connection wants to do in a room."""

    READ = "read"  # join, and with it history, members, values; load earlier pages
    POST = "post"  # send a chat message
    PUBLISH = "publish"  # publish a live value
    TYPE = "type"  # show that you are typing
    INVITE = "invite"  # change who may join (add or remove members)


USERNAME_MAX = 200  # characters of a username in a member list


def check_members(members: list[str], limit: int, *, room: str, frame_id: str | None) -> None:
    """Refuse a private room's member list past ``limit`` people or with a bad username.

    Every frame in a room is checked against its list: its size is the cost of that.
    """
    if len(members) > limit:
        raise ProtocolError(
            "too_many_members",
            f"a private room may have at most {limit} members ({len(members)} asked); "
            "use a public room for a larger group",
            id=frame_id,
            room=room,
        )
    for name in members:
        if not 1 <= len(name) <= USERNAME_MAX or not name.isprintable():
            raise ProtocolError(
                "invalid_field",
                f"members must be usernames of 1 to {USERNAME_MAX} printable characters",
                id=frame_id,
                room=room,
            )


def change_refusal(kind: str, username: str, author: str, moderator: bool) -> str | None:
    """Why ``username`` may not make a change of ``kind`` to ``author``'s message.

    Replying and reacting are posting (:attr:`Action.POST`, asked first); editing is
    the author's alone; deleting is the author's, or a moderator's (a Hub admin on
    the hub service, a username in ``moderators``).
    """
    if kind == "edit" and username != author:
        return "only its author can edit a message"
    if kind == "delete" and username != author and not moderator:
        return "only its author (or a moderator) can delete a message"
    return None


def room_access(room: str, stored: tuple[str, list[str]] | None) -> Access | None:
    """A room's access: a direct room's two users, else as stored (None: public)."""
    pair = direct_members(room)
    if pair is not None:
        return Access(room=room, members=pair)
    if stored is not None:
        return Access(room=room, owner=stored[0], members=stored[1])
    return None


def refusal(access: Access | None, username: str, action: Action) -> str | None:
    """Why ``username`` may not do ``action`` in a room with ``access``; None if they may."""
    if action is Action.INVITE:
        if access is None:
            return (
                "this room is public: anyone can join it. Create a private room "
                "(join with private=True) to choose who may join"
            )
        if access.owner is None:
            return "a direct-message room is for its two users only; nobody can be added"
        if access.owner != username:
            return (
                f"only the owner of a private room can change who may join; that is {access.owner}"
            )
        return None
    if access is None or username in access.members:
        return None
    if access.owner is None:
        return "this is a private direct-message room of two other users"
    return f"this room is private: ask its owner, {access.owner}, to invite you"


def require(
    access: Access | None,
    username: str,
    action: Action,
    *,
    room: str,
    frame_id: str | None = None,
) -> None:
    """Raise ``forbidden`` (a :class:`ProtocolError` naming the room) unless allowed."""
    reason = refusal(access, username, action)
    if reason is not None:
        raise ProtocolError("forbidden", f"room {room!r}: {reason}", id=frame_id, room=room)


def readable(rooms: dict[str, tuple[str, list[str]] | None], username: str) -> list[str]:
    """The rooms among ``rooms`` (name -> stored access) that ``username`` may read."""
    return [
        name
        for name, stored in rooms.items()
        if refusal(room_access(name, stored), username, Action.READ) is None
    ]


def import_refusal(moderator: bool) -> str | None:
    """Why someone may not import messages into a room: only a moderator may.

    An import is the one place the server takes a message's author (and time) from a
    client, so it is for moderators (a Hub admin on the hub service, a username in
    ``moderators``); the room's own access is asked too (:func:`require`).
    """
    if not moderator:
        return (
            "only a moderator can import messages (a Hub admin, or a username in the "
            "`moderators` setting)"
        )
    return None
