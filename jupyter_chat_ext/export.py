"""A room's conversation as a file: Markdown, HTML or JSON (which imports back).

Every format shows each message as it is now, every change applied: an edited body
with its "edited" time, a deleted message as "(deleted)" (its body is gone), the
reactions with who reacted, a reply's "↪ reply to #12", a message's reply count and
the users it mentions. Bodies are kept as their source: Markdown, LaTeX math and
code are not rendered. HTML escapes every character a browser could take for markup
(and forbids scripts besides), so a message cannot run anything in the page.

Attachments come with their messages, their bytes fetched by the exporter (an
:class:`Included` per message; one that could not be fetched is listed as unavailable,
with the reason): HTML embeds raster images as ``data:`` URLs and offers every other
file as a download (``application/octet-stream``, so a browser never renders an
exported HTML or SVG); Markdown links each one, to a file beside it
(:func:`write_files`) or else to the server; JSON holds the bytes in base64
(``attachment.data``). A deleted message has no attachment to export.

The JSON export (``FORMAT`` and ``VERSION`` say what it is) holds the message dicts
as :attr:`Room.messages <jupyter_chat_ext.client.room.Room.messages>` gives them;
:func:`import_parts` turns it into ``import`` frames for a room with no history.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

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


@dataclass(frozen=True)
class Included:
    """A message's attachment as an export includes it: its bytes, or why they are missing.

    ``link`` (Markdown only) is where :func:`write_files` put the file, relative to
    the Markdown's directory.
    """

    data: bytes | None = None
    unavailable: str | None = None
    link: str | None = None


Attachments = Mapping[int, Included]  # by message seq


def attached(message: dict[str, Any]) -> dict[str, Any] | None:
    """The attachment an export shows for ``message``: none for a deleted message."""
    attachment = message.get("attachment")
    if message.get("deleted") or not isinstance(attachment, dict):
        return None
    return attachment


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
    files: Attachments | None = None,
) -> str:
    """``messages`` (dicts as ``Room.messages`` has them, oldest first) in format ``fmt``.

    ``files`` holds, by seq, the attachments fetched; without it (or a message's entry)
    Markdown links the server's copy, and HTML and JSON list them as not fetched.
    """
    exported = time.time() if exported is None else exported
    files = files or {}
    match format_of(fmt):
        case "markdown":
            return markdown(room, messages, access, exported, files)
        case "html":
            return to_html(room, messages, access, exported, files)
        case "json":
            return to_json(room, messages, access, exported, files)


def size_text(size: Any) -> str:
    """A byte count as people read it: 812 B, 12.3 KiB, 4.0 MiB."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "? B"
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024**2:.1f} MiB"


def _text(value: Any, limit: int = 300) -> str:
    """An untrusted field of an attachment as text (anything not a string: its repr)."""
    return (value if isinstance(value, str) else repr(value))[:limit]


def provenance_parts(provenance: Any) -> list[str]:
    """Where an attachment came from, as short phrases (the code is shown apart)."""
    if not isinstance(provenance, dict):
        return []
    parts = []
    if provenance.get("notebook"):
        parts.append(f"from {_text(provenance['notebook'])}")
    count = provenance.get("execution_count")
    if isinstance(count, int) and not isinstance(count, bool):
        parts.append(f"cell [{count}]")
    versions = provenance.get("versions")
    if isinstance(versions, dict) and versions:
        parts.append(", ".join(f"{_text(k, 60)} {_text(v, 60)}" for k, v in versions.items()))
    return parts


def provenance_code(provenance: Any) -> str:
    """The code of the cell that shared an attachment ("" if none is known)."""
    code = provenance.get("code") if isinstance(provenance, dict) else None
    return code if isinstance(code, str) else ""


def _file_label(attachment: dict[str, Any], limit: int = 300) -> str:
    """An attachment's name as shown ("attachment" if it has none)."""
    name = attachment.get("name")
    return name[:limit] if isinstance(name, str) and name else "attachment"


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(attachment: dict[str, Any], data: bytes) -> str:
    """The name an attachment's file gets beside a Markdown export: ``<sha>-<name>``.

    Made of letters, digits, ``.``, ``_`` and ``-`` only (no separator, no leading
    dot: a hostile name cannot leave the directory nor hide), prefixed with the first
    12 hex digits of the SHA-256 of ``data``, so that the same bytes get one file.
    """
    safe = _UNSAFE_IN_NAME.sub("_", _file_label(attachment, 1000)).strip("._")
    if len(safe) > 80:
        stem, dot, suffix = safe.rpartition(".")
        safe = f"{stem[: 79 - len(suffix)]}.{suffix}" if dot and len(suffix) <= 10 else safe[:80]
    return f"{hashlib.sha256(data).hexdigest()[:12]}-{safe or 'attachment'}"


