"""Shared fixtures: an in-process server (pytest-jupyter) and real server processes."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import JupyterServer, RawClient

pytest_plugins = ["pytest_jupyter.jupyter_server"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip locally when something a test needs is missing; fail in CI."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture
def chat_config() -> dict[str, Any]:
    """ChatExtensionApp settings for the in-process server; tests may change them."""
    return {}


@pytest.fixture
def jp_server_config(chat_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_chat_ext": True}},
        "ChatExtensionApp": {"db_path": str(tmp_path / "chat.sqlite"), **chat_config},
    }


RawConnect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
def connect(jp_ws_fetch: Any) -> Iterator[RawConnect]:
    """Open a raw protocol connection to the in-process server (default: token auth)."""
    clients: list[RawClient] = []

    async def open_client(**kwargs: Any) -> RawClient:
        client = await RawClient(await jp_ws_fetch("chat-ext", "ws", **kwargs)).start()
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[JupyterServer]:
    """A real ``jupyter server`` process with the extension, under a non-root base_url."""
    process = JupyterServer(tmp_path / "server", base_url="/user/alice/").start()
    yield process
    process.stop()
