"""The ``jupyter-chat-ext`` command: send to, tail, export and import rooms from a terminal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import export
from .client import ChatClient, ChatError


def format_message(message: dict[str, Any]) -> str:
    """One line for a message: ``[HH:MM:SS] Display Name: body``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(message["ts"]))
    user = message["user"]
    name = user.get("display_name") or user.get("name") or user["username"]
    body = message["body"].replace("\n", "\n    ")
    return f"[{stamp}] {name}: {body}"


def _connect(args: argparse.Namespace) -> ChatClient:
    # One person, one identity: every command of yours speaks as the same user.
    return ChatClient(url=args.url, token=args.token, timeout=args.timeout, remember_identity=True)


def cmd_send(args: argparse.Namespace) -> int:
    """Post one message (``-``: read it from stdin) and print it as the server stamped it."""
    text = args.text
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
        if not text.strip():
            print(
                "jupyter-chat-ext send: the message on stdin is empty; pipe one in "
                "(echo hello | jupyter-chat-ext send ROOM -) or give it as an argument",
                file=sys.stderr,
            )
            return 2
    with _connect(args) as client:
        message = client.join(args.room).send(text)
        print(format_message(message), flush=True)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the last messages of a room, then every new one until interrupted."""
    with _connect(args) as client:
        room = client.join(args.room)
        for message in room.history[-args.lines :] if args.lines else []:
            print(format_message(message), flush=True)
        room.on_message(lambda m: print(format_message(m), flush=True))
        client.on_state(lambda state: _say_state(client, state))
        try:
            threading.Event().wait()
        except KeyboardInterrupt:  # the way to stop: disconnect, and exit 0
            print("jupyter-chat-ext: disconnecting (Ctrl-C again quits at once)", file=sys.stderr)
            _exit_on_next_interrupt()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a room's whole conversation as Markdown, JSON or HTML (stdout, or ``-o FILE``).

    ``-o FILE.md`` writes the attachments into ``FILE_attachments/`` beside it; HTML
    and JSON hold them; Markdown on stdout links the server's copies.
    """
    name = args.format
    if name is None:  # from the file's extension, else Markdown
        suffix = args.output.rsplit(".", 1)[-1] if args.output and "." in args.output else ""
        name = suffix if suffix.lower() in export.FORMATS else "markdown"
    try:
        fmt = export.format_of(name)
    except ValueError as exc:
        print(f"jupyter-chat-ext export: {exc}", file=sys.stderr)
        return 2
    to_file = args.output not in (None, "-")
    # A Markdown file's attachments go beside it, in FILE_attachments/ (FILE without .md).
    beside = Path(args.output).with_suffix("") if to_file and fmt == "markdown" else None
    attachments_dir = beside.with_name(f"{beside.name}_attachments") if beside else None
    with _connect(args) as client:
        text = client.join(args.room).export(fmt, attachments_dir=attachments_dir)
    if not to_file:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"jupyter-chat-ext: wrote {args.room!r} to {args.output}", file=sys.stderr)
        if attachments_dir is not None and attachments_dir.is_dir():
            print(f"jupyter-chat-ext: its attachments are in {attachments_dir}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Restore a JSON export into a room with no history (moderators only)."""
    try:
        with open(args.file, encoding="utf-8") as source:
            data = source.read()
    except OSError as exc:
        print(f"jupyter-chat-ext import: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    with _connect(args) as client:
        done = client.import_room(data, room=args.room)
    print(f"jupyter-chat-ext: imported {done['messages']} messages into {done['room']!r}")
    for missing in done["missing_attachments"]:
        print(
            f"jupyter-chat-ext import: warning: message {missing['seq']}'s attachment "
            f"{missing['name']!r} was left out: {missing['reason']}",
            file=sys.stderr,
        )
    return 0


def _say_state(client: ChatClient, state: str) -> None:
    if state == "reconnecting":
        print(
            f"jupyter-chat-ext: connection lost; reconnecting to {client.url}...", file=sys.stderr
        )
    else:  # the messages missed meanwhile follow on stdout
        print(f"jupyter-chat-ext: reconnected to {client.url}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="jupyter-chat-ext", description="Chat through a Jupyter server from a terminal."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, description=help)
        command.add_argument("--url", help="server base URL (default: discovered)")
        command.add_argument("--token", help="server token (default: discovered)")
        command.add_argument(
            "--timeout", type=float, default=10.0, help="seconds to wait for the server"
        )
        return command

    send = client_command("send", "post a message to a room")
    send.add_argument("room")
    send.add_argument("text", help="the message; - reads it from stdin")
    send.set_defaults(func=cmd_send)

    tail = client_command("tail", "print a room's messages as they arrive (Ctrl-C stops)")
    tail.add_argument("room")
    tail.add_argument(
        "-n", "--lines", type=int, default=10, help="recent messages to show first (default 10)"
    )
    tail.set_defaults(func=cmd_tail)

    exporting = client_command(
        "export", "write a room's whole conversation as Markdown, JSON or HTML"
    )
    exporting.add_argument("room")
    exporting.add_argument(
        "-f",
        "--format",
        choices=sorted(export.FORMATS),
        help="md (the default), json (imports back) or html; default: from -o's extension",
    )
    exporting.add_argument(
        "-o",
        "--output",
        help="the file to write (default: stdout); a Markdown file's attachments go in "
        "FILE_attachments/ beside it",
    )
    exporting.set_defaults(func=cmd_export)

    importing = client_command(
        "import", "restore a JSON export into a room with no history (moderators only)"
    )
    importing.add_argument("file", help="a JSON export (jupyter-chat-ext export ROOM -f json)")
    importing.add_argument("--room", help="the room to restore into (default: the exported one)")
    importing.set_defaults(func=cmd_import)

    sub.add_parser(
        "hub-service",
        help="run the chat as a JupyterHub service (see docs/deployment.md; --help-all)",
        add_help=False,
    )
    return parser


def hub_service(argv: Sequence[str]) -> int:
    """Run ``jupyter-chat-ext hub-service`` (a traitlets application with its own options)."""
    from traitlets import TraitError

    try:
        from .hub import HubChatService
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "jupyterhub":
            raise
        print(
            "jupyter-chat-ext hub-service needs the hub extra: pip install 'jupyter_chat_ext[hub]'",
            file=sys.stderr,
        )
        return 2
    try:
        HubChatService.launch_instance(list(argv))
    except TraitError as exc:  # a bad option: say which, without a traceback
        print(f"jupyter-chat-ext hub-service: {exc}", file=sys.stderr)
        return 2
    return 0


def _exit_on_next_interrupt() -> None:
    """After a first Ctrl-C, a second one exits at once, whatever is being cleaned up."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jupyter-chat-ext``; Ctrl-C at any point exits 130 quietly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["hub-service"]:
            return hub_service(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ChatError as exc:
        print(f"jupyter-chat-ext: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while connecting or sending: stop, no traceback
        _exit_on_next_interrupt()
        return 130


if __name__ == "__main__":
    sys.exit(main())
