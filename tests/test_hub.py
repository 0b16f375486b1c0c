"""The hub-wide chat service under a real JupyterHub (with configurable-http-proxy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError

from conftest import require_module
from helpers import RawClient, free_port, png
from hubtools import CHAT, Hub, start_server


def test_hub_users_chat_through_the_service_with_names_from_the_hub(hub: Hub) -> None:
    with (
        ChatClient(url=hub.service_url, token=hub.token("alice", CHAT)) as alice,
        ChatClient(url=hub.service_url, token=hub.token("bob", CHAT)) as bob,
    ):
        assert alice.user["username"] == "alice" and bob.user["username"] == "bob"
        assert "Anonymous" not in alice.user["display_name"]
        a_room, b_room = alice.join("hub-wide"), bob.join("hub-wide")
        got = b_room.messages
        sent = a_room.send("hello bob, from alice's server")
        assert sent["user"]["username"] == "alice"
        heard = threading.Event()
        a_room.on_message(lambda m: m["body"] == "hi alice" and heard.set())
        reply = b_room.send("hi alice")
        assert reply["user"]["username"] == "bob"
        assert heard.wait(30)
        for room in (a_room, b_room):
            assert [m["body"] for m in room.messages][-2:] == [
                "hello bob, from alice's server",
                "hi alice",
            ]
        assert got == []
        both = {"alice", "bob"}
        told = threading.Event()
        a_room.on_presence(lambda _: {u["username"] for u in a_room.members} == both and told.set())
        assert {u["username"] for u in a_room.members} == both or told.wait(10)
        with pytest.raises(ChatError) as too_big:  # the service's own configured limit
            a_room.send("x" * 5000)
        assert too_big.value.code == "message_too_large" and "4096" in str(too_big.value)


def test_a_token_without_the_service_scope_is_refused(hub: Hub) -> None:
    with pytest.raises(ChatError) as refused:
        ChatClient(url=hub.service_url, token=hub.token("carol", ["read:users:name!user"]))
    assert refused.value.code == "refused"
    with pytest.raises(ChatError):
        ChatClient(url=hub.service_url, token="not-a-token")


def test_direct_rooms_keep_others_out(hub: Hub) -> None:
    with (
        ChatClient(url=hub.service_url, token=hub.token("alice", CHAT)) as alice,
        ChatClient(url=hub.service_url, token=hub.token("bob", CHAT)) as bob,
        ChatClient(url=hub.service_url, token=hub.token("carol", CHAT)) as carol,
    ):
        to_bob = alice.direct("bob")
        to_alice = bob.direct("alice")
        assert to_bob.name == to_alice.name
        arrived = threading.Event()
        to_alice.on_message(lambda m: m["body"] == "just between us" and arrived.set())
        to_bob.send("just between us")
        assert arrived.wait(30)
        with pytest.raises(ChatError) as refused:
            carol.join(to_bob.name)
        assert refused.value.code == "forbidden"
        team = alice.join("plans", private=True, members=["bob"])
        assert team.access == {"room": "plans", "owner": "alice", "members": ["alice", "bob"]}
        bob.join("plans")
        with pytest.raises(ChatError) as not_invited:
            carol.join("plans")
        assert not_invited.value.code == "forbidden" and "alice" in str(not_invited.value)


def test_attachments_through_the_hub_service_only_for_readers_of_the_room(hub: Hub) -> None:
    tokens = {name: hub.token(name, CHAT) for name in ("alice", "bob", "carol")}

    def http(method: str, path: str, who: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            hub.service_url + path,
            data=body,
            method=method,
            headers={"Authorization": f"token {tokens[who]}", "Content-Type": "image/png"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    async def share() -> dict[str, Any]:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        status, answer = http("POST", "chat-ext/attachments?room=hub-team", "alice", png(seed=9))
        assert status == 201, answer
        url = hub.service_url.replace("http", "ws", 1) + "chat-ext/ws"
        headers = {"Authorization": f"token {tokens['alice']}"}
        client = await RawClient(await websocket_connect(HTTPRequest(url, headers=headers))).start()
        await client.join("hub-team", private=True, members=["bob"])
        upload = json.loads(answer)["upload"]
        frame = {"op": "send", "room": "hub-team", "id": "a", "body": "the plot"}
        await client.send({**frame, "attachment": {"upload": upload, "kind": "figure"}})
        message = await client.expect("message", id="a")
        client.close()
        return message["attachment"]  # type: ignore[no-any-return]

    import asyncio

    attachment = asyncio.run(share())
    assert http("GET", attachment["url"], "bob") == (200, png(seed=9))  # a member
    status, answer = http("GET", attachment["url"], "carol")  # not one
    assert status == 404 and json.loads(answer)["code"] == "not_found"
    status, answer = http("POST", "chat-ext/attachments?room=hub-team", "carol", png(seed=8))
    assert status == 403 and json.loads(answer)["code"] == "forbidden"


def test_the_service_says_who_you_are_and_sends_browsers_to_log_in(hub: Hub) -> None:
    request = urllib.request.Request(
        hub.service_url, headers={"Authorization": f"token {hub.token('alice', CHAT)}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["user"]["username"] == "alice"
    assert answer["ws"] == "/services/chat/chat-ext/ws"
    assert answer["attachments"] == "/services/chat/chat-ext/attachments"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as login:
        urllib.request.build_opener(NoRedirect).open(hub.service_url, timeout=10)
    assert (
        login.value.code == 302 and "/hub/api/oauth2/authorize" in login.value.headers["Location"]
    )


KERNEL = """
from jupyter_chat_ext import Chat, ChatClient
client = ChatClient()
room = client.join("hub-wide")
print("USER", client.user["username"], "SEQ", room.send("from my kernel")["seq"])
print("KERNEL_URL", client.url)
print("WIDGET_URL", Chat().url)
client.close()
"""


def test_a_kernel_on_a_users_server_chats_through_the_service_as_that_user(hub: Hub) -> None:
    from jupyter_client import BlockingKernelClient

    start_server(hub, "alice")
    token = hub.token("alice", ["access:servers!user=alice"])
    request = urllib.request.Request(
        f"{hub.url}user/alice/api/kernels",
        data=b'{"name": "python3"}',
        method="POST",
        headers={"Authorization": f"token {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        kernel = json.loads(response.read())
    runtime = hub.home / "home" / "alice" / ".local" / "share" / "jupyter" / "runtime"
    client = BlockingKernelClient()
    client.load_connection_file(str(runtime / f"kernel-{kernel['id']}.json"))
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = client.execute_interactive(
            KERNEL,
            timeout=60,
            output_hook=lambda msg: out.append(
                msg["content"].get("text", "") + "".join(msg["content"].get("traceback", []))
            ),
        )
        assert reply["content"]["status"] == "ok", "".join(out)
        printed = "".join(out)
        assert "USER alice" in printed
        # the kernel reached the service at its own address (hub_service_kernel_url),
        # while the widget, drawn by the browser, keeps the public URL
        assert f"KERNEL_URL {hub.kernel_service_url}\n" in printed
        assert f"WIDGET_URL {hub.service_url}\n" in printed
    finally:
        client.stop_channels()
    with ChatClient(url=hub.service_url, token=hub.token("bob", CHAT)) as bob:
        last = bob.join("hub-wide").messages[-1]
        assert (last["body"], last["user"]["username"]) == ("from my kernel", "alice")


def test_the_managed_service_keeps_history_in_its_working_directory(hub: Hub) -> None:
    # No --db-path: the default file lands in the service's "cwd" and the log says where.
    with ChatClient(url=hub.service_url, token=hub.token("alice", CHAT)) as alice:
        alice.join("where-is-history").send("kept on disk")
    history = hub.chat_data.resolve() / "jupyter_chat_ext.sqlite"
    assert history.is_file()
    log = (hub.home / "hub.log").read_text()
    assert f"chat history in {history} (HubChatService.db_path)" in log


def test_db_path_defaults_to_the_working_directory_and_redis_uses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("jupyterhub", "pip install jupyterhub")
    from jupyter_chat_ext.hub import HubChatService

    monkeypatch.chdir(tmp_path)
    assert HubChatService().history_file() == tmp_path.resolve() / "jupyter_chat_ext.sqlite"
    assert HubChatService(db_path="chat.sqlite").history_file() == tmp_path.resolve() / (
        "chat.sqlite"
    )
    assert HubChatService(redis_url="redis://127.0.0.1:1/0").history_file() is None


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder the service cannot create files in (root may write anywhere but /proc)."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(
    ("folder", "problem"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: (tmp / "a-file").touch() or tmp / "a-file", "is not a folder"),
        (unwritable_folder, "cannot create files in"),
    ],
    ids=["missing", "a-file", "unwritable"],
)
def test_an_unusable_db_path_stops_the_service_naming_the_setting(
    tmp_path: Path, folder: Any, problem: str
) -> None:
    require_module("jupyterhub", "pip install jupyterhub")
    db_path = folder(tmp_path) / "chat.sqlite"
    run = subprocess.run(
        [sys.executable, "-m", "jupyter_chat_ext", "hub-service", f"--db-path={db_path}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{free_port()}"},
    )
    assert run.returncode == 2, run.stderr
    assert f"HubChatService.db_path is {db_path}" in run.stderr
    assert problem in run.stderr and "--db-path=" in run.stderr
    assert "Traceback" not in run.stderr
