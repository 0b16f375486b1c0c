"""Test helpers: a Jupyter server in a subprocess, a cuttable TCP proxy, a raw WS client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPResponse as TornadoResponse
from tornado.httputil import HTTPHeaders
from tornado.websocket import WebSocketClientConnection

from jupyter_chat_ext.session import Session

# `python -m MODULE ARGS...`, except that jsonschema's "iri" format checks build their
# parser (rfc3987_syntax's, a Lark grammar: seconds of CPU) on first use, not on import.
# jupyter_server, JupyterHub and single-user servers import jsonschema (jupyter_events)
# and never check an "iri" here: each of the suite's many server starts saves that time.
LAZY_IRI_FORMAT = """
import importlib, runpy, sys, types

def is_valid_syntax(term, value):
    sys.modules.pop("rfc3987_syntax", None)
    return importlib.import_module("rfc3987_syntax").is_valid_syntax(term, value)

lazy = types.ModuleType("rfc3987_syntax")
lazy.is_valid_syntax = is_valid_syntax
sys.modules["rfc3987_syntax"] = lazy
del sys.argv[0]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


# Debian's chromium, never a downloaded browser; the flags every browser test uses.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def python_module(module: str) -> list[str]:
    """The command line that runs ``python -m module`` (see LAZY_IRI_FORMAT)."""
    return [sys.executable, "-c", LAZY_IRI_FORMAT, module]


