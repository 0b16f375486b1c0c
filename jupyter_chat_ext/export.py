"""A room's conversation as a file: Markdown, HTML or JSON (which imports back).

Every format shows each message as it is now, every change applied: an edited body
with its "edited" time, a deleted message as "(deleted)" (its body is gone), the
reactions with who reacted, a reply's "↪ reply to #12", a message's reply count and
the users it mentions. Bodies are kept as their source: Markdown, LaTeX math and
code are not rendered. HTML escapes every character a browser could take for markup
(and forbids scripts besides), so a message cannot run anything in the page.

The JSON export (``FORMAT`` and ``VERSION`` say what it is) holds the message dicts
as :attr:`Room.messages <jupyter_chat_ext.client.room.Room.messages>` gives them;
:func:`import_parts` turns it into ``import`` frames for a room with no history.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final, Literal

import msgspec

from . import protocol as p
from .conversation import MENTION

FORMAT: Final = "jupyter-chat-ext"
VERSION: Final = 1
Format = Literal["markdown", "json", "html"]
FORMATS: Final[dict[str, Format]] = {
    "markdown": "markdown",
    "md": "markdown",
    "json": "json",
    "html": "html",
    "htm": "html",
}


class ExportError(ValueError):
    """A file that is not a jupyter-chat-ext JSON export (the message says why)."""


def format_of(name: str) -> Format:
    """The export format called ``name`` (``md`` and ``markdown`` are one), or ValueError."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown export format {name!r}: choose markdown (md), json or html"
        ) from None


def when(ts: float) -> str:
    """A timestamp as shown in exports: UTC, to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _name(user: dict[str, Any]) -> str:
    return str(user.get("display_name") or user.get("name") or user["username"])


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def render(
    fmt: str,
    room: str,
    messages: list[dict[str, Any]],
    access: dict[str, Any] | None = None,
    exported: float | None = None,
) -> str:
    """``messages`` (dicts as ``Room.messages`` has them, oldest first) in format ``fmt``."""
    exported = time.time() if exported is None else exported
    match format_of(fmt):
        case "markdown":
            return markdown(room, messages, access, exported)
        case "html":
            return to_html(room, messages, access, exported)
        case "json":
            return to_json(room, messages, access, exported)


def _access_line(access: dict[str, Any] | None) -> str:
    if not access:
        return ""
    members = ", ".join(access.get("members", []))
    if access.get("owner"):
        return f"A private room of {access['owner']}, open to: {members}."
    return f"A direct-message room of {members}."


def _parts(message: dict[str, Any]) -> list[str]:
    """The notes under a message: edited, replies, reactions, mentions (plain text)."""
    notes = []
    if message.get("edited") and not message.get("deleted"):
        notes.append(f"edited {when(message['edited'])}")
    if message.get("replies"):
        notes.append(_counted(message["replies"], "reply", "replies"))
    for emoji, names in (message.get("reactions") or {}).items():
        notes.append(f"{emoji} {len(names)} ({', '.join(names)})")
    if message.get("mentions"):
        notes.append("mentions " + ", ".join(f"@{name}" for name in message["mentions"]))
    return notes


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")


def _md_text(text: str) -> str:
    """Plain text (a name, a room) that Markdown shows as it is, on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def markdown(
    room: str, messages: list[dict[str, Any]], access: dict[str, Any] | None, exported: float
) -> str:
    """The conversation as Markdown: a heading per message, bodies as their source."""
    lines = [
        f"# {_md_text(room)}",
        "",
        f"Exported from jupyter-chat-ext on {when(exported)}: "
        f"{_counted(len(messages), 'message', 'messages')}. {_access_line(access)}".rstrip(),
    ]
    for message in messages:
        lines += ["", "---", ""]
        lines.append(
            f"**{_md_text(_name(message['user']))}** (@{_md_text(message['user']['username'])})"
            f" · {when(message['ts'])} · #{message['seq']}"
        )
        lines.append("")
        if message.get("reply_to") is not None:
            lines += [f"↪ reply to #{message['reply_to']}", ""]
        lines.append("*(deleted)*" if message.get("deleted") else message["body"])
        notes = _parts(message)
        if notes:
            lines += ["", "*" + _md_text(" · ".join(notes)) + "*"]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 50rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; background: #fff; }
