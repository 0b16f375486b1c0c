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


# Allocates a 256 KiB block, frees it, allocates another: prints 1 if glibc gave the
# second a mapping of its own (mallinfo2().hblks counts them), 0 if it is in the heap.
MMAP_PROBE = """
import ctypes, sys
from jupyter_chat_ext.config import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
libc.free(libc.malloc(256 * 1024))
before = libc.mallinfo2().hblks
block = libc.malloc(256 * 1024)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_tune_malloc_keeps_big_blocks_out_of_the_heap() -> None:
    # glibc alone: freeing a mapped block raises its threshold, so the next one of that
    # size comes from the heap (where, freed, it leaves a hole). Pinned: mapped again.
    def mapped(mode: str) -> int:
        run = [sys.executable, "-c", MMAP_PROBE, mode]
        return int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)

    assert mapped("glibc") == 0
    assert mapped("pinned") == 1
