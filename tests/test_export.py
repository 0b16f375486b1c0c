"""Export (Markdown, HTML, JSON) and import: through real servers, ChatClient and the CLI."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_share import LIMIT, agg_figure, mixed_frame

from jupyter_chat_ext import ChatClient, ChatError, export
from jupyter_chat_ext.client import Room, share
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import MemoryHistory
from jupyter_chat_ext.protocol import AttachmentRequest, ImportedMessage, User
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import Session

from helpers import JupyterServer, ManualTransport, settle

Clients = Callable[..., ChatClient]
SCRIPT = '<script>alert("pwned")</script> & <b>bold</b>'
MATH = "The loss is $\\sum_i (y_i - \\hat{y}_i)^2$ and\n```python\nprint('hi')\n```"


def converse(alice: ChatClient, bob: ChatClient, name: str = "talk") -> list[dict[str, Any]]:
    """A conversation with every kind of change; alice's room's messages as they are now."""
    a_room, b_room = alice.join(name), bob.join(name)
    question = a_room.send("lunch at noon?")
    reply = b_room.send(f"yes, @{alice.user['username']}", reply_to=question["seq"])
    a_room.edit(question["seq"], "lunch at 12:30?")
    b_room.react(question["seq"], "👍")
    a_room.react(question["seq"], "👍")
    a_room.react(reply["seq"], "🎉")
    oops = a_room.send("my password is hunter2")
    a_room.delete(oops["seq"])
    b_room.send(SCRIPT)
    last = a_room.send(MATH)
    assert a_room.messages[-1]["seq"] == last["seq"]
    return a_room.messages


def test_export_in_every_format_shows_every_change(clients: Clients) -> None:
    alice, bob = clients(), clients()
    converse(alice, bob)
    room = clients().join("talk")  # a fresh joiner exports: state from the server
    messages = room.messages
    names = (alice.user["display_name"], bob.user["display_name"])
    question, reply, deleted, _, _ = messages
    assert deleted["deleted"] and reply["reply_to"] == question["seq"]

    markdown = room.export("markdown")
    assert markdown.startswith("# talk\n") and "5 messages" in markdown
    assert "lunch at 12:30?" in markdown and "lunch at noon?" not in markdown
    assert f"↪ reply to #{question['seq']}" in markdown
    assert "*(deleted)*" in markdown and "hunter2" not in markdown
    assert f"👍 2 ({bob.user['username']}, {alice.user['username']})" in markdown
    assert "1 reply" in markdown and "edited " in markdown
    assert f"mentions @{alice.user['username']}" in markdown
    assert MATH in markdown and SCRIPT in markdown  # bodies are their source
    assert all(name in markdown for name in names)
    assert markdown.index("lunch") < markdown.index("yes,") < markdown.index("The loss")

    page = room.export("html")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert f'id="m{question["seq"]}"' in page
    assert f'reply to <a href="#m{question["seq"]}">' in page
    assert '<div class="body deleted">(deleted)</div>' in page and "hunter2" not in page
    assert f'<span class="mention">@{alice.user["username"]}</span>' in page
    assert "$\\sum_i (y_i - \\hat{y}_i)^2$" in page and "print(&#x27;hi&#x27;)" in page

    exported = json.loads(room.export("json"))
    assert exported["format"] == "jupyter-chat-ext" and exported["room"] == "talk"
    assert exported["messages"] == messages and exported["access"] is None
    with pytest.raises(ValueError):
        room.export("pdf")


def test_export_loads_the_whole_room_and_fills_holes(clients: Clients) -> None:
    writer = clients()
    room = writer.join("big")
    seqs = [room.send(f"note {i}")["seq"] for i in range(130)]
    reader = clients().join("big")  # holds the newest 100
    reader.load_around(seqs[5], limit=4)
    assert reader.holes
    exported = json.loads(reader.export("json"))
    assert [m["seq"] for m in exported["messages"]] == seqs
    assert reader.holes == []


def cli(server: JupyterServer, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--url", server.url, "--token", server.token]
    return subprocess.run(
        [sys.executable, "-m", "jupyter_chat_ext", *args, *where],
        capture_output=True,
        text=True,
        env=server.env,  # its JUPYTER_DATA_DIR keeps the CLI's remembered identity
        timeout=120,
    )


def test_cli_export_to_stdout_and_to_a_file(
    server: JupyterServer, clients: Clients, tmp_path: Path
) -> None:
    alice, bob = clients(), clients()
    converse(alice, bob, "cli")
    shown = cli(server, "export", "cli")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# cli\n") and "lunch at 12:30?" in shown.stdout
    out = tmp_path / "cli.html"
    written = cli(server, "export", "cli", "-o", str(out))  # the format from the extension
    assert written.returncode == 0, written.stderr and written.stdout == ""
    assert out.read_text().startswith("<!DOCTYPE html>") and "&lt;script&gt;" in out.read_text()
    as_json = tmp_path / "cli.txt"
    written = cli(server, "export", "cli", "--format", "json", "--output", str(as_json))
    assert written.returncode == 0, written.stderr
    assert json.loads(as_json.read_text())["messages"][0]["body"] == "lunch at 12:30?"
    bad = cli(server, "export", "cli", "-f", "pdf")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_import_is_refused_for_a_non_moderator(
    server: JupyterServer, clients: Clients, tmp_path: Path
) -> None:
    converse(clients(), clients(), "orig")
    path = tmp_path / "orig.json"
    path.write_text(clients().join("orig").export("json"))
    refused = cli(server, "import", str(path), "--room", "copy")
    assert refused.returncode == 1 and "only a moderator" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert clients().join("copy").messages == []  # nothing was stored
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"hello": 1}')
    wrong = cli(server, "import", str(garbage))
    assert wrong.returncode == 1 and "not a jupyter-chat-ext JSON export" in wrong.stderr


def same_conversation(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Equal but for seqs (an import numbers from 1) and what derives from them."""
    assert len(a) == len(b)
    numbers_a = {m["seq"]: i for i, m in enumerate(a)}
    numbers_b = {m["seq"]: i for i, m in enumerate(b)}
    for x, y in zip(a, b, strict=True):
        for field in ("id", "user", "ts", "body", "edited", "deleted", "reactions"):
            assert x[field] == y[field], field
        assert x["mentions"] == y["mentions"] and x["replies"] == y["replies"]
        parent_a, parent_b = x["reply_to"], y["reply_to"]
        assert (parent_a is None) == (parent_b is None)
        if parent_a is not None:
            assert numbers_a[parent_a] == numbers_b[parent_b]