def write_files(
    directory: Path, messages: list[dict[str, Any]], files: Attachments
) -> dict[int, Included]:
    """Write the fetched attachments into ``directory`` (made if need be), once per content.

    Returns ``files`` with each written one's ``link``: ``<directory's name>/<file>``,
    for a Markdown file written in ``directory``'s parent.
    """
    linked = dict(files)
    names: dict[bytes, str] = {}
    for message in messages:
        attachment = attached(message)
        included = files.get(message["seq"])
        if attachment is None or included is None or included.data is None:
            continue
        digest = hashlib.sha256(included.data).digest()
        if digest not in names:
            names[digest] = file_name(attachment, included.data)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / names[digest]).write_bytes(included.data)
        link = f"{quote(directory.name)}/{names[digest]}"
        linked[message["seq"]] = replace(included, link=link)
    return linked


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


def _fence(code: str) -> str:
    """A code fence longer than any run of backticks in ``code``."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _md_attachment(attachment: dict[str, Any], included: Included | None) -> list[str]:
    """The lines that show an attachment in Markdown: a link (an image), its details, code."""
    name = _md_text(_file_label(attachment))
    mime = _text(attachment.get("mime"))
    if included is not None and included.unavailable is not None:
        shown = f"📎 {name}: unavailable ({_md_text(included.unavailable)})"
    else:
        target = included.link if included is not None and included.link else None
        target = target or quote(_text(attachment.get("url"), 4000), safe=":/?#@!$&'*+,;=%~")
        image = mime in p.IMAGE_SIGNATURES and (
            included is None or included.data is None or p.is_image(included.data, mime)
        )
        shown = f"{'!' if image else '📎 '}[{name}]({target})"
    details = [name, _md_text(mime), size_text(attachment.get("size"))]
    details += [_md_text(part) for part in provenance_parts(attachment.get("provenance"))]
    lines = [shown, "", "*" + " · ".join(details) + "*"]
    code = provenance_code(attachment.get("provenance"))
    if code:
        fence = _fence(code)
        lines += ["", f"{fence}python", code.rstrip("\n"), fence]
    return lines


def markdown(
    room: str,
    messages: list[dict[str, Any]],
    access: dict[str, Any] | None,
    exported: float,
    files: Attachments,
) -> str:
    """The conversation as Markdown: a heading per message, bodies as their source.

    An attachment is a link (an image for a PNG, JPEG, GIF or WebP) to its file as
    ``files`` has it, else to the server's copy; then its size and provenance.
    """
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
        attachment = attached(message)
        if message.get("deleted"):
            lines.append("*(deleted)*")
        elif message["body"] or attachment is None:
            lines.append(message["body"])
        if attachment is not None:
            if message["body"]:  # a caption, then the attachment
                lines.append("")
            lines += _md_attachment(attachment, files.get(message["seq"]))
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
.attachment { margin: .4rem 0; }
.attachment img { max-width: 100%; height: auto; border: 1px solid #d1d9e0; }
.attachment figcaption, .attachment .unavailable { color: #59636e; font-size: .9em; }
.attachment pre { background: #f6f8fa; padding: .4rem; overflow-x: auto; }
@media (prefers-color-scheme: dark) {
  body { color: #f0f6fc; background: #0d1117; }
  article header .author { color: #f0f6fc; }
  .mention { background: #5a4a00; }
  a { color: #4493f8; }
  .attachment pre { background: #161b22; }
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


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_attachment(attachment: dict[str, Any], included: Included | None) -> str:
    """An attachment in the page: an embedded image, or a download; its size and provenance.

    Only bytes that are the raster image they claim are shown; anything else (SVG and
    HTML included) is a download of ``application/octet-stream``, which no browser
    renders.
    """
    name = _file_label(attachment)
    mime = _text(attachment.get("mime"))
    caption = [name, mime, size_text(attachment.get("size"))]
    caption += provenance_parts(attachment.get("provenance"))
    out = ['<figure class="attachment">']
    if included is None or included.data is None:
        why = "not fetched" if included is None else included.unavailable or "not fetched"
        out.append(f'<p class="unavailable">📎 {_esc(name)}: unavailable ({_esc(why)})</p>')
    elif p.is_image(included.data, mime):
        out.append(f'<img src="{_esc(_data_url(mime, included.data))}" alt="{_esc(name)}">')
    else:
        href = _data_url("application/octet-stream", included.data)
        out.append(f'<p>📎 <a download="{_esc(name)}" href="{_esc(href)}">{_esc(name)}</a></p>')
    out.append(f"<figcaption>{_esc(' · '.join(caption))}</figcaption>")
    code = provenance_code(attachment.get("provenance"))
    if code:
        summary = "<summary>the code that shared it</summary>"
        out.append(f"<details>{summary}<pre>{_esc(code)}</pre></details>")
    out.append("</figure>")
    return "\n".join(out)


def to_html(
    room: str,
    messages: list[dict[str, Any]],
    access: dict[str, Any] | None,
    exported: float,
    files: Attachments,
) -> str:
    """The conversation as one self-contained HTML page (no script, nothing fetched).

    Attachments are in the page (see :func:`_html_attachment`): it needs no server.
    """
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Defence in depth: whatever a body holds, this page runs and fetches nothing.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
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
        attachment = attached(message)
        if message.get("deleted"):
            out.append('<div class="body deleted">(deleted)</div>')
        elif message["body"] or attachment is None:
            out.append(f'<div class="body">{_html_body(message)}</div>')
        if attachment is not None:
            out.append(_html_attachment(attachment, files.get(seq)))
        notes = _parts(message)
        if notes:
            out.append(f'<p class="notes">{_esc(" · ".join(notes))}</p>')
        out.append("</article>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _json_message(message: dict[str, Any], included: Included | None) -> dict[str, Any]:
    """``message`` with its attachment's bytes in base64 (``data``), or why they are not."""
    attachment = attached(message)
    if attachment is None:
        return message
    if included is None or included.data is None:
        why = "not fetched" if included is None else included.unavailable or "not fetched"
        return {**message, "attachment": {**attachment, "unavailable": why}}
    data = base64.b64encode(included.data).decode("ascii")
    return {**message, "attachment": {**attachment, "data": data}}