@contextlib.contextmanager
def install_lock(what: str) -> Iterator[None]:
    """Hold a machine-wide lock while installing ``what``.

    pytest-xdist runs test files in several processes: two of them must not run
    apt-get, npm install or npm ci on the same thing at once.
    """
    key = hashlib.sha256(what.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"jupyter-chat-ext-install-{key}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JupyterServer:
    """A real ``jupyter server`` process with the extension, on a free loopback port."""

    def __init__(
        self,
        home: Path,
        *,
        token: str = "test-token",
        base_url: str = "/",
        args: tuple = (),
        environ: dict[str, str] | None = None,
    ) -> None:
        """A server in ``home``; its environment is ``environ`` (default: this process's)."""
        self.home = home
        self.token = token
        self.base_url = base_url
        self.args = args
        self.environ = environ
        self.port = free_port()
        self.db_path = home / "chat.sqlite"
        self.runtime_dir = home / "runtime"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ if self.environ is None else self.environ)
        env.update(
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            IPYTHONDIR=str(self.home / "ipython"),
        )
        for name in ("JUPYTER_CHAT_EXT_URL", "JUPYTER_CHAT_EXT_TOKEN", "JPY_PARENT_PID"):
            env.pop(name, None)
        return env

    def start(self, timeout: float = 60) -> JupyterServer:
        return self.launch().wait_started(timeout)

    def launch(self) -> JupyterServer:
        """Start the process; ``wait_started`` waits until it answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        # No "get notified about Jupyter news?" pop-up over the pages under test.
        settings = self.home / "config" / "lab" / "user-settings" / "@jupyterlab"
        news = settings / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text('{"fetchNews": "false"}')
        cmd = [
            *python_module("jupyter_server"),
            "--allow-root",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.base_url={self.base_url}",
            f"--ServerApp.root_dir={self.home}",
            f"--ChatExtensionApp.db_path={self.db_path}",
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        log.close()
        return self

    def wait_started(self, timeout: float = 60) -> JupyterServer:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.api("GET", "api/status")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)  # polling a process we do not control: no event to await

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return json.loads(text) if text else None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, same_port: bool = False) -> JupyterServer:
        self.stop()
        if not same_port:
            self.port = free_port()
        return self.start()


class RedisServer:
    """A ``redis-server`` process on a free loopback port that can be stopped and restarted.

    History survives a restart: append-only file (``appendfsync always`` by default).
    """

    def __init__(self, binary: str, directory: Path, fsync: str = "always") -> None:
        self.fsync = fsync
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", self.fsync, "--dir", str(self.directory)]
        self.proc = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the server says when it accepts connections
            if b"Ready to accept connections" in line:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return self
        raise RuntimeError(f"redis-server exited with {self.proc.wait()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class TcpProxy:
    """A loopback TCP proxy whose connections can all be cut at once.

    Given several target ports it is a fail-over load balancer: each connection goes
    to the first target that accepts it (as a Kubernetes Service would skip a dead pod).
    """

    def __init__(self, *target_ports: int) -> None:
        self.target_ports = target_ports
        self.port = 0
        self.connections = 0
        self.refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        for port in self.target_ports:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, new connections are dropped at once (the server is "down")."""
        self.refusing = refusing

    def cut(self) -> int:
        """Close every open connection through the proxy; returns how many were cut."""

        async def cut() -> int:
            writers = list(self._writers)
            for writer in writers:
                writer.transport.abort()
            return len(writers) // 2

        return int(self._call(cut()))

    def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class RawClient:
    """A raw protocol client over a WebSocket, for tests that speak frames directly."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.hello: dict[str, Any] = {}

    async def start(self, allow_refusal: bool = False) -> RawClient:
        """Read the first frame: ``hello`` (or, if allowed, the error that refuses us)."""
        self.hello = await self.recv()
        assert self.hello["op"] == "hello" or allow_refusal, self.hello
        return self

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        await self.conn.write_message(frame, binary=isinstance(frame, bytes))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        """The next text frame (binary ones are skipped: read ``conn`` for those)."""
        while True:
            message = await asyncio.wait_for(self.conn.read_message(), timeout)
            assert message is not None, "connection closed"
            if isinstance(message, str):
                return json.loads(message)  # type: ignore[no-any-return]

    async def expect(self, op: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        """Read frames until one with ``op`` (and the ``match`` fields) arrives."""

        skipped: list[dict[str, Any]] = []

        async def find() -> dict[str, Any]:
            while True:
                frame = await self.recv(timeout)
                if frame["op"] == op and all(frame.get(k) == v for k, v in match.items()):
                    return frame
                skipped.append(frame)

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            errors = [f for f in skipped if f["op"] == "error"][-3:]
            message = f"no {op!r} frame {match} in {timeout} s; errors: {errors}"
            raise AssertionError(message) from None

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        await self.send({"op": "join", "room": room, "id": f"join-{room}", **extra})
        return await self.expect("joined", room=room)

    def close(self) -> None:
        self.conn.close()


def login_cookie(
    source: RawClient | WebSocketClientConnection | TornadoResponse | HTTPResponse,
) -> str:
    """The cookies the server set on a connection or a response, as a ``Cookie`` header.

    Sent back on a new connection or request, it is the same person again.
    """
    headers = (source.conn if isinstance(source, RawClient) else source).headers
    if isinstance(headers, HTTPHeaders):  # tornado's
        set_cookies = headers.get_list("Set-Cookie")
    else:  # urllib's
        set_cookies = headers.get_all("Set-Cookie") or []
    return "; ".join(c.split(";", 1)[0] for c in set_cookies)


class StuckClient:
    """A raw WebSocket client that does the handshake, joins, then stops reading.

    Its socket's receive buffer is made small, so that what the server sends piles
    up on the server's side: a slow reader, or (it never answers pings) a dead peer.
    """

    def __init__(self, server: JupyterServer, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {server.base_url}chat-ext/ws HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: token {server.token}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self.sock.recv(4096)
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        opcode, hello = self.read_frame()
        assert opcode == 1
        self.user = json.loads(hello)["user"]

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def join(self, room: str) -> None:
        self.send_text(json.dumps({"op": "join", "room": room, "id": "stuck"}))
        while True:
            opcode, payload = self.read_frame()
            if opcode == 1 and json.loads(payload)["op"] == "joined":
                return

    def close_code(self) -> int | None:
        """Read everything left; return the server's close code (None if it never closed)."""
        while True:
            try:
                opcode, payload = self.read_frame()
            except (ConnectionError, OSError):
                return None
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None

    def close(self) -> None:
        self.sock.close()


