"""The ``jupyter-chat-ext`` command: send to and tail rooms from a terminal."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .client import ChatClient, ChatError


def format_message(message: dict[str, Any]) -> str:
    """One line for a message: ``[HH:MM:SS] Display Name: body``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(message["ts"]))
    user = message["user"]
    name = user.get("display_name") or user.get("name") or user["username"]
    body = message["body"].replace("\n", "\n    ")
    return f"[{stamp}] {name}: {body}"


def _connect(args: argparse.Namespace) -> ChatClient:
    return ChatClient(url=args.url, token=args.token, timeout=args.timeout)


def cmd_send(args: argparse.Namespace) -> int:
    """Post one message and print it as the server stamped it."""
    with _connect(args) as client:
        message = client.join(args.room).send(args.text)
        print(format_message(message), flush=True)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the last messages of a room, then every new one until interrupted."""
    with _connect(args) as client:
        room = client.join(args.room)
        for message in room.history[-args.lines :] if args.lines else []:
            print(format_message(message), flush=True)
        room.on_message(lambda m: print(format_message(m), flush=True))
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


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
    send.add_argument("text")
    send.set_defaults(func=cmd_send)

    tail = client_command("tail", "print a room's messages as they arrive (Ctrl-C stops)")
    tail.add_argument("room")
    tail.add_argument(
        "-n", "--lines", type=int, default=10, help="recent messages to show first (default 10)"
    )
    tail.set_defaults(func=cmd_tail)

    sub.add_parser(
        "hub-service",
        help="run the chat as a JupyterHub service (see docs/deployment.md; --help-all)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jupyter-chat-ext``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hub-service"]:  # a traitlets application with its own options
        from traitlets import TraitError

        from .hub import HubChatService

        try:
            HubChatService.launch_instance(argv[1:])
        except TraitError as exc:  # a bad option: say which, without a traceback
            print(f"jupyter-chat-ext hub-service: {exc}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ChatError as exc:
        print(f"jupyter-chat-ext: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