def to_json(
    room: str,
    messages: list[dict[str, Any]],
    access: dict[str, Any] | None,
    exported: float,
    files: Attachments,
) -> str:
    """The conversation as JSON: what :func:`load` reads back and an import restores.

    Each attachment carries its bytes in base64 (``data``), or ``unavailable``, why not.
    """
    messages = [_json_message(message, files.get(message["seq"])) for message in messages]
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
    """A JSON export (its text, or already parsed), checked: room, access and messages.

    The messages come without their attachments, which are apart in ``attachments``
    (the exported dicts, by the message's ``(username, id)``; see :func:`attachment_bytes`).
    """
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
    given = [
        {k: v for k, v in m.items() if k != "attachment"} if isinstance(m, dict) else m
        for m in data["messages"]
    ]
    try:
        messages = msgspec.convert(given, list[p.ImportedMessage])
    except msgspec.ValidationError as exc:
        raise ExportError(f"a message of the export is invalid: {exc}") from None
    files = {
        (message.user.username, message.id): m["attachment"]
        for message, m in zip(messages, data["messages"], strict=True)
        if isinstance(m.get("attachment"), dict) and not message.deleted
    }
    access = data.get("access")
    if access is not None and not isinstance(access, dict):
        raise ExportError('"access" must be null or an object')
    return {"room": data["room"], "access": access, "messages": messages, "attachments": files}


def attachment_bytes(attachment: dict[str, Any]) -> bytes:
    """The bytes a JSON export holds for an attachment, checked; else ExportError says why."""
    data = attachment.get("data")
    if not isinstance(data, str):
        why = attachment.get("unavailable")
        raise ExportError(
            f"the export has no data for it ({_text(why)})"
            if why
            else "the export has no data for it (made before exports included attachments)"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ExportError("its data is not base64") from None
    digest = attachment.get("sha256")
    if isinstance(digest, str) and hashlib.sha256(raw).hexdigest() != digest.lower():
        raise ExportError("its data does not match its SHA-256")
    return raw


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
    most_attached: int = 10,
) -> list[p.Import]:
    """``import`` frames for ``messages`` (numbered 1..n), each about ``budget`` bytes at most.

    And each with at most ``most_attached`` attachments, whose uploads wait for it (a
    server keeps few uploads waiting per user). ``new_id()`` gives each frame its id;
    the first carries ``access``.
    """
    parts: list[p.Import] = []
    current: list[p.ImportedMessage] = []
    size = attached_count = 0
    for message in messages:
        length = len(msgspec.json.encode(message))
        full = attached_count >= most_attached and message.attachment is not None
        if current and (size + length > budget or full):
            parts.append(p.Import(room=room, id=new_id(), messages=current, after=0))
            current, size, attached_count = [], 0, 0
        current.append(message)
        size += length
        attached_count += message.attachment is not None
    if current:
        parts.append(p.Import(room=room, id=new_id(), messages=current, after=0))
    for part in parts:
        part.after = part.messages[0].seq - 1
    if parts:
        parts[0].access = access
    return parts
