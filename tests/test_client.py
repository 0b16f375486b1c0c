"""ChatClient and kernel discovery against real Jupyter server processes."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError, protocol
from jupyter_chat_ext.discovery import split_url

from helpers import Collector, JupyterServer, TcpProxy, free_port, run_in_kernel


def test_two_clients_chat_both_ways(clients: Any) -> None:
    alice, bob = clients(), clients()
    assert alice.user["username"] != bob.user["username"]
    a_room, b_room = alice.join("general"), bob.join("general")
    a_seen, b_seen = Collector(), Collector()
    a_room.on_message(a_seen)
    b_room.on_message(b_seen)
    sent = a_room.send("hi bob")
    assert sent["seq"] == 1 and sent["user"] == alice.user and sent["body"] == "hi bob"
    assert b_seen.wait_for(1)[0] == sent
    reply = b_room.send("hi alice")
    assert a_seen.wait_for(2)[1] == reply
    assert a_room.messages == b_room.messages == [sent, reply]
    both = {alice.user["username"], bob.user["username"]}
    told = threading.Event()
    a_room.on_presence(lambda _: {u["username"] for u in a_room.members} == both and told.set())
    assert {u["username"] for u in a_room.members} == both or told.wait(10)

    values = Collector()
    b_room.on_data(values)
    a_room.publish("temperature", 21.5)
    event = values.wait_for(1)[0]
    assert event["value"] == 21.5 and event["user"] == alice.user
    assert b_room.values["temperature"] == 21.5
    late = clients().join("general")
    assert late.values["temperature"] == 21.5
    assert [m["body"] for m in late.history] == ["hi bob", "hi alice"]


def test_client_errors_say_what_to_do(server: JupyterServer, clients: Any) -> None:
    with pytest.raises(ChatError) as refused:
        ChatClient(url=server.url, token="wrong")
    assert refused.value.code == "refused" and "token" in str(refused.value)
    with pytest.raises(ChatError) as nothing:
        ChatClient(url=f"http://127.0.0.1:{free_port()}/", token="x", timeout=5)
    assert nothing.value.code == "no_server" and "running" in str(nothing.value)
    with pytest.raises(ChatError) as bad_url:
        ChatClient(url="localhost:8888", token="x")
    assert bad_url.value.code == "no_server" and "http://" in str(bad_url.value)
    room = clients().join("r")
    with pytest.raises(ChatError) as bad_value:
        room.publish("t", object())
    assert bad_value.value.code == "invalid_value"
    with pytest.raises(ChatError) as too_big:
        room.send("x" * 20_000)
    assert too_big.value.code == "message_too_large"
    with pytest.raises(ChatError) as bad_room:
        clients().join("")
    assert bad_room.value.code == "invalid_room"

    errors: list[ChatError] = []
    done = threading.Event()

    def blocking_in_callback(message: dict[str, Any]) -> None:
        try:
            room.send("from a callback")
        except ChatError as exc:
            errors.append(exc)
        done.set()

    room.on_message(blocking_in_callback)
    room.send("trigger")
    assert done.wait(10)
    assert errors[0].code == "wrong_thread"


def test_history_and_seq_continue_after_a_restart(server: JupyterServer) -> None:
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("durable")
        for i in range(3):
            room.send(f"before {i}")
        epoch = room.epoch
    server.restart()
    with ChatClient(url=server.url, token=server.token) as client:
        room = client.join("durable")
        assert room.epoch == epoch
        assert [m["body"] for m in room.history] == ["before 0", "before 1", "before 2"]
        assert room.send("after")["seq"] == 4


def test_resume_after_dropped_connection_loses_and_duplicates_nothing(
    server: JupyterServer, clients: Any
) -> None:
    proxy = TcpProxy(server.port).start()
    try:
        alice = clients(url=f"http://127.0.0.1:{proxy.port}{server.base_url}")
        bob = clients()
        a_room, b_room = alice.join("r"), bob.join("r")
        seen = Collector()
        a_room.on_message(seen)
        for i in range(5):
            b_room.send(f"live {i}")
        seen.wait_for(5)

        proxy.refuse()
        assert proxy.cut() == 1
        for i in range(20):
            b_room.send(f"missed {i}")
        with ThreadPoolExecutor(1) as pool:
            offline_send = pool.submit(a_room.send, "sent while offline", 30)
            proxy.refuse(False)
            ack = offline_send.result(30)
        assert ack["body"] == "sent while offline"
        for i in range(5):
            b_room.send(f"after {i}")
        seen.wait_for(31)
        seqs = [m["seq"] for m in a_room.messages]
        assert seqs == list(range(1, 32)), seqs
        assert [m["seq"] for m in seen.items] == seqs
        assert [m["body"] for m in a_room.messages] == [m["body"] for m in b_room.messages]
        assert proxy.connections >= 2
    finally:
        proxy.stop()


KERNEL_CODE = """
import os
from jupyter_chat_ext import ChatClient
if {drop_env}:
    os.environ.pop("JUPYTER_CHAT_EXT_URL")
    os.environ.pop("JUPYTER_CHAT_EXT_TOKEN")
