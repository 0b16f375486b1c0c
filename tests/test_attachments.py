"""Attachments on the server: upload, send, fetch, access, limits, deletion (docs/protocol.md).

Against the in-process server (pytest-jupyter): raw WebSocket clients for the chat, and
HTTP requests made as the same person (the connection's login cookie with the token).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jupyter_core.utils import ensure_event_loop
from tornado.httpclient import HTTPClientError

from jupyter_chat_ext import values
from jupyter_chat_ext.attachments import (
    BUNDLE_MIME,
    TRANSFERS_PER_PERSON,
    VALUE_MIME,
    AttachmentStore,
    MemoryAttachments,
    Ref,
    SQLiteAttachments,
    Upload,
    accept_upload,
    check_content,
    fetch_attachment,
)
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.history import MemoryHistory
from jupyter_chat_ext.protocol import Message, User
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import Session

from conftest import RawConnect
from helpers import ManualTransport, RawClient, login_cookie, png, settle


class Person:
    """One person: a chat connection, and HTTP requests made as them."""

    def __init__(self, client: RawClient, fetch: Any, port: int, cookie: str | None = None) -> None:
        self.client = client
        # The server names its login cookie after the host asked for: the WebSocket's
        # (localhost), so HTTP requests ask for that host too.
        self.cookie = login_cookie(client) if cookie is None else cookie
        self.host = f"localhost:{port}"
        self._fetch = fetch
        self.username = client.hello["user"]["username"]

    async def request(
        self, method: str, *path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, Any] | bytes, Any]:
        """Status, JSON answer (or bytes), headers: errors are answers, not exceptions."""
        params = {k: v for k, v in headers.items() if k.startswith("param_")}
        headers = {k: v for k, v in headers.items() if not k.startswith("param_")}
        headers.setdefault("Cookie", self.cookie)
        headers.setdefault("Host", self.host)
        try:
            response = await self._fetch(
                "chat-ext",
                "attachments",
                *path,
                method=method,
                body=body,
                headers=headers,
                params={k[6:]: v for k, v in params.items()},
                allow_nonstandard_methods=True,
            )
        except HTTPClientError as error:
            response = error.response
            assert response is not None
        kind = response.headers.get("Content-Type", "")
        answer = json.loads(response.body) if kind.startswith("application/json") else response.body
        return response.code, answer, response.headers

    async def upload(
        self, room: str, data: bytes, mime: str = "image/png", name: str = "figure.png"
    ) -> tuple[int, Any]:
        status, answer, _ = await self.request(
            "POST",
            body=data,
            param_room=room,
            **{"Content-Type": mime, "X-Chat-Name": quote(name)},
        )
        return status, answer

    async def send(
        self, room: str, frame_id: str, upload: str, body: str = "", **attachment: Any
    ) -> None:
        """Send a message carrying ``upload`` (the answer is left to read)."""
        frame = {"op": "send", "room": room, "id": frame_id, "body": body}
        await self.client.send({**frame, "attachment": {"upload": upload, **attachment}})

    async def share(self, room: str, data: bytes, frame_id: str, **attachment: Any) -> Any:
        status, answer = await self.upload(room, data)
        assert status == 201, answer
        await self.send(room, frame_id, answer["upload"], kind="figure", **attachment)
        return await self.client.expect("message", id=frame_id)

    async def fetch(self, url: str) -> tuple[int, Any, Any]:
        path, _, query = url.partition("?")
        sha = path.rsplit("/", 1)[1]
        room = query.split("=", 1)[1]
        from urllib.parse import unquote

        return await self.request("GET", sha, param_room=unquote(room))


@pytest.fixture
def people(connect: RawConnect, jp_fetch: Any, jp_http_port: int) -> Any:
    async def make() -> Person:
        return Person(await connect(), jp_fetch, jp_http_port)

    return make


async def test_share_fetch_and_delete_an_attachment(people: Any, tmp_path: Path) -> None:
    alice, bob = await people(), await people()
    await alice.client.join("lab")
    await bob.client.join("lab")
    data = png(seed=1)
    message = await alice.share(
        "lab",
        data,
        "fig",
        preview={"width": 2, "height": 1},
        provenance={"notebook": "a.ipynb", "execution_count": 3, "code": "plot()"},
    )
    attachment = message["attachment"]
    assert attachment["sha256"] == hashlib.sha256(data).hexdigest()
    assert (attachment["name"], attachment["mime"], attachment["size"]) == (
        "figure.png",
        "image/png",
        len(data),
    )
    assert attachment["provenance"]["code"] == "plot()"
    assert attachment["url"] == f"chat-ext/attachments/{attachment['sha256']}?room=lab"
    seen = await bob.client.expect("message", id="fig")
    assert seen["attachment"] == attachment  # the socket carries the description only

    status, body, headers = await bob.fetch(attachment["url"])
    assert status == 200 and body == data
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("sandbox")
    assert headers["Content-Disposition"].startswith("inline")

    late = await people()  # a later joiner gets it in the history
    joined = await late.client.join("lab")
    assert joined["history"][-1]["attachment"] == attachment

    # The author deletes it: the description and the bytes are gone, from the file too.
    await alice.client.send({"op": "delete", "room": "lab", "id": "del", "seq": message["seq"]})
    change = await bob.client.expect("change", id="del")
    assert "attachment" not in change["message"]
    assert (await bob.fetch(attachment["url"]))[0] == 404
    blobs = next(tmp_path.rglob("chat-attachments.sqlite"))
    with sqlite3.connect(blobs) as db:
        assert db.execute("SELECT count(*) FROM blobs").fetchone() == (0,)
    for file in blobs.parent.glob("chat-attachments.sqlite*"):
        assert data not in file.read_bytes()


async def test_the_same_bytes_shared_twice_are_kept_once_until_both_are_deleted(
    people: Any,
) -> None:
    alice = await people()
    await alice.client.join("twice")
    data = png(seed=2)
    first = await alice.share("twice", data, "one")
    second = await alice.share("twice", data, "two")
    assert first["attachment"]["sha256"] == second["attachment"]["sha256"]
    await alice.client.send({"op": "delete", "room": "twice", "id": "d1", "seq": first["seq"]})
    await alice.client.expect("change", id="d1")
    assert (await alice.fetch(second["attachment"]["url"]))[1] == data
    await alice.client.send({"op": "delete", "room": "twice", "id": "d2", "seq": second["seq"]})
    await alice.client.expect("change", id="d2")
    assert (await alice.fetch(second["attachment"]["url"]))[0] == 404


async def test_a_retried_send_naming_other_bytes_keeps_the_first_and_holds_nothing_more(
    people: Any, tmp_path: Path
) -> None:
    alice = await people()
    await alice.client.join("retry")
    first_bytes, other_bytes = png(seed=60) + b"first-60", png(seed=61) + b"other-61"
    first = await alice.share("retry", first_bytes, "same-id")
    status, other = await alice.upload("retry", other_bytes)
    assert status == 201
    await alice.send("retry", "same-id", other["upload"])  # the same id, other bytes
    again = await alice.client.expect("message", id="same-id")
    assert again["attachment"] == first["attachment"]  # the stored message, unchanged
    assert (await alice.fetch(first["attachment"]["url"]))[1] == first_bytes
    other_url = first["attachment"]["url"].replace(first["attachment"]["sha256"], other["sha256"])
    assert (await alice.fetch(other_url))[0] == 404  # no message of the room holds it
    blobs = next(tmp_path.rglob("chat-attachments.sqlite"))
    with sqlite3.connect(blobs) as db:
        kept = [row[0] for row in db.execute("SELECT sha256 FROM blobs")]
    assert kept == [first["attachment"]["sha256"]]  # the other bytes are gone


async def test_a_private_rooms_attachments_are_not_found_by_outsiders(people: Any) -> None:
    owner, outsider, member = await people(), await people(), await people()
    await owner.client.join("secret", private=True, members=[member.username])
    message = await owner.share("secret", png(seed=3), "s")
    url = message["attachment"]["url"]
    assert (await owner.fetch(url))[0] == 200
    assert (await member.fetch(url))[0] == 200  # a member who never joined
    status, answer, _ = await outsider.fetch(url)
    assert status == 404 and answer["code"] == "not_found"
    assert "figure" not in json.dumps(answer)  # not even its name
    # The same bytes asked for in a public room the outsider may read: not there.
    await outsider.client.join("public")
    sha = message["attachment"]["sha256"]
    assert (await outsider.request("GET", sha, param_room="public"))[0] == 404
    # Uploading into the private room, or sending someone else's upload: refused.
    status, answer = await outsider.upload("secret", png(seed=4))
    assert status == 403 and answer["code"] == "forbidden"
    status, theirs = await owner.upload("secret", png(seed=5))
    await outsider.send("public", "steal", theirs["upload"])
    assert (await outsider.client.expect("error", id="steal"))["code"] == "not_found"
    # Without credentials: refused, as the socket is.
    status, _, _ = await outsider.request(
        "GET", sha, param_room="secret", Cookie="", Authorization=""
    )
    assert status == 403


async def test_uploads_are_checked_before_they_are_kept(
    people: Any, chat_config: dict[str, Any]
) -> None:
    alice = await people()
    await alice.client.join("checks")
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024)
    status, answer = await alice.upload("checks", too_big)
    assert status == 413 and answer["code"] == "attachment_too_large"
    assert "max_attachment_size" in answer["message"]
    for mime, data in [
        ("image/png", b"GIF89a not a png"),
        ("image/svg+xml", b"<html><script>x</script></html>"),
        (VALUE_MIME, b"\x00\x00\x00\x05junk!"),
        (BUNDLE_MIME, b"[1, 2]"),
        ("not a mime", b"x"),
    ]:
        status, answer = await alice.upload("checks", data, mime=mime)
        assert status == 400 and answer["code"] == "invalid_field", (mime, answer)
    status, answer = await alice.upload("checks", b"x", mime="text/plain", name="../etc/passwd")
    assert status == 400 and "X-Chat-Name" in answer["message"]
    status, answer = await alice.upload("", png())
    assert status == 403 and answer["code"] == "invalid_room"


async def test_a_send_names_an_upload_of_its_own_with_a_bounded_preview(people: Any) -> None:
    alice = await people()
    await alice.client.join("sends")
    status, up = await alice.upload("sends", png(seed=6))
    assert status == 201
    big = {"rows": ["x" * 1000] * 70}
    await alice.client.send(
        {
            "op": "send",
            "room": "sends",
            "id": "p",
            "body": "",
            "attachment": {"upload": up["upload"], "preview": big},
        }
    )
    refused = await alice.client.expect("error", id="p")
    assert refused["code"] == "invalid_field" and "preview" in refused["message"]
    await alice.send("sends", "e", "u-nope")
    assert (await alice.client.expect("error", id="e"))["code"] == "not_found"
    status, other_room = await alice.upload("elsewhere", png(seed=7))
    await alice.client.send(
        {
            "op": "send",
            "room": "sends",
            "id": "r",
            "body": "x",
            "attachment": {"upload": other_room["upload"]},
        }
    )
    assert (await alice.client.expect("error", id="r"))["code"] == "not_found"
    # A refused send (an empty body needs an attachment) keeps nothing held.
    await alice.client.send({"op": "send", "room": "sends", "id": "empty", "body": " "})
    assert (await alice.client.expect("error", id="empty"))["code"] == "invalid_field"


@pytest.mark.parametrize("chat_config", [{"max_pending_uploads": 2}])
async def test_uploads_not_yet_sent_are_limited_per_person(people: Any) -> None:
    alice = await people()
    await alice.client.join("many")
    uploads = [await alice.upload("many", png(seed=10 + i)) for i in range(2)]
    assert [status for status, _ in uploads] == [201, 201]
    status, answer = await alice.upload("many", png(seed=20))
    assert (
        status == 429 and answer["code"] == "rate_limited" and "not yet sent" in answer["message"]
    )
    await alice.client.send(
        {
            "op": "send",
            "room": "many",
            "id": "s",
            "body": "",
            "attachment": {"upload": uploads[0][1]["upload"]},
        }
    )
    await alice.client.expect("message", id="s")
    assert (await alice.upload("many", png(seed=21)))[0] == 201  # one was sent: room again


async def stalled_upload(person: Person, port: int, token: str, room: str) -> asyncio.StreamWriter:
    """An upload of 10 MiB whose body stops after 1 MiB: its peer sends no more."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /a%40b/chat-ext/attachments?room={room} HTTP/1.1\r\n"
            f"Host: {person.host}\r\nCookie: {person.cookie}\r\nAuthorization: {token}\r\n"
            f"Content-Type: image/png\r\nX-Chat-Name: a.png\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + png(seed=70)
        + bytes(1024 * 1024)
    )
    await writer.drain()
    return writer


