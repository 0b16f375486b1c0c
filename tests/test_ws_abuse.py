"""Hostile WebSocket handshakes and connection churn against a real server.

Raw sockets, as an attacker holding a valid login would write them: handshakes the
peer abandons (an HTTP/1.0 upgrade, which the server's HTTP layer closes once it has
answered; a reset right after the request), cross-site handshakes with the login
cookie. None of them may cost the user (or anyone) a connection slot or the server
memory once the socket is gone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers import JupyterServer, RawClient


def handshake(server: JupyterServer, *headers: str, version: str = "HTTP/1.1") -> socket.socket:
    """A socket on which an upgrade request to the chat WebSocket was sent."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {server.base_url}chat-ext/ws {version}",
        f"Host: 127.0.0.1:{server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def response(sock: socket.socket) -> tuple[str, bytes]:
    """The response's head, and what followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode(), rest


def first_frame(sock: socket.socket, data: bytes) -> bytes:
    """The payload of the first (unmasked, short) server frame."""
    while True:
        if len(data) >= 2:
            length, start = data[1] & 0x7F, 2
            if length == 126 and len(data) >= 4:
                length, start = struct.unpack("!H", data[2:4])[0], 4
            if (length < 126 or start == 4) and len(data) >= start + length:
                return data[start : start + length]
        chunk = sock.recv(65536)
        assert chunk, "closed before the first frame"
        data += chunk


def cookie_of(head: str) -> str:
    """The response's cookies as a ``Cookie`` header value."""
    cookies = [
        line.split(":", 1)[1].strip().split(";", 1)[0]
        for line in head.split("\r\n")
        if line.lower().startswith("set-cookie:")
    ]
    return "; ".join(cookies)


def abandon_reset(server: JupyterServer, auth: str) -> None:
    """Send the upgrade request, then reset the connection at once."""
    sock = handshake(server, auth)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def abandon_http10(server: JupyterServer, auth: str) -> None:
    """An HTTP/1.0 upgrade: the server's HTTP layer closes the socket once it answered."""
    with handshake(server, auth, version="HTTP/1.0") as sock:
        while sock.recv(65536):
            pass


@pytest.mark.parametrize("abandon", [abandon_http10, abandon_reset], ids=["http10", "reset"])
def test_abandoned_handshakes_free_the_users_connection_slots(
    server: JupyterServer, abandon
) -> None:  # type: ignore[no-untyped-def]
    token = f"Authorization: token {server.token}"
    with handshake(server, token) as sock:
        head, rest = response(sock)
        person = f"Cookie: {cookie_of(head)}"
        me = json.loads(first_frame(sock, rest))["user"]["username"]
    limit = 20  # max_connections_per_user's default
    for _ in range(limit + 5):
        abandon(server, f"{token}\r\n{person}")
    with handshake(server, token, person) as sock:
        head, rest = response(sock)
        assert head.startswith("HTTP/1.1 101"), head
        hello = json.loads(first_frame(sock, rest))
    assert hello["op"] == "hello" and hello["user"]["username"] == me, hello


def test_cross_site_handshakes_with_the_login_cookie_are_refused(server: JupyterServer) -> None:
    token = f"Authorization: token {server.token}"
    with handshake(server, token) as sock:
        cookie = f"Cookie: {cookie_of(response(sock)[0])}"
    here = f"http://127.0.0.1:{server.port}"
    refused = [
        ("Origin: http://evil.example",),
        ("Origin: null",),
        (f"Origin: {here}@evil.example",),
        ("Sec-WebSocket-Origin: http://evil.example",),
    ]
    for origin in refused:
        with handshake(server, cookie, *origin) as sock:
            head = response(sock)[0]
        assert head.startswith("HTTP/1.1 403"), (origin, head)
    with handshake(server, cookie, f"Origin: {here}") as sock:
        assert response(sock)[0].startswith("HTTP/1.1 101")
    # A token is not sent by a browser on another site's behalf: exempt, as in jupyter_server.
    with handshake(server, token, "Origin: http://evil.example") as sock:
        assert response(sock)[0].startswith("HTTP/1.1 101")


async def _storm(server: JupyterServer, cycles: int) -> tuple[int, float, int]:
    """An attacker joins and leaves a room ``cycles`` times while a victim sits in it.

    Returns the presence frames the victim got, the seconds from the first change to
    the last frame, and the room's member count in that last frame.
    """
    request = HTTPRequest(
        f"ws://127.0.0.1:{server.port}{server.base_url}chat-ext/ws",
        headers={"Authorization": f"token {server.token}"},
    )
    victim = RawClient(await websocket_connect(request))
    attacker = RawClient(await websocket_connect(request))
    await victim.start()
    await attacker.start()
    await victim.join("storm")
    start = time.monotonic()
    for i in range(cycles):
        await attacker.join("storm")
        await attacker.send({"op": "leave", "room": "storm", "id": f"l{i}"})
        await attacker.expect("left")
    frames, count, last = 0, -1, start
    with contextlib.suppress(TimeoutError):  # no frame for 2 s: the storm's last batch came
        while True:
            frame = await victim.recv(timeout=2)
            if frame["op"] == "presence":
                frames, count, last = frames + 1, frame["count"], time.monotonic()
    victim.close()
    attacker.close()
    return frames, last - start, count


def test_a_join_leave_storm_is_coalesced_for_the_other_members(server: JupyterServer) -> None:
    """One user joining and leaving fast: each member gets batches, not a frame per change."""
    cycles = 150
    frames, elapsed, count = asyncio.run(_storm(server, cycles))
    # At most a batch per 0.1 s (presence.MIN_BATCH_INTERVAL), whatever the machine's
    # speed (without it: a frame per change, 2 * cycles).
    assert frames <= 2 + elapsed / 0.1 and frames < 2 * cycles, (frames, elapsed)
    assert count == 1  # the last batch leaves the room as it is: the victim alone