def test_cli_import_round_trip_as_a_moderator(tmp_path: Path, monkeypatch: Any) -> None:
    server = JupyterServer(tmp_path / "server", base_url="/user/alice/").start()
    try:
        # The CLI remembers its identity in the server's data dir: learn whose it is,
        # then make that person a moderator (the login cookie outlives a restart).
        monkeypatch.setenv("JUPYTER_DATA_DIR", server.env["JUPYTER_DATA_DIR"])
        with ChatClient(url=server.url, token=server.token, remember_identity=True) as me:
            moderator = me.user["username"]
        with (
            ChatClient(url=server.url, token=server.token) as one,
            ChatClient(url=server.url, token=server.token) as other,
        ):
            converse(one, other, "orig")
            private = other.join("hideout", private=True, members=[moderator])
            private.send("the key is under the mat")
        # One name per option: jupyter_server takes `=["x"]` as the string '["x"]'.
        server.args = (f"--ChatExtensionApp.moderators={moderator}",)
        server.restart(same_port=True)

        exported = tmp_path / "orig.json"
        assert cli(server, "export", "orig", "-o", str(exported)).returncode == 0
        done = cli(server, "import", str(exported), "--room", "restored")
        assert done.returncode == 0, done.stderr
        assert "imported 5 messages into 'restored'" in done.stdout
        with ChatClient(url=server.url, token=server.token) as reader:
            original = reader.join("orig").messages
            restored = reader.join("restored").messages
            assert [m["seq"] for m in restored] == [1, 2, 3, 4, 5]
            same_conversation(original, restored)
            assert restored[2]["deleted"] and restored[2]["body"] == ""
            assert reader.search("12:30", rooms=["restored"])[0]["seq"] == 1

            again = cli(server, "import", str(exported), "--room", "restored")
            assert again.returncode == 1 and "no history" in again.stderr

            # A private room comes back private, to its members only.
            hidden = tmp_path / "hideout.json"
            assert cli(server, "export", "hideout", "-o", str(hidden)).returncode == 0
            assert cli(server, "import", str(hidden), "--room", "hideout2").returncode == 0
            with pytest.raises(ChatError) as refused:
                reader.join("hideout2")
            assert refused.value.code == "forbidden"
            assert reader.search("mat") == []
    finally:
        server.stop()