async def test_a_persons_stalled_transfers_wait_their_turn(
    people: Any, jp_http_port: int, jp_auth_header: dict[str, str], jp_serverapp: Any
) -> None:
    # An upload holds its body in memory until it is all in, a fetch its bytes until the
    # peer has read them, and a peer may stall: a person's transfers beyond
    # TRANSFERS_PER_PERSON wait (their bodies unread), so stalled ones hold a bounded
    # amount of memory, and hold up nobody else's.
    alice, bob = await people(), await people()
    await alice.client.join("slow")
    shared = await alice.share("slow", png(seed=71), "shared")
    token = jp_auth_header["Authorization"]
    stalled = [
        await stalled_upload(alice, jp_http_port, token, "slow")
        for _ in range(TRANSFERS_PER_PERSON)
    ]
    upload = asyncio.ensure_future(alice.upload("slow", png(seed=72)))
    fetch = asyncio.ensure_future(alice.fetch(shared["attachment"]["url"]))
    assert (await bob.upload("slow", png(seed=73)))[0] == 201  # others are not held up
    assert (await bob.fetch(shared["attachment"]["url"]))[0] == 200
    await settle()
    assert not upload.done() and not fetch.done()  # alice's wait for her stalled ones
    for writer in stalled[:2]:
        writer.close()
    assert (await upload)[0] == 201
    assert (await fetch)[0] == 200
    for writer in stalled[2:]:
        writer.close()


