"""A connection that never completes its handshake is dropped after handshake_timeout.

Raw sockets against both hosts: a real ``jupyter server`` with the extension, and the
hub service run by a real JupyterHub (reached on its own port, not through the proxy,
whose own timeouts are not ours to test).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from jupyter_chat_ext import ChatClient

from conftest import require_module
from helpers import JupyterServer, free_port
from hubtools import CHAT, Hub

TIMEOUT = 1  # seconds: --*.handshake_timeout of both hosts here
PATIENCE = 20  # seconds a test waits for the server to hang up (tornado's own: 3600)


class TimeoutHub(Hub):
    """A Hub whose chat service listens on a known port, with handshake_timeout=1."""

    def __init__(self, home: object) -> None:
        super().__init__(home)  # type: ignore[arg-type]
        self.chat_port = free_port()

    def chat_service(self) -> str:
        return f"""{{
                "name": "chat",
                "url": "http://127.0.0.1:{self.chat_port}",
                "command": [
                    {sys.executable!r}, "-m", "jupyter_chat_ext", "hub-service",
                    "--db-path={self.home}/chat.sqlite",
                    "--HubChatService.handshake_timeout={TIMEOUT}",
                ],
                "oauth_no_confirm": True,
                }}"""


@dataclass
class Host:
    """Where a host's chat WebSocket is, and how to open a real client on it."""

    name: str
    port: int
    path: str
    client: Callable[[], ChatClient]


@pytest.fixture(scope="module", params=["server", "hub"])
def host(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Host]:
    if request.param == "server":
        server = JupyterServer(
            tmp_path_factory.mktemp("server"),
            args=(f"--ChatExtensionApp.handshake_timeout={TIMEOUT}",),
        ).start()
        yield Host(
            "server",
            server.port,
            f"{server.base_url}chat-ext/ws",
            lambda: ChatClient(url=server.url, token=server.token),
        )
        server.stop()
    else:
        require_module("jupyterhub", "pip install jupyterhub")
        hub = TimeoutHub(tmp_path_factory.mktemp("hub")).start()
        hub.api("POST", "hub/api/users", {"usernames": ["alice"]})
        yield Host(
            "hub",
            hub.chat_port,
            "/services/chat/chat-ext/ws",
            lambda: ChatClient(url=hub.service_url, token=hub.token("alice", CHAT)),
        )
        hub.stop()


def upgrade_request(host: Host) -> bytes:
    return (
        f"GET {host.path} HTTP/1.1\r\nHost: 127.0.0.1:{host.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    ).encode()


def hung_up(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Wait until the server closes ``sock``; meanwhile send ``trickle`` a byte at a time.

    Returns False if it is still open after PATIENCE seconds. The server answers
    nothing to a request it never finished reading.
    """
    deadline = time.monotonic() + PATIENCE
    sock.settimeout(0.2)  # the pace of the trickle; a hang-up ends the wait at once
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionError:
            return True
        if trickle:
            try:
                sock.sendall(trickle[:1])
            except ConnectionError:
                return True
            trickle = trickle[1:]
    return False


def test_slow_or_silent_handshakes_are_dropped_open_websockets_are_not(host: Host) -> None:
    states: list[str] = []
    with host.client() as client:  # a completed handshake, open before and after
        client.on_state(states.append)
        room = client.join("r")
        threads: list[threading.Thread] = []
        results: dict[str, bool] = {}

        def attempt(name: str, sent: bytes, trickle: bytes = b"") -> None:
            sock = socket.create_connection(("127.0.0.1", host.port))
            with sock:
                sock.sendall(sent)
                results[name] = hung_up(sock, trickle)

        request = upgrade_request(host)
        cases = {
            "silent": (b"",),
            "partial headers": (request[:40],),
            "headers never end": (request,),  # no blank line after the headers
            "headers trickled": (b"", request + b"X-Slow: " + b"x" * 200),
        }
        if host.name == "hub":  # jupyter_server keeps its own (no) body timeout
            body = request + b"Content-Length: 1000\r\n\r\n" + b"x" * 10
            cases["body never arrives"] = (body,)
        for name, args in cases.items():
            threads.append(threading.Thread(target=attempt, args=(name, *args)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == dict.fromkeys(cases, True), results
        # The chat connection made before lived through all that, with no reconnect.
        assert room.send("still here")["body"] == "still here"
        assert states == [] and client.connected
