"""The hub service refuses handshakes cleanly: 401 or 403 with a reason, never a 500."""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
from typing import Any

import pytest
from tornado.web import create_signed_value

from jupyter_chat_ext import ChatClient, ChatError

from hubtools import CHAT, Hub


def handshake(hub: Hub, headers: dict[str, str]) -> tuple[int, str]:
    """A WebSocket upgrade request to the chat service, through the Hub's proxy.

    Returns the status and the refusal's message (the body, if it is not our JSON).
    """
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    try:
        conn.request(
            "GET",
            "/services/chat/chat-ext/ws",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
                **headers,
            },
        )
        response = conn.getresponse()
        body = response.read()
        if response.status == 101:
            return 101, ""
        try:
            return response.status, str(json.loads(body)["message"])
        except (ValueError, KeyError, TypeError):
            return response.status, body.decode(errors="replace")
    finally:
        conn.close()


def service_log(hub: Hub) -> str:
    return (hub.home / "hub.log").read_text(errors="replace")


@pytest.fixture
def clean_log(hub: Hub) -> Any:
    """Fail the test if the service logged a traceback or a 500 during it."""
    start = len(service_log(hub))
    yield
    new = service_log(hub)[start:]
    for bad in ("Traceback", "Uncaught exception", "AttributeError", "500 GET"):
        assert bad not in new, new


def test_no_credentials_get_401_saying_to_log_in(hub: Hub, clean_log: None) -> None:
    status, answer = handshake(hub, {})
    assert status == 401, answer
    assert "log in" in answer and "access:services!service=chat" in answer


def test_a_bad_token_gets_401(hub: Hub, clean_log: None) -> None:
    status, answer = handshake(hub, {"Authorization": f"token {secrets.token_hex(16)}"})
    assert status == 401, answer
    assert "token" in answer


def test_a_token_without_the_scope_gets_403_naming_the_scope(
    hub: Hub,
    clean_log: None,
) -> None:
    token = hub.token("carol", ["read:users:name!user"])
    status, answer = handshake(hub, {"Authorization": f"token {token}"})
    assert status == 403, answer
    assert "'carol'" in answer
    assert "access:services!service=chat" in answer
    with pytest.raises(ChatError) as refused:  # what a program is told
        ChatClient(url=hub.service_url, token=token)
    assert refused.value.code == "refused" and "403" in str(refused.value)
    granted = hub.token("carol", CHAT)  # the same person with the scope gets in
    assert handshake(hub, {"Authorization": f"token {granted}"})[0] == 101


def test_a_cookie_of_another_service_gets_401(hub: Hub, clean_log: None) -> None:
    # Another service signs its login cookie (which holds a Hub token) with its own
    # secret; the chat service must not take it, whatever the name or the token inside.
    token = hub.token("alice", CHAT)
    other_secret = secrets.token_bytes(32)
    cookies = "; ".join(
        f"{name}={create_signed_value(other_secret, name, token).decode()}"
        for name in ("service-chat", "service-other")
    )
    status, answer = handshake(
        hub, {"Cookie": f"{cookies}; jupyterhub-session-id={secrets.token_hex(16)}"}
    )
    assert status == 401, answer
    assert "log in" in answer


def test_a_service_token_named_like_a_user_may_not_chat(hub: Hub, clean_log: None) -> None:
    # The Hub service "dave" holds the chat scope; its token names "dave" of kind
    # "service". It must not speak as the user dave (nor as anyone): 403, saying why.
    headers = {"Authorization": f"token {hub.dave_service_token}"}
    status, answer = handshake(hub, headers)
    assert status == 403, answer
    assert "service 'dave'" in answer and "user's API token" in answer
    assert hub.dave_service_token not in answer
    with pytest.raises(ChatError) as refused:
        ChatClient(url=hub.service_url, token=hub.dave_service_token)
    assert refused.value.code == "refused" and "403" in str(refused.value)
    # The who-am-I endpoint refuses it the same way.
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    try:
        conn.request("GET", "/services/chat/", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 403
    finally:
        conn.close()