async def test_a_kernel_uploads_as_its_person_with_a_delegation(
    people: Any, jp_fetch: Any, jp_http_port: int
) -> None:
    alice = await people()
    await alice.client.join("kernel", private=True)
    response = await jp_fetch(
        "chat-ext",
        "delegation",
        method="POST",
        body=b"",
        headers={"Cookie": alice.cookie, "Host": alice.host},
    )
    delegation = json.loads(response.body)["delegation"]
    # The kernel has the server's token and the delegation only.
    kernel = Person(alice.client, jp_fetch, jp_http_port, cookie="")
    status, _ = await kernel.upload("kernel", png(seed=30))
    assert status == 403  # as itself (a new anonymous person): not a member
    status, _, _ = await kernel.request(
        "POST",
        body=png(seed=30),
        param_room="kernel",
        **{"Content-Type": "image/png", "X-Chat-Delegation": delegation, "Cookie": ""},
    )
    assert status == 201


def test_content_checks_accept_what_the_clients_make() -> None:
    import numpy as np

    check_content("image/png", "a.png", png())
    check_content(VALUE_MIME, "a", values.pack(np.arange(6.0).reshape(2, 3)))
    check_content(BUNDLE_MIME, "b", json.dumps({"text/html": "<b>x</b>"}).encode())
    check_content("image/svg+xml", "c.svg", b'<?xml version="1.0"?>\n<svg xmlns="x"></svg>')
    check_content("application/octet-stream", "d.bin", bytes(range(256)))


