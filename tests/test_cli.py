"""The ``jupyter-chat-ext`` command, run as a subprocess against real Jupyter servers."""

from __future__ import annotations

import fcntl
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer


def cli(server: JupyterServer, *args: str, discover: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "jupyter_chat_ext", *args]
    if not discover:
        cmd += ["--url", server.url, "--token", server.token]
    return cmd


def test_cli_send_and_tail(server: JupyterServer) -> None:
    client = ChatClient(url=server.url, token=server.token)
    room = client.join("cli")
    room.send("earlier")
    tail = subprocess.Popen(
        cli(server, "tail", "cli"), stdout=subprocess.PIPE, text=True, env=server.env
    )
    try:
        assert tail.stdout is not None
        assert tail.stdout.readline().rstrip().endswith(": earlier")
        sent = subprocess.run(
            cli(server, "send", "cli", "hello from the shell", discover=True),
            capture_output=True,
            text=True,
            env=server.env,  # its JUPYTER_RUNTIME_DIR holds the server's runtime file
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.rstrip().endswith(": hello from the shell")
        assert tail.stdout.readline().rstrip().endswith(": hello from the shell")
        assert [m["body"] for m in room.messages][-1] == "hello from the shell"
    finally:
        tail.terminate()
        tail.wait(10)
        client.close()


def test_cli_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    for name in ("JUPYTER_CHAT_EXT_URL", "JPY_PARENT_PID"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_chat_ext", "send", "r", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no Jupyter server found" in result.stderr and "Traceback" not in result.stderr


class Lines:
    """The lines a subprocess writes to one of its pipes, waited for one by one."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put("")  # end of the stream

    def expect(self, text: str, timeout: float = 60) -> str:
        """Return the next line that contains ``text``; fail at the end of the stream."""
        while True:
            line = self._queue.get(timeout=timeout)
            self.seen.append(line)
            assert line, f"the stream ended before {text!r}: {self.seen}"
            if text in line:
                return line

    def rest(self, timeout: float = 30) -> str:
        """Everything up to the end of the stream (the process has exited)."""
        while (line := self._queue.get(timeout=timeout)) != "":
            self.seen.append(line)
        return "".join(self.seen)


def test_send_reads_the_message_from_stdin(server: JupyterServer, tmp_path: Path) -> None:
    sent = subprocess.run(
        cli(server, "send", "piped", "-"),
        input="first line\nsecond line\n",
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    with ChatClient(url=server.url, token=server.token) as client:
        assert [m["body"] for m in client.join("piped").history] == ["first line\nsecond line"]
    # Nothing on stdin: said at once, before looking for a server.
    empty = subprocess.run(
        [sys.executable, "-m", "jupyter_chat_ext", "send", "piped", "-"],
        input="\n",
        capture_output=True,
        text=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)},
        timeout=60,
    )
    assert empty.returncode == 2
    assert "stdin is empty" in empty.stderr and "Traceback" not in empty.stderr


def test_tail_says_when_it_reconnects(server: JupyterServer) -> None:
    with ChatClient(url=server.url, token=server.token) as client:
        client.join("watched").send("before")
    tail = subprocess.Popen(
        cli(server, "tail", "watched"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env,
    )
    out, err = Lines(tail.stdout), Lines(tail.stderr)
    try:
        out.expect(": before")
        server.stop()
        assert f"reconnecting to {server.url}" in err.expect("connection lost")
        server.start()  # the same port, the same history
        assert server.url in err.expect("reconnected")
        with ChatClient(url=server.url, token=server.token) as client:
            client.join("watched").send("after")
        out.expect(": after")
    finally:
        tail.terminate()
        tail.wait(10)
    assert "Traceback" not in err.rest()


def test_ctrl_c_stops_without_a_traceback(server: JupyterServer) -> None:
    # A tail whose reader stopped reading (a paused pager): Ctrl-C starts disconnecting,
    # which waits for the client's thread, stuck writing; a second Ctrl-C quits at once.
    tail = subprocess.Popen(
        cli(server, "tail", "r"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env,
    )
    assert tail.stdout is not None
    err = Lines(tail.stderr)
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("r")
        room.send("tailing")
        assert tail.stdout.readline().endswith(": tailing\n")  # joined and waiting
        fcntl.fcntl(tail.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        room.send("x" * 15_000)  # one write that cannot fit: it blocks until read
        assert select.select([tail.stdout], [], [], 30)[0]  # the write has begun
    tail.send_signal(signal.SIGINT)
    err.expect("Ctrl-C again quits at once")
    tail.send_signal(signal.SIGINT)
    assert tail.wait(30) == 130
    assert "Traceback" not in err.rest()

    # Once while still connecting (to a server that accepts and never answers).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"http://127.0.0.1:{port}/"
        connecting = subprocess.Popen(
            [sys.executable, "-m", "jupyter_chat_ext", "tail", "r", "--url", url, "--token", "t"],
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = silent.accept()  # the client is inside ChatClient(), waiting
        with conn:
            connecting.send_signal(signal.SIGINT)
            assert connecting.wait(30) == 130
    assert connecting.stderr is not None
    assert "Traceback" not in connecting.stderr.read()


HIDE_JUPYTERHUB = """
import sys
sys.modules["jupyterhub"] = None  # as if the hub extra were not installed
from jupyter_chat_ext.cli import main
sys.exit(main(["hub-service"]))
"""


def test_hub_service_without_the_hub_extra_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_JUPYTERHUB], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "pip install 'jupyter_chat_ext[hub]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_stdin_form() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_chat_ext", "send", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "- reads it from stdin" in result.stdout


def test_one_person_one_identity_across_cli_calls(server: JupyterServer) -> None:
    with ChatClient(url=server.url, token=server.token) as reader:
        room = reader.join("me")
        for text in ("first", "second"):
            sent = subprocess.run(
                cli(server, "send", "me", text),
                capture_output=True,
                text=True,
                env=server.env,  # its JUPYTER_DATA_DIR keeps the remembered identity
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
        authors = {m["user"]["username"] for m in room.history + room.messages}
        assert len(authors) == 1 and reader.user["username"] not in authors