def delegate(server: JupyterServer, cookie: str = "") -> tuple[dict[str, Any], str]:
    """Ask ``server`` for a delegation, as the Chat widget does: its answer and the login cookie.

    Without ``cookie`` the (token-authenticated) request is a new anonymous person; pass
    the cookie back to get another delegation for the same person.
    """
    headers = {"Authorization": f"token {server.token}"}
    if cookie:
        headers["Cookie"] = cookie
    request = urllib.request.Request(
        f"{server.url}chat-ext/delegation", data=b"", method="POST", headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()), cookie or login_cookie(response)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class KernelSession:
    """A real kernel started through the server's REST API, to run code in."""

    def __init__(self, server: JupyterServer) -> None:
        self.server = server
        self.id = server.api("POST", "api/kernels", {"name": "python3"})["id"]
        self.client = self.connect()

    def connect(self) -> Any:
        """A new frontend connection to this kernel (its own session id, like a tab)."""
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient()
        client.load_connection_file(str(self.server.runtime_dir / f"kernel-{self.id}.json"))
        # A kernel still starting on a busy machine answers its first heartbeat late:
        # past time_to_dead (1 s) jupyter_client takes it for dead in wait_for_ready.
        client.hb_channel.time_to_dead = 10.0
        client.start_channels()
        client.wait_for_ready(timeout=60)
        return client

    def run(self, code: str, client: Any = None) -> str:
        """Execute ``code`` (through ``client``, else our own); return what it printed.

        Fails with the kernel's traceback on error.
        """
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = (client or self.client).execute_interactive(code, timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.stop_channels()
        self.server.api("DELETE", f"api/kernels/{self.id}")


class ManualTransport:
    """Records frames; each write stays 'unflushed' until flush() is called."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.pending = 0
        self.closed: tuple[int, str] | None = None
        self.session: Session | None = None

    def send(self, frame: bytes, binary: bool = False) -> bool:
        if self.closed:
            return False
        self.frames.append(json.loads(frame))
        self.pending += len(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def flush(self) -> None:
        pending, self.pending = self.pending, 0
        assert self.session is not None
        self.session.flushed(pending)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


class Collector:
    """Collects callback events (with when each came) and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self._cond = threading.Condition()

    def __call__(self, item: dict[str, Any]) -> None:
        with self._cond:
            self.arrivals.append(time.time())
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """Wait until ``count`` events came; return them all."""
        return self.wait_until(lambda items: len(items) >= count, timeout)

    def wait_until(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20
    ) -> list[dict[str, Any]]:
        """Wait until ``predicate(events)`` holds; return the events."""
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), timeout), len(self.items)
            return list(self.items)


def run_in_kernel(server: JupyterServer, code: str) -> str:
    """Run ``code`` in a new kernel of ``server``; return what it printed."""
    with KernelSession(server) as kernel:
        return kernel.run(code)


def converse(room: Any, seed: int, steps: int) -> int:
    """Reply, react, unreact, edit and delete at random in ``room``; returns the ops done.

    Refusals that racing another person's deletion causes are expected and skipped.
    """
    from jupyter_chat_ext import ChatError

    rng = random.Random(seed)
    mine: list[int] = []
    done = 0
    for step in range(steps):
        # Targets among the messages not deleted (as far as this client knows): the
        # refusals left are the races with another person's deletion.
        held = [m["seq"] for m in room.messages if not m["deleted"]]
        choice = rng.random()
        try:
            if choice < 0.35 or not held:
                parent = rng.choice(held) if held and rng.random() < 0.4 else None
                mine.append(room.send(f"p{seed}-{step}", reply_to=parent, timeout=60)["seq"])
            elif choice < 0.6:
                room.react(rng.choice(held), rng.choice("👍🎉👀"), timeout=60)
            elif choice < 0.75:
                room.unreact(rng.choice(held), rng.choice("👍🎉👀"), timeout=60)
            elif choice < 0.9 and mine:
                room.edit(rng.choice(mine), f"edit {seed}-{step}", timeout=60)
            elif mine:
                room.delete(mine.pop(rng.randrange(len(mine))), timeout=60)
            done += 1
        except ChatError as exc:
            assert exc.code in ("message_deleted", "not_found"), exc
    return done


def png(width: int = 2, height: int = 1, seed: int = 0) -> bytes:
    """A small valid PNG (distinct bytes for each ``seed``)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    rows = b"".join(b"\x00" + bytes([seed % 256, 0, 0]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