# ---------------------------------------------------------------- the stores, one contract


@pytest.fixture(params=["sqlite", "memory", "redis"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AttachmentStore, Any]]:
    """Each attachment store, and a way to read every byte it keeps (to prove erasure)."""
    if request.param == "sqlite":
        path = tmp_path / "a.sqlite"
        store: AttachmentStore = SQLiteAttachments(path)

        def everything() -> bytes:
            return b"".join(p.read_bytes() for p in tmp_path.glob("a.sqlite*"))

        yield store, everything
    elif request.param == "memory":
        memory = MemoryAttachments()
        yield memory, lambda: b"".join(memory._blobs.values())
    else:
        import redis as sync_redis

        from jupyter_chat_ext.redis import RedisAttachments, RedisBackplane

        url = request.getfixturevalue("redis_server").url
        backplane = RedisBackplane(url)
        plain = sync_redis.Redis.from_url(url)

        def dump() -> bytes:
            kept = []
            for key in plain.scan_iter():
                if plain.type(key) == b"string":
                    kept.append(plain.get(key) or b"")
            return b"".join(kept)

        yield RedisAttachments(backplane), dump
        plain.close()
        ensure_event_loop().run_until_complete(backplane.close())


def upload_of(
    data: bytes, token: str, room: str = "r", user: str = "alice", ttl: float = 60
) -> Upload:
    return Upload(
        token,
        user,
        room,
        "f.png",
        "image/png",
        len(data),
        hashlib.sha256(data).hexdigest(),
        time.time() + ttl,
    )


