"""The demo notebooks run top to bottom against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def test_chat_notebook_runs_and_talks_to_the_server(
    server: JupyterServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The kernel is started by nbclient, not the server: it finds the server through
    # the runtime directory, as a notebook on the same machine would.
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JUPYTER_CHAT_EXT_URL", raising=False)
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    nb = nbformat.read(NOTEBOOKS / "chat.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs: list[Any] = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("general")
        assert "Hello from a notebook!" in [m["body"] for m in room.history]
        assert room.values["temperature"] == 21.5
        assert room.values["progress"]["step"] == 9
