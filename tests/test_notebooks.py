"""The demo notebooks run top to bottom against a real server."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
VALUE_ID = re.compile(r"'[0-9a-f]{32}'")  # what Room.publish returns, as a cell shows it


def execute(name: str, server: JupyterServer, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Run a notebook in a kernel that finds ``server`` as a notebook on this machine would."""
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JUPYTER_CHAT_EXT_URL", raising=False)
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(server.home)}}).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    shown = [str(o.get("data", {}).get("text/plain", "")) for o in outputs]
    assert not [text for text in shown if VALUE_ID.fullmatch(text)], shown  # opaque to readers
    return outputs


def test_chat_notebook(server: JupyterServer, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = execute("chat.ipynb", server, monkeypatch)
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "recent messages; done" in "".join(o.get("text", "") for o in outputs)
    assert "'status': 'done'" in text
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("general")
        bodies = [m["body"] for m in room.history]
        assert "The **kernel** can talk too" in bodies[-3]
        question, reply = room.history[-2:]
        assert "**cleaned** data" in question["body"] and question["edited"] is not None
        assert question["replies"] == 1 and list(question["reactions"]) == ["👍"]
        assert reply["reply_to"] == question["seq"]
        assert "(1, {'👍': [" in text  # the cell's result
        assert room.values["signal"] == round(math.sin(39 / 4), 3)
    printed = "".join(o.get("text", "") for o in outputs)
    assert f"[('general', {question['seq']})]" in printed  # the search found the edit
    assert "**cleaned** data" in printed  # the export shows it


def test_live_values_notebook(server: JupyterServer, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = execute("live_values.ipynb", server, monkeypatch)
    tables = [str(o.get("data", {}).get("text/html", "")) for o in outputs]
    assert [t for t in tables if "<table" in t and "steps" in t], "the summary is not shown"
    last = str(outputs[-1]["data"]["text/plain"])
    assert last.endswith("100, dtype('float32'))"), last  # the series holds all 100 values
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("lab")
        values = room.values
        assert values["weights"].shape == (8, 8) and values["weights"].dtype == "float32"
        assert list(values["summary"]["metric"]) == ["loss", "steps"]
        assert values["threshold"] == 0.5
        assert len(room.stream("loss").series) == 100


def test_share_results_notebook(server: JupyterServer, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = execute("share_results.ipynb", server, monkeypatch)
    printed = "".join(o.get("text", "") for o in outputs)
    assert "True datetime64" in printed and "float32 True" in printed  # taken back equal
    assert "cell " in printed and "'pandas'" in printed  # the provenance
    assert any("image/png" in o.get("data", {}) for o in outputs[-1:]), "the figure is not shown"
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("results")
        kinds = [m["attachment"]["kind"] for m in room.attachments]
        assert kinds == ["figure", "table", "array"]
        weights = room.take(room.attachments[-1]["seq"])
        assert weights.shape == (16, 16) and weights.dtype == "float32"