ALICE = User(username="alice", name="Alice", display_name="Alice")
BOB = User(username="bob", name="Bob", display_name="Bob")
MOD = User(username="mod", name="Mod", display_name="Mod")


async def test_the_import_op_checks_who_where_and_what() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(moderators=["mod"], max_reactions=2))
    sessions: dict[str, tuple[Session, ManualTransport]] = {}
    for user in (ALICE, MOD):
        transport = ManualTransport()
        session = transport.session = Session(registry, user, transport)
        session.open()
        sessions[user.username] = (session, transport)

    async def ask(who: str, frame: dict[str, Any]) -> dict[str, Any]:
        session, transport = sessions[who]
        transport.frames.clear()
        work = session.receive(json.dumps(frame))
        if work is not None:
            await work
        await settle()
        return next(f for f in transport.frames if f.get("id") == frame["id"])

    def message(seq: int, **fields: Any) -> dict[str, Any]:
        user = {"username": "bob", "name": "Bob", "display_name": "Bob"}
        return {"seq": seq, "id": f"m{seq}", "user": user, "ts": 1.0 + seq, "body": "hi"} | fields

    frame = {"op": "import", "room": "r", "id": "i1", "messages": [message(1)]}
    refused = await ask("alice", frame)
    assert (refused["op"], refused["code"]) == ("error", "forbidden")
    for bad, code in [
        ([message(2)], "invalid_field"),  # numbered from after + 1
        ([message(1), message(2, id="m1")], "invalid_field"),  # one (user, id) once
        ([message(1, body="  ")], "invalid_field"),
        ([message(1, reactions={"a": ["x"], "b": ["x"], "c": ["x"]})], "invalid_field"),
        ([message(1, reactions={"👍\u200b": ["x"]})], "invalid_field"),  # an invisible part
        ([message(1, reactions={"👍": ["bad\nname"]})], "invalid_field"),
        ([message(1, reply_to=1)], "not_found"),
        ([message(1, body="x" * 20_000)], "message_too_large"),
    ]:
        answer = await ask("mod", {**frame, "id": "bad", "messages": bad})
        assert answer.get("code") == code, bad
    await sessions["alice"][0].receive(json.dumps({"op": "join", "room": "r", "id": "j"}))
    parts = [
        [message(1, body="hello @alice", mentions=["alice", "carol"]), message(2, reply_to=1)],
        [message(3, deleted=True, body="gone?", reactions={"👍": ["bob"]}), message(4)],
    ]
    done = await ask("mod", {**frame, "messages": parts[0]})
    assert done == {"op": "import", "room": "r", "id": "i1", "seq": 2}
    done = await ask("mod", {**frame, "id": "i2", "after": 2, "messages": parts[1]})
    assert done["seq"] == 4
    seen = [f for f in sessions["alice"][1].frames if f["op"] == "message"]
    assert [m["seq"] for m in seen] == [1, 2, 3, 4]  # alice, in the room, got them
    room = await registry.get("r")
    stored = room.log.fresh_history()
    assert [(m.seq, m.user.username, m.replies, m.mentions) for m in stored] == [
        (1, "bob", 1, ["alice"]),  # carol is not named in the body: dropped
        (2, "bob", 0, []),
        (3, "bob", 0, []),
        (4, "bob", 0, []),
    ]
    assert stored[2].deleted and stored[2].body == "" and stored[2].reactions == {}
    again = await ask("mod", {**frame, "id": "i3", "messages": [message(1)]})
    assert again["code"] == "room_not_empty"
    private = {
        **frame,
        "id": "i4",
        "room": "secret",
        "access": {"owner": "bob", "members": ["bob"]},
        "messages": [message(1)],
    }
    assert (await ask("mod", private))["seq"] == 1  # restored private to bob
    assert await registry.store.get_access("secret") == ("bob", ["bob"])
    part = {**private, "id": "i5", "after": 1, "access": None, "messages": [message(2)]}
    later = await ask("mod", part)
    assert later["code"] == "forbidden"  # a private room the moderator may not read
    assert (await ask("mod", {**private, "id": "i6", "room": "other", "after": 1}))[
        "code"
    ] == "invalid_field"  # access goes with the first part only


