"""Configuration: traits are validated and documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError

from jupyter_chat_ext import Chat
from jupyter_chat_ext.app import ChatExtensionApp
from jupyter_chat_ext.config import CoreSettings
from jupyter_chat_ext.discovery import HUB_SERVICE_ENV, HUB_SERVICE_KERNEL_ENV, TOKEN_ENV, URL_ENV

from conftest import require_module
from helpers import JupyterServer

DOCS = Path(__file__).parent.parent / "docs"


def test_every_trait_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    traits = {
        **CoreSettings.class_own_traits(config=True),
        **ChatExtensionApp.class_own_traits(config=True),
    }
    for name, trait in traits.items():
        assert f"| `{name}` |" in text, f"{name} is missing from docs/configuration.md"
        assert trait.help, f"{name} has no help"


@pytest.mark.parametrize(
    ("name", "value"), [("max_message_size", 0), ("typing_timeout", -1.0), ("history_on_join", -5)]
)
def test_out_of_range_values_name_the_trait(name: str, value: object) -> None:
    with pytest.raises(TraitError, match=name):
        ChatExtensionApp(**{name: value})


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("--ChatExtensionApp.max_message_size=-1", "max_message_size"),
        ("--ChatExtensionApp.typing_timeout=soon", "typing_timeout"),
        ("", "db_path"),
    ],
)
def test_a_bad_setting_stops_the_server_naming_it(tmp_path: Path, setting: str, named: str) -> None:
    server = JupyterServer(tmp_path, args=(setting,) if setting else ())
    if not setting:
        server.db_path = Path("/proc/no-such-dir/chat.sqlite")
    with pytest.raises(RuntimeError, match="jupyter server exited"):
        server.start()
    log = server.log_path.read_text()
    assert named in log and "the server does not start" in log, log
    assert "jupyter_chat_ext | extension was successfully loaded" not in log
    default_db = tmp_path / "data" / "jupyter_chat_ext" / "chat.sqlite"
    assert not default_db.exists() and not server.db_path.exists()


PUBLIC_URL = "https://hub.example.org/services/chat/"
KERNEL_URL = "http://chat-ext:10101/services/chat/"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give back the variables the in-process server exports, as they were."""
    for name in (URL_ENV, TOKEN_ENV, HUB_SERVICE_ENV, HUB_SERVICE_KERNEL_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def hub_urls(chat_config: dict[str, Any], kernel_url: str) -> None:
    """Configure the in-process server as a single-user server of a Hub with a chat."""
    chat_config.update(hub_service_url=PUBLIC_URL, hub_service_kernel_url=kernel_url)
    chat_config.update(tune_gc=False, tune_malloc=False)  # this is the test process


@pytest.mark.parametrize(
    ("kernel_url", "expected"), [(KERNEL_URL, KERNEL_URL), ("", PUBLIC_URL)], ids=["set", "unset"]
)
@pytest.mark.usefixtures("clean_env", "hub_urls")
async def test_kernels_use_the_kernel_url_and_widgets_the_public_one(
    kernel_url: str, expected: str, jp_serverapp: Any
) -> None:
    # what the server does once it runs (pytest-jupyter's server never calls it)
    await jp_serverapp.extension_manager.start_extension("jupyter_chat_ext")
    (app,) = jp_serverapp.extension_manager.extension_apps["jupyter_chat_ext"]
    assert (app.hub_service_url, app.hub_service_kernel_url) == (PUBLIC_URL, kernel_url)
    assert os.environ[URL_ENV] == expected  # what every kernel started from now inherits
    assert Chat().url == PUBLIC_URL  # the browser's address stays the public one


@pytest.mark.parametrize("value", ["chat-ext:10101/services/chat/", "ws://chat-ext:10101/"])
def test_a_kernel_url_that_is_not_http_names_the_setting(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TraitError, match=r"hub_service_kernel_url.*http:// or https://"):
        ChatExtensionApp(hub_service_kernel_url=value)
    monkeypatch.setenv(HUB_SERVICE_KERNEL_ENV, value)
    with pytest.raises(TraitError, match=HUB_SERVICE_KERNEL_ENV):
        ChatExtensionApp().hub_service_kernel_url  # noqa: B018 - the default is read here


def test_pip_install_enables_the_extension() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = listing.stdout + listing.stderr
    line = next(line for line in output.splitlines() if "jupyter_chat_ext" in line)
    assert "enabled" in line, output


# Allocates a 16 MiB block, frees it, allocates another: prints 1 if glibc gave the
# second a mapping of its own (mallinfo2().hblkhd counts mapped bytes), 0 if it came
# from the heap. glibc serves a request from a free heap chunk before it considers
# mmap, so the block is far larger than anything the interpreter leaves free in its
# heap at start (with or without .pyc files), and under glibc's 32 MiB ceiling for
# the dynamic threshold.
MMAP_PROBE = """
import ctypes, sys
from jupyter_chat_ext.config import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

SIZE = 16 * 1024 * 1024
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
libc.free(libc.malloc(SIZE))
before = libc.mallinfo2().hblkhd
block = libc.malloc(SIZE)
print(int(libc.mallinfo2().hblkhd - before >= SIZE))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize("compiled", [True, False], ids=["pyc", "no-pyc"])
def test_tune_malloc_keeps_big_blocks_out_of_the_heap(compiled: bool, tmp_path: Path) -> None:
    # glibc alone: freeing a mapped block raises its threshold, so the next one of that
    # size comes from the heap (where, freed, it leaves a hole). Pinned: mapped again.
    # Without .pyc files, compiling leaves free chunks in the heap: same answer.
    def mapped(mode: str) -> int:
        cache = [] if compiled else ["-X", f"pycache_prefix={tmp_path / mode}"]
        run = [sys.executable, *cache, "-c", MMAP_PROBE, mode]
        return int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)

    assert mapped("glibc") == 0
    assert mapped("pinned") == 1


def test_both_hosts_read_one_definition_of_the_core_settings() -> None:
    from jupyter_chat_ext.config import ChatSettings

    require_module("jupyterhub", "pip install jupyterhub")
    from jupyter_chat_ext.hub import HubChatService

    service = HubChatService()
    extension = ChatExtensionApp()
    assert extension.chat_settings() == service.chat_settings() == ChatSettings()
    assert extension.max_frame_size() == service.max_frame_size()
    for name in ("heartbeat_interval", "heartbeat_timeout", "handshake_timeout"):
        assert getattr(extension, name) == getattr(service, name), name
    tight = ChatExtensionApp(max_message_size=4096, max_value_size=1000)
    assert tight.chat_settings().max_message_size == 4096
    assert tight.max_frame_size() == 6 * 4096 + 65_536
