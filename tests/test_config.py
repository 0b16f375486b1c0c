"""Configuration: traits are validated and documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from traitlets import TraitError

from jupyter_chat_ext.app import ChatExtensionApp
from jupyter_chat_ext.config import CoreSettings

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
