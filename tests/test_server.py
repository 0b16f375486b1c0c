"""The WebSocket endpoint on a real in-process Jupyter server (pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.web import create_signed_value

from jupyter_chat_ext.handlers import DELEGATION_NAME
from jupyter_chat_ext.protocol import direct_room

from conftest import RawConnect
from helpers import login_cookie

LONG = "x" * 201


async def test_hello_names_the_authenticated_user(connect: RawConnect) -> None:
    client = await connect()
    assert client.hello["protocol"] == 2
    user = client.hello["user"]
    assert user["username"] and user["display_name"]
    assert client.hello["limits"]["max_message_size"] == 16384


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": ""}, {"Authorization": "token wrong-token"}],
    ids=["no-credentials", "wrong-token"],
)
async def test_handshake_refused_without_valid_credentials(
    jp_ws_fetch: Any, headers: dict[str, str]
) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chat-ext", "ws", headers=headers)
    assert info.value.code == 403


async def test_cookie_connections_must_come_from_the_same_origin(
    jp_ws_fetch: Any, jp_http_port: int
) -> None:
    first = await jp_ws_fetch("chat-ext", "ws")
    cookie = login_cookie(first)
    first.close()
    assert cookie.startswith("username-")
    cookie_only = {"Authorization": "", "Cookie": cookie}
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch(
            "chat-ext", "ws", headers={**cookie_only, "Origin": "http://evil.example"}
        )
    assert info.value.code == 403
    same_origin = {**cookie_only, "Origin": f"http://localhost:{jp_http_port}"}
    conn = await jp_ws_fetch("chat-ext", "ws", headers=same_origin)
    assert json.loads(await conn.read_message())["op"] == "hello"
    conn.close()


async def test_authorizer_is_asked_about_the_chat_resource(
    jp_serverapp: Any, jp_ws_fetch: Any
) -> None:
    asked: list[tuple[str, str]] = []
    authorizer = jp_serverapp.web_app.settings["authorizer"]
    original = authorizer.is_authorized

    def deny_chat(handler: Any, user: Any, action: str, resource: str) -> bool:
        asked.append((action, resource))
        return resource != "chat" and original(handler, user, action, resource)

    authorizer.is_authorized = deny_chat
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chat-ext", "ws")
    assert info.value.code == 403
    assert ("execute", "chat") in asked


async def test_two_connections_chat_both_ways(connect: RawConnect) -> None:
    alice, bob = await connect(), await connect()
    await alice.join("general")
    await bob.join("general")
    await alice.send({"op": "send", "room": "general", "id": "a1", "body": "hi bob"})
    for client in (alice, bob):
        message = await client.expect("message", id="a1")
        assert message["body"] == "hi bob" and message["seq"] == 1
        assert message["user"] == alice.hello["user"]
    await bob.send({"op": "send", "room": "general", "id": "b1", "body": "hi alice"})
    message = await alice.expect("message", id="b1")
    assert message["seq"] == 2 and message["user"] == bob.hello["user"]


async def test_sender_cannot_be_forged(connect: RawConnect) -> None:
    alice, mallory = await connect(), await connect()
    await alice.join("r")
    await mallory.join("r")
    forged = {"username": alice.hello["user"]["username"], "name": "alice"}
    await mallory.send({"op": "send", "room": "r", "id": "m1", "body": "hi", "user": forged})
    await mallory.send({"op": "typing", "room": "r", "active": True, "user": forged})
    await mallory.send({"op": "data", "room": "r", "topic": "t", "value": 1, "user": forged})
    message = await alice.expect("message", id="m1")
    assert message["user"] == mallory.hello["user"]
    typing = await alice.expect("typing")
    assert typing["user"] == mallory.hello["user"]
    data = await alice.expect("data")
    assert data["user"] == mallory.hello["user"]


MALFORMED: list[tuple[Any, str]] = [
    ("not json", "bad_json"),
    ("{", "bad_json"),
    (b"\xff\xfe\x00binary", "bad_frame"),
    (b"\x00\x00\x00\x02{}", "bad_frame"),
    (b"\x00\x00\x00\x0c" + b'{"op":"data"}'[:12], "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('"a string"', "bad_frame"),
    ("42", "bad_frame"),
    ({"room": "r"}, "bad_frame"),
    ({"op": 7, "room": "r"}, "bad_frame"),
    ({"op": "shout", "room": "r"}, "unknown_op"),
    ({"op": "join"}, "invalid_field"),
    ({"op": "join", "room": 5}, "invalid_field"),
    ({"op": "join", "room": ""}, "invalid_room"),
    ({"op": "join", "room": LONG}, "invalid_room"),
    ({"op": "join", "room": "bad\nname"}, "invalid_room"),
    ({"op": "send", "room": "r", "body": "no id"}, "invalid_field"),
    ({"op": "send", "room": "r", "id": "x", "body": 3}, "invalid_field"),
    ({"op": "send", "room": "r", "id": "x", "body": "   "}, "invalid_field"),
    ({"op": "send", "room": "never-joined", "id": "x", "body": "hi"}, "not_joined"),
    ({"op": "typing", "room": "r", "active": "yes"}, "invalid_field"),
    ({"op": "typing", "room": "never-joined", "active": True}, "not_joined"),
    ({"op": "data", "room": "r", "topic": "", "value": 1}, "invalid_topic"),
    ({"op": "data", "room": "r", "topic": "t"}, "invalid_field"),
    ({"op": "history", "room": "r", "id": "h", "before": "x"}, "invalid_field"),
    ({"op": "leave", "room": "never-joined", "id": "l"}, "not_joined"),
    ({"op": "join", "room": "r", "since": {"epoch": 1, "seq": "x"}}, "invalid_field"),
]


async def test_malformed_frames_get_an_error_and_the_connection_keeps_working(
    connect: RawConnect,
) -> None:
    assert len(MALFORMED) >= 15
    client = await connect()
    await client.join("r")
    for frame, code in MALFORMED:
        await client.send(frame)
        error = await client.recv()
        assert error["op"] == "error", (frame, error)
        assert error["code"] == code, (frame, error)
        assert error["message"]
    await client.send({"op": "send", "room": "r", "id": "ok", "body": "still here"})
    assert (await client.expect("message", id="ok"))["body"] == "still here"


async def test_errors_echo_the_frame_id(connect: RawConnect) -> None:
    client = await connect()
    await client.send({"op": "send", "room": "nowhere", "id": "abc", "body": "hi"})
    error = await client.recv()
    assert error == {
        "op": "error",
        "code": "not_joined",
        "message": error["message"],
        "id": "abc",
        "room": "nowhere",
    }


@pytest.fixture
def small_limits(chat_config: dict[str, Any]) -> None:
    chat_config.update(
        max_message_size=10, max_value_size=20, message_rate_limit=1.0, message_burst=3
    )


@pytest.mark.usefixtures("small_limits")
async def test_size_limits(connect: RawConnect) -> None:
    client = await connect()
    await client.join("r")
    await client.send({"op": "send", "room": "r", "id": "big", "body": "é" * 6})
    error = await client.expect("error")
    assert (error["code"], error["id"]) == ("message_too_large", "big")
    assert "12 bytes" in error["message"] and "10" in error["message"]
    await client.send({"op": "data", "room": "r", "topic": "t", "value": list(range(20))})
    assert (await client.expect("error"))["code"] == "value_too_large"
    await client.send({"op": "send", "room": "r", "id": "ok", "body": "0123456789"})
    assert (await client.expect("message"))["id"] == "ok"


@pytest.mark.usefixtures("small_limits")
async def test_rate_limit_says_how_long_to_wait(connect: RawConnect) -> None:
    client = await connect()
    await client.join("r")
    for i in range(4):
        await client.send({"op": "send", "room": "r", "id": f"m{i}", "body": "spam"})
    frames = [await client.recv() for _ in range(4)]
    assert [f["op"] for f in frames].count("message") == 3
    error = next(f for f in frames if f["op"] == "error")
    assert error["code"] == "rate_limited" and error["id"] == "m3"
    assert 0 < error["retry_after"] <= 1.0


@pytest.fixture
def quick_typing(chat_config: dict[str, Any]) -> None:
    chat_config.update(typing_timeout=0.3)


@pytest.mark.usefixtures("quick_typing")
async def test_typing_is_shown_to_others_and_expires(connect: RawConnect) -> None:
    alice, bob = await connect(), await connect()
    await alice.join("r")
    await bob.join("r")
    await alice.send({"op": "typing", "room": "r", "active": True})
    started = await bob.expect("typing")
    assert started["active"] is True and started["user"] == alice.hello["user"]
    stopped = await bob.expect("typing", timeout=5)
    assert stopped["active"] is False and stopped["user"] == alice.hello["user"]


async def test_typing_ends_when_the_typist_sends(connect: RawConnect) -> None:
    alice, bob = await connect(), await connect()
    await alice.join("r")
    await bob.join("r")
    await alice.send({"op": "typing", "room": "r", "active": True})
    assert (await bob.expect("typing"))["active"] is True
    await alice.send({"op": "send", "room": "r", "id": "m", "body": "done"})
    assert (await bob.expect("typing"))["active"] is False


async def test_presence_and_one_entry_per_user(connect: RawConnect, jp_ws_fetch: Any) -> None:
    alice = await connect()
    joined = await alice.join("r")
    assert joined["members"] == [alice.hello["user"]]
    bob = await connect()
    await bob.join("r")
    assert (await alice.expect("presence"))["joined"] == [bob.hello["user"]]
    # bob's second connection carries his login cookie: same user, not a new member.
    bob2 = await connect(headers={"Cookie": login_cookie(bob)})
    assert bob2.hello["user"] == bob.hello["user"]
    joined = await bob2.join("r")
    assert sorted(u["username"] for u in joined["members"]) == sorted(
        [alice.hello["user"]["username"], bob.hello["user"]["username"]]
    )
    await bob.send({"op": "leave", "room": "r", "id": "l"})
    await bob.expect("left", id="l")
    bob2.close()
    left = await alice.expect("presence")
    assert left["left"] == [bob.hello["user"]] and left["count"] == 1


async def test_join_returns_history_values_and_resumes(connect: RawConnect) -> None:
    alice = await connect()
    first = await alice.join("r")
    assert first["history"] == [] and first["seq"] == 0 and first["recovered"] is False
    for i in range(5):
        await alice.send({"op": "send", "room": "r", "id": f"m{i}", "body": f"n{i}"})
        await alice.expect("message", id=f"m{i}")
    await alice.send({"op": "data", "room": "r", "topic": "temp", "value": {"c": 21.5}})
    await alice.expect("data")
    bob = await connect()
    joined = await bob.join("r")
    assert [m["body"] for m in joined["history"]] == [f"n{i}" for i in range(5)]
    assert joined["seq"] == 5 and joined["epoch"] == first["epoch"]
    assert joined["values"]["temp"]["value"] == {"c": 21.5}
    assert joined["values"]["temp"]["user"] == alice.hello["user"]
    carol = await connect()
    resumed = await carol.join("r", since={"epoch": first["epoch"], "seq": 3})
    assert resumed["recovered"] is True
    assert [m["seq"] for m in resumed["history"]] == [4, 5]
    stale = await carol.join("r", since={"epoch": "another-epoch", "seq": 3})
    assert stale["recovered"] is False and len(stale["history"]) == 5


async def test_retried_send_is_not_posted_twice(connect: RawConnect) -> None:
    alice = await connect()
    await alice.join("r")
    for _ in range(2):
        await alice.send({"op": "send", "room": "r", "id": "same", "body": "once"})
        assert (await alice.expect("message", id="same"))["seq"] == 1
    bob = await connect()
    assert [m["body"] for m in (await bob.join("r"))["history"]] == ["once"]


async def test_history_pages_load_earlier_messages(connect: RawConnect) -> None:
    alice = await connect()
    await alice.join("r")
    for i in range(1, 8):
        await alice.send({"op": "send", "room": "r", "id": f"m{i}", "body": str(i)})
        await alice.expect("message", id=f"m{i}")
    await alice.send({"op": "history", "room": "r", "id": "h", "before": 6, "limit": 3})
    page = await alice.expect("history", id="h")
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5]


@pytest.fixture
def no_idle_grace(chat_config: dict[str, Any]) -> None:
    chat_config.update(room_idle_timeout=0.0)


@pytest.mark.usefixtures("no_idle_grace")
async def test_rooms_unload_when_idle_and_reload_from_history(
    connect: RawConnect, jp_serverapp: Any
) -> None:
    (app,) = jp_serverapp.extension_manager.extension_apps["jupyter_chat_ext"]
    alice = await connect()
    await alice.join("r")
    await alice.send({"op": "send", "room": "r", "id": "m", "body": "kept"})
    await alice.expect("message", id="m")
    assert "r" in app.registry
    await alice.send({"op": "leave", "room": "r", "id": "l"})
    await alice.expect("left")
    for _ in range(3):  # the unload timer has zero delay: a few loop turns run it
        await asyncio.sleep(0)
    assert "r" not in app.registry
    joined = await alice.join("r")
    assert [m["body"] for m in joined["history"]] == ["kept"]


async def test_delegation_lets_a_kernel_speak_as_the_person(
    connect: RawConnect, jp_http_port: int, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    # Same host name as the WebSocket connections, so the login cookie applies to both.
    response = await AsyncHTTPClient().fetch(
        f"http://localhost:{jp_http_port}{jp_base_url}chat-ext/delegation",
        method="POST",
        body="",
        headers=jp_auth_header,
    )
    answer = json.loads(response.body)
    assert answer["expires_in"] == 1800
    # The person's browser (their login cookie) and their kernel (the delegation).
    person = await connect(headers={"Cookie": login_cookie(response)})
    kernel = await connect(headers={"X-Chat-Delegation": answer["delegation"]})
    assert kernel.hello["user"] == {**person.hello["user"], "kernel": True}
    await person.join("r")
    await kernel.join("r")
    await kernel.send({"op": "send", "room": "r", "id": "k", "body": "from my kernel"})
    message = await person.expect("message", id="k")
    assert message["user"] == kernel.hello["user"]
    # The person and their kernel are one member, shown as the person.
    joined = await (await connect()).join("r")
    assert person.hello["user"] in joined["members"] and len(joined["members"]) == 2


@pytest.mark.parametrize("age", [0, 3600], ids=["forged", "expired"])
async def test_forged_or_expired_delegations_are_refused(
    jp_ws_fetch: Any, jp_serverapp: Any, age: int
) -> None:
    secret = jp_serverapp.web_app.settings["cookie_secret"]
    user = b'{"username":"alice","name":"alice","display_name":"Alice"}'
    if age:
        value = create_signed_value(
            secret, DELEGATION_NAME, user, clock=lambda: time.time() - age
        ).decode()
    else:
        value = create_signed_value(b"another secret", DELEGATION_NAME, user).decode()
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("chat-ext", "ws", headers={"X-Chat-Delegation": value})
    assert info.value.code == 403


async def test_delegation_needs_authentication(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(
            "chat-ext", "delegation", method="POST", body="", headers={"Authorization": ""}
        )
    assert info.value.code == 403


@pytest.fixture
def tight_limits(chat_config: dict[str, Any]) -> None:
    chat_config.update(
        message_rate_limit=0.01,
        message_burst=3,
        max_connections_per_user=2,
        max_rooms_per_connection=2,
        max_room_name=5,
        history_page_size=4,
    )


@pytest.mark.usefixtures("tight_limits")
async def test_abuse_limits_are_enforced_with_clear_errors(connect: RawConnect) -> None:
    first = await connect()
    limits = first.hello["limits"]
    assert (limits["room_name_max"], limits["max_rooms_per_connection"]) == (5, 2)
    second = await connect(headers={"Cookie": login_cookie(first)})  # the same user
    assert second.hello["user"] == first.hello["user"]

    # A third connection of the same user is refused with a reason, then closed.
    third = await connect(headers={"Cookie": login_cookie(first)}, allow_refusal=True)
    assert third.hello["op"] == "error" and third.hello["code"] == "too_many_connections"
    assert await third.conn.read_message() is None
    assert third.conn.close_code == 4029

    # The message rate is per user: both connections draw on one bucket of 3.
    await first.join("a")
    await second.join("a")
    for i, client in enumerate([first, second, first]):
        await client.send({"op": "send", "room": "a", "id": f"m{i}", "body": "hi"})
        await client.expect("message", id=f"m{i}")
    await second.send({"op": "send", "room": "a", "id": "m3", "body": "hi"})
    limited = await second.expect("error")
    assert limited["code"] == "rate_limited" and limited["retry_after"] > 1

    await first.join("b")
    await first.send({"op": "join", "room": "c", "id": "third-room"})
    refused = await first.expect("error", id="third-room")
    assert refused["code"] == "too_many_rooms" and "leave one" in refused["message"]
    await first.send({"op": "join", "room": "sixsix", "id": "long"})
    assert (await first.expect("error", id="long"))["code"] == "invalid_room"
    await first.send({"op": "history", "room": "a", "id": "h", "before": 99, "limit": 1000})
    page = await first.expect("history", id="h")
    assert len(page["messages"]) == 3  # capped at history_page_size=4; only 3 exist


@pytest.mark.parametrize(
    ("how", "allowed"),
    [
        ("no credentials", False),
        ("wrong token in the header", False),
        ("wrong token in the query string", False),
        ("right token in the query string", True),
        ("right token in the header", True),
    ],
)
async def test_auth_matrix(
    jp_ws_fetch: Any, jp_auth_header: dict[str, str], how: str, allowed: bool
) -> None:
    token = jp_auth_header["Authorization"].split()[1]
    headers = {"Authorization": ""}
    params = {}
    if how == "wrong token in the header":
        headers = {"Authorization": "token nope"}
    elif how == "wrong token in the query string":
        params = {"token": "nope"}
    elif how == "right token in the query string":
        params = {"token": token}
    elif how == "right token in the header":
        headers = {}
    if allowed:
        conn = await jp_ws_fetch("chat-ext", "ws", headers=headers, params=params)
        assert json.loads(await conn.read_message())["op"] == "hello"
        conn.close()
    else:
        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch("chat-ext", "ws", headers=headers, params=params)
        assert info.value.code == 403


async def test_direct_rooms_are_for_their_two_users_only(connect: RawConnect) -> None:
    alice, bob, carol = await connect(), await connect(), await connect()
    name = direct_room(alice.hello["user"]["username"], bob.hello["user"]["username"])
    assert name == direct_room(bob.hello["user"]["username"], alice.hello["user"]["username"])
    joined = await alice.join(name)
    assert sorted(joined["access"]["members"]) == sorted(
        [alice.hello["user"]["username"], bob.hello["user"]["username"]]
    )
    await bob.join(name)
    await carol.send({"op": "join", "room": name, "id": "peek"})
    refused = await carol.expect("error", id="peek")
    assert refused["code"] == "forbidden" and "private" in refused["message"]
    await carol.send({"op": "join", "room": 'dm:["x"]', "id": "odd"})
    assert (await carol.expect("error", id="odd"))["code"] == "invalid_room"


async def test_private_rooms_have_an_owner_who_invites_and_removes(connect: RawConnect) -> None:
    owner, guest, other = await connect(), await connect(), await connect()
    guest_name = guest.hello["user"]["username"]
    other_name = other.hello["user"]["username"]
    joined = await owner.join("secret", private=True, members=[guest_name])
    assert joined["access"]["owner"] == owner.hello["user"]["username"]
    await guest.join("secret")
    await other.send({"op": "join", "room": "secret", "id": "no"})
    assert (await other.expect("error", id="no"))["code"] == "forbidden"
    await guest.send({"op": "access", "room": "secret", "id": "grab", "add": [other_name]})
    assert (await guest.expect("error", id="grab"))["code"] == "forbidden"

    await owner.send({"op": "access", "room": "secret", "id": "inv", "add": [other_name]})
    assert other_name in (await owner.expect("access", id="inv"))["members"]
    await other.join("secret")
    await owner.send({"op": "access", "room": "secret", "id": "rm", "remove": [guest_name]})
    await owner.expect("access", id="rm")
    assert (await guest.expect("left", room="secret"))["room"] == "secret"
    await guest.send({"op": "send", "room": "secret", "id": "late", "body": "still here?"})
    assert (await guest.expect("error", id="late"))["code"] == "not_joined"
    await guest.send({"op": "join", "room": "secret", "id": "again"})
    assert (await guest.expect("error", id="again"))["code"] == "forbidden"
