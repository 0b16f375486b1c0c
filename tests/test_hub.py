"""The hub-wide chat service under a real JupyterHub (with configurable-http-proxy)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError

from conftest import require, require_module
from helpers import free_port

CHP_VERSION = "5"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jupyter-chat-ext"


def configurable_http_proxy() -> Path:
    """The proxy's executable, installed from the npm registry on first use."""
    chp = CACHE / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
    if not chp.exists():
        npm = shutil.which("npm")
        require(npm is not None, "npm is needed to install configurable-http-proxy")
        assert npm is not None
        (CACHE / "chp").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CACHE / "chp"),
                f"configurable-http-proxy@{CHP_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return chp


class Hub:
    """A JupyterHub process with the chat service and an admin token for the tests."""

    def __init__(self, home: Path, chat_url: str | None = None) -> None:
        """A Hub whose chat service it runs itself, or (``chat_url``) runs elsewhere."""
        self.home = home
        self.chat_url = chat_url
        self.chat_token = secrets.token_hex(16)
        self.hub_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.port = free_port()
        self.admin_token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.service_url = f"{self.url}services/chat/"
        # Where the service itself listens: kernels reach it there, not through the
        # proxy (hub_service_kernel_url), as pods that cannot reach the public address.
        self.chat_address = chat_url or f"http://127.0.0.1:{free_port()}"
        self.kernel_service_url = f"{self.chat_address}/services/chat/"
        self.chat_data = home / "chat-data"  # the managed service's cwd: its history
        self.proc: subprocess.Popen[bytes] | None = None

    def chat_service(self) -> str:
        if self.chat_url is not None:  # replicas run by the test, as on Kubernetes
            return f"""{{
                "name": "chat",
                "url": {self.chat_url!r},
                "api_token": {self.chat_token!r},
                "oauth_no_confirm": True,
                "oauth_redirect_uri": "/services/chat/oauth_callback",
                }}"""
        return f"""{{
                "name": "chat",
                "url": {self.chat_address!r},
                "command": [
                    {sys.executable!r}, "-m", "jupyter_chat_ext", "hub-service",
                    "--HubChatService.max_message_size=4096",
                ],
                "cwd": {str(self.chat_data)!r},  # the default db_path lands here
                "oauth_no_confirm": True,
                }}"""

    def service_environment(self, url: str) -> dict[str, str]:
        """What the Hub gives a managed service, for a replica listening on ``url``."""
        scopes = json.dumps(["access:services!service=chat"])
        return {
            "JUPYTERHUB_SERVICE_NAME": "chat",
            "JUPYTERHUB_SERVICE_URL": url,
            "JUPYTERHUB_SERVICE_PREFIX": "/services/chat/",
            "JUPYTERHUB_API_TOKEN": self.chat_token,
            "JUPYTERHUB_API_URL": self.api_url,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_CLIENT_ID": "service-chat",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": "/services/chat/oauth_callback",
            "JUPYTERHUB_OAUTH_SCOPES": scopes,
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes,
        }

    def start(self) -> Hub:
        chp = configurable_http_proxy()
        self.chat_data.mkdir(exist_ok=True)
        config = self.home / "jupyterhub_config.py"
        config.write_text(
            textwrap.dedent(
                f"""
                c = get_config()  # noqa
                c.JupyterHub.ip = "127.0.0.1"
                c.JupyterHub.port = {self.port}
                c.JupyterHub.hub_ip = "127.0.0.1"
                c.JupyterHub.hub_port = {self.hub_port}
                c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
                c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
                c.JupyterHub.authenticator_class = "dummy"
                c.Authenticator.allow_all = True
                c.JupyterHub.spawner_class = "simple"
                c.SimpleLocalProcessSpawner.home_dir_template = "{self.home}/home/{{username}}"
                c.Spawner.cmd = [{sys.executable!r}, "-m", "jupyterhub.singleuser"]
                c.Spawner.args = ["--allow-root"]
                c.Spawner.environment.update({{
                    "JUPYTER_CHAT_EXT_HUB_SERVICE_URL": "{self.service_url}",
                    "JUPYTER_CHAT_EXT_HUB_SERVICE_KERNEL_URL": "{self.kernel_service_url}",
                }})
                c.Spawner.http_timeout = 60
                c.JupyterHub.db_url = "sqlite:///{self.home}/hub.sqlite"
                c.JupyterHub.cookie_secret_file = "{self.home}/cookie_secret"
                c.JupyterHub.pid_file = "{self.home}/hub.pid"
                c.JupyterHub.services = [
                    {self.chat_service()},
                    {{"name": "test-admin", "api_token": {self.admin_token!r}}},
                ]
                c.JupyterHub.load_roles = [
                    {{"name": "user", "scopes": ["self", "access:services!service=chat"]}},
                    {{
                        # single-user servers (and so their kernels) may use the chat
                        "name": "server",
                        "scopes": [
                            "users:activity!user",
                            "access:servers!server",
                            "access:services!service=chat",
                        ],
                    }},
                    {{
                        "name": "test-admin",
                        "scopes": ["admin:users", "admin:servers", "tokens"],
                        "services": ["test-admin"],
                    }},
                ]
                """
            )
        )
        log = open(self.home / "hub.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.home,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 90
        while True:  # polling processes we do not control: the hub, then its service
            if self.proc.poll() is not None:
                raise RuntimeError((self.home / "hub.log").read_text()[-4000:])
            try:
                self.api("GET", "hub/api/")
                urllib.request.urlopen(self.service_url + "oauth_callback", timeout=5)
            except urllib.error.HTTPError as exc:
                if exc.code != 502 and exc.code != 503 and exc.code != 404:
                    return self  # the service answers (its callback wants parameters)
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError((self.home / "hub.log").read_text()[-4000:])
            time.sleep(0.2)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"token {self.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return json.loads(text) if text else None

    def token(self, user: str, scopes: list[str]) -> str:
        """A Hub API token of ``user`` with exactly ``scopes``."""
        answer = self.api("POST", f"hub/api/users/{user}/tokens", {"scopes": scopes})
        return str(answer["token"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_module("jupyterhub", "pip install jupyterhub")
    instance = Hub(tmp_path_factory.mktemp("hub")).start()
    instance.api("POST", "hub/api/users", {"usernames": ["alice", "bob", "carol"]})
    yield instance
    instance.stop()


CHAT = ["access:services!service=chat"]


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
        assert {u["username"] for u in a_room.members} == {"alice", "bob"}
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


def test_the_service_says_who_you_are_and_sends_browsers_to_log_in(hub: Hub) -> None:
    request = urllib.request.Request(
        hub.service_url, headers={"Authorization": f"token {hub.token('alice', CHAT)}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["user"]["username"] == "alice"
    assert answer["ws"] == "/services/chat/chat-ext/ws"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as login:
        urllib.request.build_opener(NoRedirect).open(hub.service_url, timeout=10)
    assert (
        login.value.code == 302 and "/hub/api/oauth2/authorize" in login.value.headers["Location"]
    )


def start_server(hub: Hub, user: str) -> None:
    """Spawn ``user``'s single-user server and wait until the Hub says it is ready."""
    # The Hub answers once the server is up, or with 202 after its slow_spawn_timeout
    # (10 s): a busy machine needs longer than that.
    hub.api("POST", f"hub/api/users/{user}/server", timeout=90)
    deadline = time.monotonic() + 90
    while not hub.api("GET", f"hub/api/users/{user}")["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, (hub.home / "hub.log").read_text()[-3000:]
        time.sleep(0.2)  # polling the Hub's API: it has no event to wait on


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
