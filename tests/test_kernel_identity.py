"""Who a kernel speaks as when several people share it, and its connections' lifetime.

A real server and kernel; two "tabs" are two kernel clients (each its own frontend
session id) that lend the kernel their viewer's delegation through the Chat widget's
comm, exactly as the widget does, then run cells.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient

from helpers import JupyterServer, KernelSession, delegate


class Tab:
    """One frontend connection to the kernel: its own session id, like a browser tab."""

    def __init__(self, kernel: KernelSession) -> None:
        self.kernel = kernel
        self.client = kernel.connect()

    def lend(self, comm_id: str, value: str) -> None:
        """What the widget does: send the viewer's delegation on the widget's comm."""
        content = {"method": "custom", "content": {"kind": "delegation", "delegation": value}}
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": content})
        self.client.shell_channel.send(msg)
        self.run("pass")  # the shell handles messages in order: the comm message is done

    def run(self, code: str) -> str:
        return self.kernel.run(code, self.client).strip()

    def close(self) -> None:
        self.client.stop_channels()


def test_a_shared_kernel_speaks_as_whoever_ran_the_cell(server: JupyterServer) -> None:
    with (
        ChatClient(url=server.url, token=server.token) as reader,
        KernelSession(server) as kernel,
    ):
        room = reader.join("shared")
        left = threading.Event()
        room.on_presence(lambda event: "left" in event and left.set())
        owner_tab, alice_tab, bob_tab = (Tab(kernel) for _ in range(3))
        try:
            comm_id = alice_tab.run(
                "from jupyter_chat_ext import Chat\nchat = Chat('shared')\nprint(chat.model_id)"
            )
            # two new anonymous people (token auth without a login cookie)
            alice, bob = (delegate(server)[0]["delegation"] for _ in range(2))
            alice_tab.lend(comm_id, alice)
            bob_tab.lend(comm_id, bob)
            senders = {}
            for name, tab in (("alice", alice_tab), ("bob", bob_tab), ("owner", owner_tab)):
                sent = tab.run(f"print(chat.send('from {name}')['user']['username'])")
                senders[name] = sent
            # Re-running the cell in alice's tab: a new Chat, the same connection.
            alice_tab.run("chat = Chat('shared')\nchat.send('alice again')")
            messages = room.messages
            by_body = {m["body"]: m["user"] for m in messages}
            assert by_body["from alice"]["kernel"] and by_body["from bob"]["kernel"]
            assert len({senders["alice"], senders["bob"], senders["owner"]}) == 3
            assert by_body["alice again"]["username"] == senders["alice"]
            assert not by_body["from owner"].get("kernel")
            # One member per person, however many Chats: alice's, bob's and the owner's.
            assert _members_become(room, {reader.user["username"], *senders.values()})
            members = {m["username"]: m for m in room.members}
            assert members[senders["alice"]]["kernel"]  # alice's kernel, not alice
            # Closing every Chat closes the kernel's connections.
            alice_tab.run("import gc\n[o.close() for o in gc.get_objects() if isinstance(o, Chat)]")
            assert left.wait(20)
            assert _members_become(room, {reader.user["username"]})
        finally:
            for tab in (owner_tab, alice_tab, bob_tab):
                tab.close()


def _members_become(room: Any, names: set[str]) -> bool:
    changed = threading.Event()

    def check(_: Any = None) -> None:
        if {m["username"] for m in room.members} == names:
            changed.set()

    room.on_presence(check)
    check()
    return changed.wait(20)


def test_remembered_identity_is_kept_across_clients(
    server: JupyterServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    args = {"url": server.url, "token": server.token}
    with ChatClient(**args, remember_identity=True) as first:
        name = first.user["username"]
    with ChatClient(**args, remember_identity=True) as again:
        assert again.user["username"] == name
    with ChatClient(**args) as other:  # the default: a new identity each time
        assert other.user["username"] != name
    store = tmp_path / "data" / "jupyter_chat_ext" / "identity.json"
    assert store.stat().st_mode & 0o777 == 0o600