# ---- attachments ---------------------------------------------------------------------

HOSTILE_NAME = '<img src=x onerror=alert(1)>"notes.html'
HOSTILE_FILE = b'<script>alert("file")</script><svg onload=alert(2)>'
LINK = re.compile(r"\]\(([^)]+)\)")


def share_results(room: Room, tmp_path: Path) -> dict[str, Any]:
    """A figure, a table and a hostile file shared in ``room``, and one shared then deleted.

    Returns what was shared (``objects``), the messages (``sent``) and the bytes.
    """
    figure, table = agg_figure(), mixed_frame()
    hostile = tmp_path / HOSTILE_NAME
    hostile.write_bytes(HOSTILE_FILE)
    secret = tmp_path / "secret-plan.csv"
    secret.write_bytes(b"the,secret\n1,2\n")
    sent = {
        "figure": room.share(figure, "the plot"),
        "table": room.share(table),  # no caption: the message is the attachment
        "file": room.share(hostile, "notes"),
    }
    room.delete(room.share(secret, "oops")["seq"])
    sent["reply"] = room.send("see the plot", reply_to=sent["figure"]["seq"])
    data = {
        "figure": share.prepare(figure, None, LIMIT).data,
        "table": share.prepare(table, None, LIMIT).data,
        "file": HOSTILE_FILE,
    }
    return {"objects": {"figure": figure, "table": table}, "sent": sent, "data": data}


def test_file_names_beside_a_markdown_export_cannot_leave_their_directory() -> None:
    data = b"x"
    prefix = hashlib.sha256(data).hexdigest()[:12]
    for name, expected in [
        ("../../etc/passwd", "etc_passwd"),
        ("..", "attachment"),
        (".hidden", "hidden"),
        ("C:\\Windows\\evil.bat", "C_Windows_evil.bat"),
        ('<img src=x onerror=alert(1)>"a.html', "img_src_x_onerror_alert_1_a.html"),
        ("x" * 300 + ".csv", "x" * 76 + ".csv"),  # 80 characters, the suffix kept
        (None, "attachment"),
    ]:
        assert export.file_name({"name": name}, data) == f"{prefix}-{expected}", name


def test_an_attachments_untrusted_fields_are_escaped_in_html_and_fenced_in_markdown() -> None:
    code = "x = '</pre><script>alert(1)</script>'\n```\nnot the end of the code\n"
    attachment = {
        "name": '"><script>alert(2)</script>.svg',
        "mime": "image/svg+xml",
        "size": 30,
        "sha256": "0" * 64,
        "url": "http://127.0.0.1:1/chat-ext/attachments/x (1)?room=r",
        "kind": "image",
        "preview": {},
        "provenance": {"notebook": "<b>nb</b>.ipynb", "execution_count": 3, "code": code},
    }
    user = {"username": "bob", "name": "Bob", "display_name": "Bob"}
    message = {"seq": 1, "id": "m1", "user": user, "ts": 1.0, "body": "", "attachment": attachment}
    svg = b'<svg onload="alert(3)"></svg>'
    files = {1: export.Included(data=svg)}
    page = export.render("html", "r", [message], files=files)
    assert "<script" not in page and "<b>" not in page and "<svg" not in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;.svg" in page
    assert "from &lt;b&gt;nb&lt;/b&gt;.ipynb · cell [3]" in page
    # An SVG is a download no browser renders, never an image.
    assert f"data:application/octet-stream;base64,{base64.b64encode(svg).decode()}" in page
    assert "data:image/svg" not in page
    text = export.render("markdown", "r", [message])  # no files: the server's copy
    assert "](http://127.0.0.1:1/chat-ext/attachments/x%20%281%29?room=r)" in text
    assert "\n````python\n" + code.rstrip("\n") + "\n````\n" in text  # a longer fence


