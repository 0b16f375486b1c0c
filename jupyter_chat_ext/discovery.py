"""Find the chat server a client should talk to, and the token to use.

In order: explicit arguments; the environment the server extension exports to
its kernels; the runtime file of the parent server (``JPY_PARENT_PID``); the one
Jupyter server running for this user on this machine.

A URL copied from a browser's address bar works as it is: a Jupyter page's path
(``/lab``, ``/lab/tree/...``, ``/tree``, ``/notebooks/...``, ``/doc/...``, ``/edit/...``)
is cut back to the server's base URL, and a ``?token=...`` in it is used as the token
(unless one is given) and dropped from the URL, so it never shows in a message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from jupyter_core.paths import jupyter_runtime_dir

from .protocol import WS_PATH

URL_ENV = "JUPYTER_CHAT_EXT_URL"
TOKEN_ENV = "JUPYTER_CHAT_EXT_TOKEN"
HUB_SERVICE_ENV = "JUPYTER_CHAT_EXT_HUB_SERVICE_URL"
HUB_SERVICE_KERNEL_ENV = "JUPYTER_CHAT_EXT_HUB_SERVICE_KERNEL_URL"

# The first path segment of a Jupyter page (JupyterLab, Notebook 7), never of a base URL.
_PAGE_ROUTES = frozenset({"lab", "doc", "tree", "notebooks", "edit", "consoles", "terminals"})


class DiscoveryError(LookupError):
    """No server could be found; the message says how to point the client at one."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a chat server is: its base URL (ending in ``/``, no query) and an API token."""

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


def split_url(url: str) -> tuple[str, str | None]:
    """Split a server or browser URL into the server's base URL and the token it carries.

    ``http://host:8888/user/ann/lab/tree/a.ipynb?token=abc`` gives
    ``("http://host:8888/user/ann/", "abc")``: the path is cut at its first Jupyter page
    route (the segment after a JupyterHub ``/user/`` is a user name, never a route), or
    before a trailing ``chat-ext/ws``; the query and fragment are dropped.
    """
    parts = urlsplit(url)
    token = parse_qs(parts.query).get("token", [None])[0]
    segments = parts.path.split("/")
    for i, segment in enumerate(segments):
        if segment in _PAGE_ROUTES and segments[i - 1] != "user":
            segments = segments[:i]
            break
    path = "/".join(segments).rstrip("/")
    path = path.removesuffix("/" + WS_PATH)
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", "")), token


def discover(url: str | None = None, token: str | None = None) -> ServerInfo:
    """Return the server to use, or raise :class:`DiscoveryError` saying what to pass."""
    env = os.environ
    if url and not url.startswith(("http://", "https://")):
        shown = url.split("?", 1)[0].split("#", 1)[0]  # a query may hold a token
        raise DiscoveryError(
            f"server URL {shown!r} must start with http:// or https:// "
            "(for example http://127.0.0.1:8888/)"
        )
    if url:
        url, url_token = split_url(url)
        if token is None:
            token = url_token
        if token is None:
            same = split_url(env.get(URL_ENV, ""))[0] == url
            token = env.get(TOKEN_ENV, "") if same else env.get("JUPYTER_TOKEN", "")
        return ServerInfo(url, token)
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
