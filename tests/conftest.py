"""Shared fixtures: an in-process server (pytest-jupyter) and real server processes."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jupyter_chat_ext import ChatClient

from helpers import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    JupyterServer,
    RawClient,
    RedisServer,
    install_lock,
)

if TYPE_CHECKING:
    from hubtools import Hub

pytest_plugins = ["pytest_jupyter.jupyter_server"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip locally when something a test needs is missing; fail in CI."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def require_module(name: str, install: str) -> Any:
    """Import ``name``; skip locally if it is missing, fail when CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"{name} is not installed ({install})")


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

    async def open_client(allow_refusal: bool = False, **kwargs: Any) -> RawClient:
        client = RawClient(await jp_ws_fetch("chat-ext", "ws", **kwargs))
        await client.start(allow_refusal)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


ENVIRON = dict(os.environ)  # before any test changes it: what servers are started with


class ServerPool:
    """Fresh ``jupyter server`` processes, each started while the test before runs.

    A server takes seconds to start, mostly importing: ``take`` hands out the one
    started ahead (if it has the same settings) and starts the next one. Every test
    still gets a server of its own, started from this process's first environment.
    """

    def __init__(self, root: pytest.TempPathFactory) -> None:
        self.root = root
        self.spare: JupyterServer | None = None

    def launch(self, base_url: str, args: tuple[str, ...]) -> JupyterServer:
        home = self.root.mktemp("server")
        return JupyterServer(home, base_url=base_url, args=args, environ=ENVIRON).launch()

    def take(self, base_url: str = "/user/alice/", args: tuple[str, ...] = ()) -> JupyterServer:
        spare, self.spare = self.spare, None
        if spare is None or (spare.base_url, spare.args) != (base_url, args):
            if spare is not None:
                spare.stop()
            spare = self.launch(base_url, args)
        try:
            spare.wait_started()
        except BaseException:
            spare.stop()
            raise
        self.spare = self.launch(base_url, args)  # the next test's, most likely
        return spare

    def close(self) -> None:
        if self.spare is not None:
            self.spare.stop()


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture
def server(server_pool: ServerPool) -> Iterator[JupyterServer]:
    """A real ``jupyter server`` process with the extension, under a non-root base_url."""
    process = server_pool.take()
    yield process
    process.stop()


@pytest.fixture
def clients(server: JupyterServer) -> Iterator[Callable[..., ChatClient]]:
    """Make ChatClients of ``server`` (each a new person unless told otherwise)."""
    made: list[ChatClient] = []

    def make(**kwargs: Any) -> ChatClient:
        kwargs.setdefault("url", server.url)
        kwargs.setdefault("token", server.token)
        client = ChatClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def apt_install(program: str, package: str) -> None:
    """Install a Debian package with apt-get when ``program`` is missing and we are root."""
    if os.path.exists(program) or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    with install_lock("apt-get"):  # one at a time, also across pytest-xdist workers
        if os.path.exists(program):  # another worker installed it meanwhile
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], check=False, env=env, capture_output=True
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (never a downloaded browser)."""
    apt_install(CHROMIUM, "chromium")
    require(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install playwright)")
        raise
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


REDIS_SERVER = "/usr/bin/redis-server"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Our own redis-server on a free port (never the machine's), with AOF on."""
    apt_install(REDIS_SERVER, "redis-server")
    missing = f"{REDIS_SERVER} is missing (apt-get install redis-server)"
    require(os.path.exists(REDIS_SERVER), missing)
    require_module("redis", "pip install 'redis[hiredis]'")
    process = RedisServer(REDIS_SERVER, tmp_path / "redis").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A real JupyterHub running the chat service, with users alice, bob and carol."""
    require_module("jupyterhub", "pip install jupyterhub")
    from hubtools import Hub  # it imports this module: not at the top

    instance = Hub(tmp_path_factory.mktemp("hub")).start()
    instance.api("POST", "hub/api/users", {"usernames": ["alice", "bob", "carol"]})
    yield instance
    instance.stop()


SLOW_FIXTURES = {"browser", "hub", "host"}  # browser pages; a JupyterHub and its servers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker, run the modules that start a browser or a Hub first.

    With ``--dist loadfile`` (pyproject's addopts) each module runs whole, in file
    order, on one worker (the tests of a module may share its server or browser), and
    modules are handed out in this order: the longest first, so that short ones fill
    the end of the run. A run without workers keeps the file order.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = {item.path for item in items if SLOW_FIXTURES & set(item.fixturenames)}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order kept


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, for fixtures that save evidence."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