def test_export_includes_attachments_in_every_format(clients: Clients, tmp_path: Path) -> None:
    shared = share_results(clients().join("lab"), tmp_path)
    sent, data = shared["sent"], shared["data"]
    reader = clients().join("lab")  # a fresh joiner exports: state from the server
    attached = {name: sent[name]["attachment"] for name in data}

    # Markdown: files beside it, each linked relative to it, with the same bytes.
    out = tmp_path / "out"
    text = reader.export("markdown", attachments_dir=out / "lab_attachments")
    (out / "lab.md").write_text(text)
    links = LINK.findall(text)
    assert len(links) == 3 and all(link.startswith("lab_attachments/") for link in links)
    linked = {(out / link).read_bytes() for link in links}
    assert linked == set(data.values())
    names = sorted(path.name for path in (out / "lab_attachments").iterdir())
    assert len(names) == 3 and all(re.fullmatch(r"[0-9a-f]{12}-[\w.-]+", n) for n in names)
    figure_file = f"{attached['figure']['sha256'][:12]}-figure.png"
    assert f"![figure.png](lab_attachments/{figure_file})" in text
    assert f"📎 [{export._md_text(HOSTILE_NAME)}](lab_attachments/" in text
    assert "secret" not in text  # the deleted message's attachment is not exported
    assert f"pandas {pd.__version__}" in text  # its provenance
    on_server = reader.export("markdown")  # no directory: the server's copies
    assert attached["figure"]["url"] in on_server

    # HTML: the image embedded, the file a download, every name escaped, no script.
    page = reader.export("html")
    png = base64.b64encode(data["figure"]).decode()
    assert f'<img src="data:image/png;base64,{png}" alt="figure.png">' in page
    hostile = base64.b64encode(HOSTILE_FILE).decode()
    assert f'href="data:application/octet-stream;base64,{hostile}"' in page
    assert "<script" not in page and "<img src=x" not in page and "<svg" not in page
    assert html.escape(HOSTILE_NAME, quote=True) in page
    assert "img-src data:" in page and "secret" not in page

    # JSON: the bytes in base64, beside the attachment's fields.
    exported = {m["seq"]: m for m in json.loads(reader.export("json"))["messages"]}
    for name, expected in data.items():
        attachment = exported[sent[name]["seq"]]["attachment"]
        assert base64.b64decode(attachment["data"]) == expected
        assert {k: v for k, v in attachment.items() if k != "data"} == attached[name]
    deleted = [m for m in exported.values() if m["deleted"]]
    assert len(deleted) == 1 and deleted[0]["attachment"] is None

    # One attachment the server no longer has does not fail the export.
    held = reader.state.message(sent["file"]["seq"])
    assert held is not None
    held["attachment"]["url"] = held["attachment"]["url"].replace(
        attached["file"]["sha256"], "0" * 64
    )
    page = reader.export("html")
    assert "unavailable (not_found: " in page and f"base64,{png}" in page
    missing = json.loads(reader.export("json"))["messages"]
    unavailable = next(m["attachment"] for m in missing if m["seq"] == sent["file"]["seq"])
    assert "data" not in unavailable and unavailable["unavailable"].startswith("not_found")
    with pytest.raises(ValueError):
        reader.export("html", attachments_dir=out)