client = ChatClient()
message = client.join("from-kernels").send({body!r})
client.close()
print("SEQ", message["seq"])
"""


def test_kernel_started_by_the_server_finds_it(server: JupyterServer, clients: Any) -> None:
    watcher = clients().join("from-kernels")
    seen = Collector()
    watcher.on_message(seen)
    out = run_in_kernel(server, KERNEL_CODE.format(drop_env=False, body="via env"))
    assert "SEQ 1" in out
    # Without the exported variables the kernel falls back to its parent's runtime file.
    out = run_in_kernel(server, KERNEL_CODE.format(drop_env=True, body="via JPY_PARENT_PID"))
    assert "SEQ 2" in out
    assert [m["body"] for m in seen.wait_for(2)] == ["via env", "via JPY_PARENT_PID"]


def test_a_refused_connection_says_why(tmp_path: Path) -> None:
    server = JupyterServer(
        tmp_path / "capped", args=("--ChatExtensionApp.max_connections_per_user=1",)
    ).start()
    try:
        # Two clients speaking as one person (through a delegation) share the cap of 1.
        delegation = server.api("POST", "chat-ext/delegation", {})["delegation"]
        with ChatClient(url=server.url, token=server.token, delegation=delegation) as first:
            assert first.user["kernel"] is True
            with pytest.raises(ChatError) as refused:
                ChatClient(url=server.url, token=server.token, delegation=delegation)
        assert refused.value.code == "too_many_connections"
        assert "close some tabs or kernels" in str(refused.value)
    finally:
        server.stop()


def test_a_left_room_refuses_sends_and_values_and_sends_nothing_later(
    server: JupyterServer, clients: Any
) -> None:
    alice = clients()
    room = alice.join("leaving")
    room.publish("kept", 1)
    server.stop()  # the next send waits for the connection, then times out: still queued
    with pytest.raises(ChatError) as timed_out:
        room.send("queued while down", timeout=0.5)
    assert timed_out.value.code == "timeout"
    room.leave()
    for attempt in (lambda: room.send("after leave"), lambda: room.publish("late", 2)):
        with pytest.raises(ChatError) as refused:
            attempt()
        assert refused.value.code == "not_joined" and "join it again" in str(refused.value)
    server.restart(same_port=True)
    again = alice.join("leaving", timeout=20)
    assert again is not room
    again.send("marker")
    with ChatClient(url=server.url, token=server.token) as reader:
        bodies = [m["body"] for m in reader.join("leaving").history]
    assert bodies == ["marker"]


def test_a_room_joined_again_right_after_leave_is_a_new_one_that_works(clients: Any) -> None:
    alice, reader = clients(), clients()
    seen = Collector()
    reader.join("rejoin").on_message(seen)
    for attempt in range(10):  # leave() returns before the client forgets the room
        room = alice.join("rejoin")
        room.leave()
        again = alice.join("rejoin")
        assert again is not room and again.gone is None
        assert again.send(f"back {attempt}")["body"] == f"back {attempt}"
        again.leave()
    assert [m["body"] for m in seen.wait_for(10)] == [f"back {i}" for i in range(10)]


def test_a_bad_topic_is_refused_at_the_call(clients: Any) -> None:
    room = clients().join("topics")
    for topic in ("", "x" * 1000, "bad\ntopic"):
        with pytest.raises(ChatError) as refused:
            room.publish(topic, 1)
        assert refused.value.code == "invalid_topic"


def test_a_url_copied_from_the_browser_works(server: JupyterServer) -> None:
    pasted = [
        (f"{server.url}lab?token={server.token}", None),
        (f"{server.url}tree?token={server.token}#top", None),
        (f"{server.url}lab/tree/work/a.ipynb", server.token),
        (f"{server.url}notebooks/a.ipynb?token=ignored-when-given", server.token),
        (f"{server.url}chat-ext/ws", server.token),
    ]
    for url, token in pasted:
        with ChatClient(url=url, token=token) as client:
            assert client.url == server.url
            assert server.token not in repr(client)
            assert client.join("pasted").send(url.rsplit("/", 1)[-1])["seq"] >= 1
    # A Hub user named like a page route keeps their prefix.
    assert split_url("http://hub/user/lab/lab/tree/x?token=t") == ("http://hub/user/lab/", "t")
    with pytest.raises(ChatError) as wrong:
        ChatClient(url=f"{server.url}lab?token=not-the-token-42")
    assert wrong.value.code == "refused" and "check the token" in str(wrong.value)
    assert "not-the-token-42" not in str(wrong.value)
    with pytest.raises(ChatError) as no_scheme:
        ChatClient(url=f"127.0.0.1:{server.port}/lab?token=secret-in-url")
    assert "http://" in str(no_scheme.value) and "secret-in-url" not in str(no_scheme.value)


class OneShotServer:
    """A TCP server that gives every connection the same treatment: ``answer(sock)``."""

    def __init__(self, answer: Any) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            with conn:
                self.answer(conn)

    def close(self) -> None:
        self.sock.close()


def page(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>")


def login_redirect(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n")


def hang_up(conn: socket.socket) -> None:
    conn.recv(65536)  # the whole request (closing before would reset the connection)


def plain_http_error(conn: socket.socket) -> None:
    conn.recv(65536)  # a TLS client hello, taken for a bad request
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def test_url_mistakes_get_the_right_advice(server: JupyterServer) -> None:
    def error(url: str) -> ChatError:
        with pytest.raises(ChatError) as caught:
            ChatClient(url=url, token=server.token, timeout=30)
        assert server.token not in str(caught.value)
        return caught.value

    # https against a plain-http Jupyter server (which never answers a TLS hello):
    # no wait for the 30 s timeout, and the URL to use instead.
    https = error(server.url.replace("http://", "https://"))
    assert https.code == "no_server"
    assert f"speaks plain http, not https: use {server.url}" in str(https)
    wrong_base = error(f"http://127.0.0.1:{server.port}/")
    assert wrong_base.code == "no_server" and "HTTP 404" in str(wrong_base)
    assert "base URL" in str(wrong_base) and "check the token" not in str(wrong_base)

    other = OneShotServer(page)
    try:
        web_page = error(f"http://127.0.0.1:{other.port}/")
        assert web_page.code == "no_server" and "answered with a web page" in str(web_page)
        assert "Non-websocket" not in str(web_page)
    finally:
        other.close()
    other = OneShotServer(login_redirect)  # as a Hub's single-user server without a login
    try:
        login = error(f"http://127.0.0.1:{other.port}/")
        assert login.code == "refused" and "login page (HTTP 302)" in str(login)
        assert "token is missing or wrong" in str(login) and "base URL" in str(login)
    finally:
        other.close()
    other = OneShotServer(hang_up)
    try:  # then closes without a word: tornado calls that HTTP 599, which is no status
        silent = error(f"http://127.0.0.1:{other.port}/")
        assert silent.code == "no_server" and "could not connect to" in str(silent)
        assert "599" not in str(silent) and "token" not in str(silent)
    finally:
        other.close()
    other = OneShotServer(plain_http_error)
    try:  # a server that answers a TLS hello in plain http
        url = f"http://127.0.0.1:{other.port}/"
        answered = error(url.replace("http://", "https://"))
        assert f"speaks plain http, not https: use {url}" in str(answered)
    finally:
        other.close()


def test_on_state_reports_a_dropped_connection_and_its_return(
    server: JupyterServer, clients: Any
) -> None:
    proxy = TcpProxy(server.port).start()
    try:
        client = clients(url=f"http://127.0.0.1:{proxy.port}{server.base_url}")
        states: list[str] = []
        changed = threading.Condition()

        def on_state(state: str) -> None:
            with changed:
                states.append(state)
                changed.notify_all()

        client.on_state(on_state)
        assert proxy.cut() == 1
        with changed:
            assert changed.wait_for(lambda: len(states) >= 2, 30), states
        assert states == ["reconnecting", "connected"]
        assert client.connected and client.join("after").send("back")["seq"] == 1
    finally:
        proxy.stop()


def test_joins_past_the_rate_limit_are_retried_and_private_names_checked(
    tmp_path: Path,
) -> None:
    args = ("--ChatExtensionApp.join_burst=2", "--ChatExtensionApp.join_rate_limit=5")
    server = JupyterServer(tmp_path / "s", args=args).start()
    try:
        with ChatClient(url=server.url, token=server.token) as client:
            rooms = [client.join(f"r{i}") for i in range(6)]  # 2 at once, then 5/s
            assert all(room.joined for room in rooms)
            with pytest.raises(ChatError) as exists:
                client.join("r0-taken", private=True)
                client.join("r1", private=True)
            assert exists.value.code == "room_exists"
            assert "choose another name" in str(exists.value)
    finally:
        server.stop()


def test_member_count_and_the_whole_member_list_page_by_page(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = [clients() for _ in range(3)]
    rooms = [person.join("crowd") for person in people]
    names = sorted(person.user["username"] for person in people)
    first = rooms[0]
    arrived = threading.Event()
    first.on_presence(lambda _: first.member_count == 3 and arrived.set())
    assert first.member_count == 3 or arrived.wait(10)
    assert rooms[2].member_count == 3  # its `joined` said so
    monkeypatch.setattr(protocol, "MEMBERS_PAGE_MAX", 1)  # a page per member
    assert [user["username"] for user in first.load_members()] == names
    assert sorted(user["username"] for user in first.members) == names