header.room p { color: #59636e; }
article { border-top: 1px solid #d1d9e0; padding: .6rem 0; }
article header { color: #59636e; font-size: .9em; }
article header .author { color: #1f2328; font-weight: 600; }
.body { white-space: pre-wrap; overflow-wrap: anywhere; margin: .3rem 0; }
.deleted { color: #59636e; font-style: italic; }
.reply, .notes { color: #59636e; font-size: .9em; margin: .2rem 0; }
.mention { background: #fff1c2; border-radius: 3px; }
a { color: #0969da; }
@media (prefers-color-scheme: dark) {
  body { color: #f0f6fc; background: #0d1117; }
  article header .author { color: #f0f6fc; }
  .mention { background: #5a4a00; }
  a { color: #4493f8; }
}
"""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _html_body(message: dict[str, Any]) -> str:
    """The body escaped, with the ``@username`` mentions it names wrapped (escaped too)."""
    body: str = message["body"]
    named = set(message.get("mentions") or ())
    pieces: list[str] = []
    last = 0
    for match in MENTION.finditer(body):
        name = match.group(1).rstrip(".-")
        if name not in named:
            continue
        start, end = match.start(), match.start() + 1 + len(name)
        pieces += [_esc(body[last:start]), f'<span class="mention">{_esc(body[start:end])}</span>']
        last = end
    pieces.append(_esc(body[last:]))
    return "".join(pieces)


def to_html(
    room: str, messages: list[dict[str, Any]], access: dict[str, Any] | None, exported: float
) -> str:
    """The conversation as one self-contained HTML page (no script, nothing fetched)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Defence in depth: whatever a body holds, this page runs and fetches nothing.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(room)}: chat export</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        '<header class="room">',
        f"<h1>{_esc(room)}</h1>",
        f"<p>Exported from jupyter-chat-ext on {_esc(when(exported))}: "
        f"{_counted(len(messages), 'message', 'messages')}. {_esc(_access_line(access))}</p>",
        "</header>",
    ]
    for message in messages:
        seq = int(message["seq"])
        user = message["user"]
        stamp = datetime.fromtimestamp(message["ts"], timezone.utc).isoformat()
        out.append(f'<article class="message" id="m{seq}">')
        out.append(
            f'<header><span class="author" title="@{_esc(user["username"])}">'
            f"{_esc(_name(user))}</span> · "
            f'<time datetime="{_esc(stamp)}">{_esc(when(message["ts"]))}</time> · '
            f'<a href="#m{seq}">#{seq}</a></header>'
        )
        if message.get("reply_to") is not None:
            parent = int(message["reply_to"])
            out.append(f'<p class="reply">↪ reply to <a href="#m{parent}">#{parent}</a></p>')
        if message.get("deleted"):
            out.append('<div class="body deleted">(deleted)</div>')
        else:
            out.append(f'<div class="body">{_html_body(message)}</div>')
        notes = _parts(message)
        if notes:
            out.append(f'<p class="notes">{_esc(" · ".join(notes))}</p>')
        out.append("</article>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def to_json(
    room: str, messages: list[dict[str, Any]], access: dict[str, Any] | None, exported: float
) -> str:
    """The conversation as JSON: what :func:`load` reads back and an import restores."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "room": room,
        "exported": exported,
        "access": access,
        "messages": messages,
    }
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def load(data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """A JSON export (its text, or already parsed), checked: room, access and messages."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ExportError(f"not a JSON export: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f'not a {FORMAT} JSON export (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ExportError(f"export version {data.get('version')!r}; this program reads {VERSION}")
    if not isinstance(data.get("room"), str) or not isinstance(data.get("messages"), list):
        raise ExportError('an export needs "room" (a name) and "messages" (a list)')
    try:
        messages = msgspec.convert(data["messages"], list[p.ImportedMessage])
    except msgspec.ValidationError as exc:
        raise ExportError(f"a message of the export is invalid: {exc}") from None
    access = data.get("access")
    if access is not None and not isinstance(access, dict):
        raise ExportError('"access" must be null or an object')
    return {"room": data["room"], "access": access, "messages": messages}


def renumbered(messages: Iterable[p.ImportedMessage]) -> list[p.ImportedMessage]:
    """Messages numbered 1, 2, ... in seq order (an import's log has no change entries).

    A reply keeps pointing at its parent; one whose parent is not among them is
    imported as a plain message.
    """
    ordered = sorted(messages, key=lambda m: m.seq)
    numbers = {m.seq: index for index, m in enumerate(ordered, 1)}
    return [
        msgspec.structs.replace(
            message,
            seq=numbers[message.seq],
            reply_to=numbers.get(message.reply_to) if message.reply_to is not None else None,
        )
        for message in ordered
    ]


def import_parts(
    room: str,
    messages: list[p.ImportedMessage],
    access: p.PrivateAccess | None,
    budget: int,
    new_id: Any,
) -> list[p.Import]:
    """``import`` frames for ``messages`` (numbered 1..n), each about ``budget`` bytes at most.

    ``new_id()`` gives each frame its id; the first carries ``access``.
    """
    parts: list[p.Import] = []
    current: list[p.ImportedMessage] = []
    size = 0
    for message in messages:
        length = len(msgspec.json.encode(message))
        if current and size + length > budget:
            parts.append(p.Import(room=room, id=new_id(), messages=current, after=0))
            current, size = [], 0
        current.append(message)
        size += length
    if current:
        parts.append(p.Import(room=room, id=new_id(), messages=current, after=0))
    for part in parts:
        part.after = part.messages[0].seq - 1
    if parts:
        parts[0].access = access
    return parts
