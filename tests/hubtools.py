"""A real JupyterHub for the tests: its proxy, the Hub process, users' servers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import require
from helpers import free_port, install_lock, python_module

CHAT = ["access:services!service=chat"]  # the scope a token needs to use the chat service
CHP_VERSION = "5"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jupyter-chat-ext"


def configurable_http_proxy() -> Path:
    """The proxy's executable, installed from the npm registry on first use."""
    chp = CACHE / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
    if chp.exists():
        return chp
    npm = shutil.which("npm")
    require(npm is not None, "npm is needed to install configurable-http-proxy")
    assert npm is not None
    with install_lock(str(CACHE / "chp")):  # pytest-xdist workers: one installs, all wait
        if chp.exists():
            return chp
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
        # A service named like a user, allowed to use the chat service: its token must
        # not speak as the user "dave".
        self.dave_service_token = secrets.token_hex(16)
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
                c.Authenticator.admin_users = {{"carol"}}  # a Hub admin: a chat moderator
                c.JupyterHub.spawner_class = "simple"
                c.SimpleLocalProcessSpawner.home_dir_template = "{self.home}/home/{{username}}"
                c.Spawner.cmd = {python_module("jupyterhub.singleuser")!r}
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
                    {{"name": "dave", "api_token": {self.dave_service_token!r}}},
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
                        "name": "chat-bot-service",
                        "scopes": ["access:services!service=chat"],
                        "services": ["dave"],
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
            [*python_module("jupyterhub"), "-f", str(config)],
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


def start_server(hub: Hub, user: str) -> None:
    """Spawn ``user``'s single-user server and wait until the Hub says it is ready."""
    # The Hub answers once the server is up, or with 202 after its slow_spawn_timeout
    # (10 s): a busy machine needs longer than that.
    hub.api("POST", f"hub/api/users/{user}/server", timeout=90)
    deadline = time.monotonic() + 90
    while not hub.api("GET", f"hub/api/users/{user}")["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, (hub.home / "hub.log").read_text()[-3000:]
        time.sleep(0.2)  # polling the Hub's API: it has no event to wait on