async def test_every_store_keeps_blobs_once_and_erases_them_when_nothing_holds_them(
    blobs: tuple[AttachmentStore, Any],
) -> None:
    store, everything = blobs
    data = png(seed=40) + b"unique-marker-40"
    first, second = upload_of(data, "u-1"), upload_of(data, "u-2", room="s")
    await store.put(first, data)
    await store.put(second, data)
    assert everything().count(b"unique-marker-40") == 1  # one copy
    assert await store.pending("alice", time.time()) == 2
    assert await store.claim("u-1", time.time()) == first
    assert await store.claim("u-1", first.expires + 1) is None  # expired
    assert await store.claim("u-x", time.time()) is None
    assert await store.fetch(first.sha256, "r") is None  # uploaded, not yet in a message

    one, two = Ref("r", "alice", "m1"), Ref("s", "alice", "m2")
    assert await store.hold(first, one)
    assert await store.hold(first, one)  # a retried send: held once
    assert await store.pending("alice", time.time()) == 1
    stored = await store.fetch(first.sha256, "r")
    assert stored is not None and (stored.data, stored.mime, stored.name) == (
        data,
        "image/png",
        "f.png",
    )
    assert await store.fetch(first.sha256, "s") is None  # not in that room (yet)
    assert await store.hold(second, two)
    assert (await store.fetch(first.sha256, "s")) is not None

    await store.release(first.sha256, one)
    assert await store.fetch(first.sha256, "r") is None
    assert (await store.fetch(first.sha256, "s")) is not None  # still held by the other
    await store.release(first.sha256, two)
    assert await store.fetch(first.sha256, "s") is None
    assert b"unique-marker-40" not in everything()  # erased, not only unlisted
    await store.close()


async def test_every_store_sweeps_uploads_never_sent(blobs: tuple[AttachmentStore, Any]) -> None:
    store, everything = blobs
    data = png(seed=41) + b"unique-marker-41"
    kept = png(seed=42) + b"unique-marker-42"
    await store.put(upload_of(data, "u-old", ttl=1), data)
    await store.put(upload_of(kept, "u-new", ttl=600), kept)
    await store.sweep(time.time() + 5)
    assert await store.claim("u-old", time.time() + 5) is None
    assert b"unique-marker-41" not in everything()
    assert b"unique-marker-42" in everything()  # still waiting to be sent
    assert await store.pending("alice", time.time() + 5) == 1
    await store.close()


# ------------------------------------------------------------------- import (moderators)


async def test_an_import_restores_attachments_from_the_importers_uploads() -> None:
    registry = RoomRegistry(MemoryHistory(), ChatSettings(moderators=["mod"]))
    mod = User(username="mod", name="Mod", display_name="Mod")
    transport = ManualTransport()
    session = transport.session = Session(registry, mod, transport)
    session.open()

    async def ask(frame: dict[str, Any]) -> dict[str, Any]:
        transport.frames.clear()
        work = session.receive(json.dumps(frame))
        if work is not None:
            await work
        await settle()
        return next(f for f in transport.frames if f.get("id") == frame["id"])

    def message(seq: int, **fields: Any) -> dict[str, Any]:
        user = {"username": "bob", "name": "Bob", "display_name": "Bob"}
        return {"seq": seq, "id": f"m{seq}", "user": user, "ts": 1.0 + seq, "body": ""} | fields

    data = png(seed=50)
    upload = await accept_upload(registry, "mod", "restored", "image/png", "plot.png", data)
    shared = {"upload": upload.token, "kind": "figure", "provenance": {"code": "plot()"}}
    # A part that fails (its second message is bad) keeps nothing held.
    bad = [message(1, attachment=shared), message(2, body=" ")]
    failed = await ask({"op": "import", "room": "restored", "id": "i0", "messages": bad})
    assert failed["op"] == "error"
    assert await registry.attachments.described(upload.sha256, "restored") is None

    good = [message(1, attachment=shared), message(2, body="and a caption")]
    done = await ask({"op": "import", "room": "restored", "id": "i1", "messages": good})
    assert (done["op"], done["seq"]) == ("import", 2), done
    first = (await registry.store.fetch("restored", after=0, limit=2))[0]
    assert isinstance(first, Message) and first.attachment is not None
    assert (first.user.username, first.attachment.name, first.attachment.provenance) == (
        "bob",
        "plot.png",
        {"code": "plot()"},
    )
    fetched = await fetch_attachment(registry, "carol", "restored", upload.sha256)
    assert fetched.data == data
    someone_elses = await accept_upload(registry, "carol", "other", "image/png", "x.png", png(51))
    part = [message(1, attachment={"upload": someone_elses.token})]
    refused = await ask({"op": "import", "room": "other", "id": "i2", "messages": part})
    assert (refused["op"], refused["code"]) == ("error", "not_found")
    await registry.close()
