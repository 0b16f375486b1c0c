"""A delegation speaks for its person only until it expires, not for the connection's life."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from jupyter_chat_ext import ChatClient
from jupyter_chat_ext.protocol import DELEGATION_HEADER

from conftest import ServerPool
from helpers import JupyterServer, delegate

TTL = 2  # seconds; a delegation's timestamp is in whole seconds, so it lives 1 to 2 s
CLOSE_DELEGATION_EXPIRED = 4001  # the close code docs/protocol.md gives it


@pytest.fixture
def server(server_pool: ServerPool) -> Iterator[JupyterServer]:
    """A real server whose delegations expire after TTL seconds."""
    process = server_pool.take(base_url="/", args=(f"--ChatExtensionApp.delegation_ttl={TTL}",))
    yield process
    process.stop()


def delegate_for_ttl(server: JupyterServer, cookie: str = "") -> tuple[str, str]:
    """A delegation from the server (it lasts TTL), and the login cookie (see ``delegate``)."""
    answer, cookie = delegate(server, cookie)
    assert answer["expires_in"] == TTL
    return answer["delegation"], cookie


def test_a_delegated_connection_is_closed_when_the_delegation_expires(
    server: JupyterServer,
) -> None:
    delegation, _ = delegate_for_ttl(server)
    url = f"ws://127.0.0.1:{server.port}{server.base_url}chat-ext/ws"
    auth = {"Authorization": f"token {server.token}"}

    async def run() -> None:
        kernel = await websocket_connect(
            HTTPRequest(url, headers={**auth, DELEGATION_HEADER: delegation})
        )
        observer = await websocket_connect(HTTPRequest(url, headers=auth))
        hello = json.loads(await kernel.read_message())  # type: ignore[arg-type]
        person = hello["user"]
        assert person["kernel"] is True
        await observer.read_message()  # hello
        for ws, name in ((kernel, "k"), (observer, "o")):
            await ws.write_message(json.dumps({"op": "join", "room": "r", "id": name}))
        # The kernel sends as fast as its messages come back, until it is closed
        # (or, if it never is, until well past the expiry).
        issued = int(delegation.split("|")[2].split(":")[1])
        sent = 0
        while time.time() < issued + TTL + 5:
            try:
                await kernel.write_message(
                    json.dumps({"op": "send", "room": "r", "id": f"m{sent}", "body": "hi"})
                )
            except WebSocketClosedError:  # closed just after the last acknowledgement
                frame = await kernel.read_message()
                break
            sent += 1
            frame = await kernel.read_message()
            while frame is not None and json.loads(frame).get("id") != f"m{sent - 1}":
                frame = await kernel.read_message()
            if frame is None:
                break
        closed_at = time.time()
        assert frame is None, "still open past the delegation's expiry"
        assert kernel.close_code == CLOSE_DELEGATION_EXPIRED, kernel.close_code
        assert "delegation expired" in (kernel.close_reason or "")
        assert issued + TTL - 1 <= closed_at < issued + TTL + 5, (issued, closed_at)
        assert sent > 1  # it did speak for its person while the delegation was valid

        # Nothing the observer got is stamped as the person past the expiry.
        await observer.write_message(json.dumps({"op": "leave", "room": "r", "id": "bye"}))
        stamped: list[float] = []
        while True:
            event = json.loads(await observer.read_message())  # type: ignore[arg-type]
            if event.get("id") == "bye":
                break
            if event["op"] == "message" and event["user"] == person:
                stamped.append(event["ts"])
        # (a message is stamped as it is stored, a moment after the expiry check)
        assert stamped and max(stamped) < issued + TTL + 0.1, (max(stamped), issued + TTL)

        # The same delegation cannot open a new connection either.
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(
                HTTPRequest(url, headers={**auth, DELEGATION_HEADER: delegation})
            )
        assert refused.value.code == 403
        observer.close()

    asyncio.run(run())


def test_a_client_whose_delegation_expires_speaks_as_itself_after_reconnecting(
    server: JupyterServer, caplog: pytest.LogCaptureFixture
) -> None:
    delegation, _ = delegate_for_ttl(server)
    reconnected = threading.Event()
    states: list[str] = []

    def on_state(state: str) -> None:
        states.append(state)
        if state == "connected":
            reconnected.set()

    caplog.set_level(logging.WARNING, logger="jupyter_chat_ext")
    with ChatClient(url=server.url, token=server.token, delegation=delegation) as client:
        person = dict(client.user)
        assert person["kernel"] is True
        room = client.join("r")
        assert room.send("as the person")["user"] == person
        client.on_state(on_state)
        assert reconnected.wait(15), states
        assert states == ["reconnecting", "connected"]
        assert client.user["username"] != person["username"]
        assert not client.user.get("kernel")
        after = room.send("after the expiry")
        assert after["user"] == client.user
    assert "delegation was refused" in caplog.text


def test_a_renewed_delegation_keeps_speaking_for_the_person(server: JupyterServer) -> None:
    first, cookie = delegate_for_ttl(server)
    # A renewal is a delegation signed in a later second (the widget renews every
    # TTL/3): wait for the clock, there is no event to wait for.
    time.sleep(1.05 - time.time() % 1)
    renewed, _ = delegate_for_ttl(server, cookie)
    assert renewed.split("|")[2] != first.split("|")[2]
    reconnected = threading.Event()
    with ChatClient(url=server.url, token=server.token, delegation=first) as client:
        person = dict(client.user)
        client.use_delegation(renewed)  # same person: kept for the next reconnect
        client.on_state(lambda state: state == "connected" and reconnected.set())
        room = client.join("r")
        assert reconnected.wait(15)  # closed when the first delegation expired
        assert client.user == person
        assert room.send("still me")["user"] == person