def test_an_import_part_waits_for_at_most_ten_uploads() -> None:
    # A server keeps max_pending_uploads (20 by default) uploads of one user waiting:
    # each part's uploads are made just before it is sent, so few wait at a time.
    shared = AttachmentRequest(upload="u-" + "0" * 32)
    messages = [
        ImportedMessage(seq=seq, id=f"m{seq}", user=BOB, ts=seq, body="", attachment=shared)
        for seq in range(1, 26)
    ]
    messages.insert(3, ImportedMessage(seq=26, id="plain", user=BOB, ts=0.5, body="hi"))
    parts = export.import_parts("r", messages, None, 10**6, iter(range(10)).__next__)
    assert [len(part.messages) for part in parts] == [11, 10, 5]
    assert [sum(m.attachment is not None for m in part.messages) for part in parts] == [
        10,
        10,
        5,
    ]


def test_attachments_round_trip_through_the_cli_export_and_import(
    tmp_path: Path, monkeypatch: Any
) -> None:
    server = JupyterServer(tmp_path / "server", base_url="/user/alice/").start()
    try:
        monkeypatch.setenv("JUPYTER_DATA_DIR", server.env["JUPYTER_DATA_DIR"])
        with ChatClient(url=server.url, token=server.token, remember_identity=True) as me:
            moderator = me.user["username"]
        server.args = (f"--ChatExtensionApp.moderators={moderator}",)
        server.restart(same_port=True)
        with ChatClient(url=server.url, token=server.token) as alice:
            shared = share_results(alice.join("lab"), tmp_path)
        sent, data, objects = shared["sent"], shared["data"], shared["objects"]

        # Markdown to a file: the attachments go in FILE_attachments/ beside it.
        notes = tmp_path / "notes.md"
        written = cli(server, "export", "lab", "-o", str(notes))
        assert written.returncode == 0, written.stderr
        links = LINK.findall(notes.read_text())
        assert links and all(link.startswith("notes_attachments/") for link in links)
        assert {(tmp_path / link).read_bytes() for link in links} == set(data.values())

        exported = tmp_path / "lab.json"
        assert cli(server, "export", "lab", "-o", str(exported)).returncode == 0
        done = cli(server, "import", str(exported), "--room", "restored")
        assert done.returncode == 0, done.stderr
        assert "imported 5 messages into 'restored'" in done.stdout
        assert "warning" not in done.stderr
        with ChatClient(url=server.url, token=server.token) as reader:
            original = reader.join("lab").messages
            restored = reader.join("restored")
            same_conversation(original, restored.messages)
            seqs = {m["id"]: m["seq"] for m in restored.messages}
            for name in data:
                before = sent[name]
                after = restored.state.message(seqs[before["id"]])
                assert after is not None and after["user"] == before["user"]  # the author's
                fields = ("name", "mime", "size", "sha256", "kind", "preview", "provenance")
                for field in fields:
                    assert after["attachment"][field] == before["attachment"][field], field
            taken = {name: restored.take(seqs[sent[name]["id"]]) for name in data}
            assert taken["figure"].data == data["figure"]
            pd.testing.assert_frame_equal(taken["table"], objects["table"], check_freq=False)
            assert taken["file"] == HOSTILE_FILE
            assert [m["attachment"] for m in restored.messages if m["deleted"]] == [None]

            # An export made before exports held attachments: imported without them.
            older = json.loads(exported.read_text())
            for message in older["messages"]:
                if message["attachment"] is not None:
                    message["attachment"].pop("data")
            exported.write_text(json.dumps(older))
            done = cli(server, "import", str(exported), "--room", "older")
            assert done.returncode == 0, done.stderr
            assert done.stderr.count("warning: message") == 3
            assert f"{HOSTILE_NAME!r} was left out: the export has no data" in done.stderr
            kept = reader.join("older").messages
            assert all(m["attachment"] is None for m in kept)
            table = next(m for m in kept if m["id"] == sent["table"]["id"])
            assert table["body"].startswith("(attachment 'table.value' not imported: ")
    finally:
        server.stop()
