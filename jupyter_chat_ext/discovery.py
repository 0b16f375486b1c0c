"""Find the chat server a client should talk to, and the token to use.

In order: explicit arguments; the environment the server extension exports to
its kernels; the runtime file of the parent server (``JPY_PARENT_PID``); the one
Jupyter server running for this user on this machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

URL_ENV = "JUPYTER_CHAT_EXT_URL"
TOKEN_ENV = "JUPYTER_CHAT_EXT_TOKEN"
HUB_SERVICE_ENV = "JUPYTER_CHAT_EXT_HUB_SERVICE_URL"
HUB_SERVICE_KERNEL_ENV = "JUPYTER_CHAT_EXT_HUB_SERVICE_KERNEL_URL"


class DiscoveryError(LookupError):
    """No server could be found; the message says how to point the client at one."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a chat server is: its base URL (ending in ``/``) and an API token."""

    url: str
    token: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _from_runtime_file(path: Path) -> ServerInfo | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if info.get("sock") or not info.get("url"):
        return None
    return ServerInfo(info["url"], info.get("token", ""))


def _running_servers() -> list[tuple[float, Path]]:
    found = []
    for path in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            pid = int(path.stem.split("-", 1)[1])
        except ValueError:
            continue
        if _pid_alive(pid):
            found.append((path.stat().st_mtime, path))
    return sorted(found, reverse=True)


def discover(url: str | None = None, token: str | None = None) -> ServerInfo:
    """Return the server to use, or raise :class:`DiscoveryError` saying what to pass."""
    env = os.environ
    if url and not url.startswith(("http://", "https://")):
        raise DiscoveryError(
            f"server URL {url!r} must start with http:// or https:// "
            "(for example http://127.0.0.1:8888/)"
        )
    if url:
        if token is None:
            same = env.get(URL_ENV, "").rstrip("/") == url.rstrip("/")
            token = env.get(TOKEN_ENV, "") if same else env.get("JUPYTER_TOKEN", "")
        return ServerInfo(url if url.endswith("/") else url + "/", token)
    if env.get(URL_ENV):
        return discover(env[URL_ENV], token if token is not None else env.get(TOKEN_ENV, ""))
    parent = env.get("JPY_PARENT_PID")
    if parent:
        info = _from_runtime_file(Path(jupyter_runtime_dir()) / f"jpserver-{parent}.json")
        if info is not None:
            return discover(info.url, token if token is not None else info.token)
    for _, path in _running_servers():
        info = _from_runtime_file(path)
        if info is not None:
            return discover(info.url, token if token is not None else info.token)
    raise DiscoveryError(
        "no Jupyter server found: run this inside a kernel started by Jupyter, start "
        "`jupyter lab` on this machine, or pass url= and token= (--url/--token on the CLI)"
    )
