"""Two hub-service replicas on one Redis, behind one route of a real JupyterHub."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jupyter_chat_ext import ChatClient, ChatError

from conftest import require_module
from helpers import RedisServer, TcpProxy, converse, free_port
from hubtools import CHAT, Hub

WAIT = 30.0


class Replica:
    """One ``jupyter-chat-ext hub-service --redis-url=...`` process, as one pod would be."""

    def __init__(self, hub: Hub, redis_url: str, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.public_url = f"{self.url}/services/chat/"
        self.log = log
        self.env = {**os.environ, **hub.service_environment(self.url)}
        self.env["JUPYTER_CHAT_EXT_COOKIE_SECRET"] = hub.chat_token * 2  # shared by replicas
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "jupyter_chat_ext", "hub-service"),
                    f"--redis-url={self.redis_url}",
                    "--HubChatService.redis_node_timeout=2",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """Die at once, without telling anyone (SIGKILL)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Cluster:
    """A Hub whose chat route leads to a fail-over balancer in front of two replicas."""

    def __init__(self, home: Path, redis: RedisServer) -> None:
        self.redis = redis
        self.ports = (free_port(), free_port())
        self.balancer = TcpProxy(*self.ports)
        self.balancer.start()
        self.hub = Hub(home, chat_url=f"http://127.0.0.1:{self.balancer.port}")
        self.replicas = [
            Replica(self.hub, redis.url, port, home / f"replica{i}.log").start()
            for i, port in enumerate(self.ports)
        ]
        self.hub.start()  # returns once the chat route answers
        for replica in self.replicas:  # and each replica
            wait_for_http(replica.public_url + "oauth_callback")

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.hub.stop()


def wait_for_http(url: str) -> None:
    """Wait until a process we started answers HTTP (it has no other way to tell us)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers (its callback wants parameters)
        except OSError:
            assert time.monotonic() < deadline, f"{url} does not answer"
            time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    require_module("jupyterhub", "pip install jupyterhub")
    instance = Cluster(tmp_path, redis_server)
    instance.hub.api("POST", "hub/api/users", {"usernames": ["alice", "bob"]})
    yield instance
    instance.stop()


def bodies(room: Any) -> list[str]:
    return [m["body"] for m in room.messages]


def wait_for_member(room: Any, username: str) -> None:
    """Wait until ``username`` is among ``room``'s members."""
    arrived = threading.Event()
    room.on_presence(lambda p: p.get("joined", {}).get("username") == username and arrived.set())
    if username not in {u["username"] for u in room.members}:
        assert arrived.wait(WAIT), room.members


def wait_for_bodies(room: Any, expected: list[str]) -> None:
    """Wait until ``room`` holds exactly ``expected`` (in order), via its callback."""
    done = threading.Event()
    room.on_message(lambda _: bodies(room)[-len(expected) :] == expected and done.set())
    if bodies(room)[-len(expected) :] != expected:
        assert done.wait(WAIT), bodies(room)


def test_users_on_two_replicas_chat_and_survive_a_replica_and_redis_restart(
    cluster: Cluster,
) -> None:
    alice_token, bob_token = cluster.hub.token("alice", CHAT), cluster.hub.token("bob", CHAT)
    # alice comes through the Hub's route (the balancer sends her to replica 0);
    # bob is pinned to replica 1.
    with (
        ChatClient(url=cluster.hub.service_url, token=alice_token) as alice,
        ChatClient(url=cluster.replicas[1].public_url, token=bob_token) as bob,
    ):
        a_room = alice.join("ops")
        b_room = bob.join("ops")
        # Presence crosses replicas through Redis: each side sees the other soon.
        wait_for_member(a_room, "bob")
        wait_for_member(b_room, "alice")
        a_room.send("hi bob, from replica 0")
        b_room.send("hi alice, from replica 1")
        expected = ["hi bob, from replica 0", "hi alice, from replica 1"]
        wait_for_bodies(a_room, expected)
        wait_for_bodies(b_room, expected)

        # Replica 0 dies. alice's client reconnects through the route to replica 1
        # and recovers what bob said meanwhile, with no loss.
        cluster.replicas[0].kill()
        for i in range(5):
            b_room.send(f"while replica 0 is down {i}")
        a_room.send("alice is back")
        expected += [f"while replica 0 is down {i}" for i in range(5)] + ["alice is back"]
        wait_for_bodies(a_room, expected)
        wait_for_bodies(b_room, expected)
        for room in (a_room, b_room):
            seqs = [m["seq"] for m in room.messages]
            assert seqs == list(range(1, len(expected) + 1))

        # Redis restarts: sends wait (the service says `unavailable`, the client
        # retries), then delivery resumes; nothing acknowledged was lost.
        cluster.redis.stop()
        with pytest.raises(ChatError) as waiting:
            a_room.send("sent during the Redis restart", timeout=2)
        assert waiting.value.code == "timeout"  # not lost: still queued in the client
        cluster.redis.start()
        expected.append("sent during the Redis restart")  # the client sends it again
        wait_for_bodies(b_room, expected)
        b_room.send("Redis is back")
        expected.append("Redis is back")
        wait_for_bodies(a_room, expected)
        wait_for_bodies(b_room, expected)
    with ChatClient(url=cluster.hub.service_url, token=bob_token) as late:
        history = late.join("ops").messages
        assert [m["body"] for m in history] == expected
        assert [m["user"]["username"] for m in history][:2] == ["alice", "bob"]

    # An attachment uploaded through replica 0 is fetched through replica 1 (the bytes
    # are in Redis); once deleted, through neither.
    import numpy as np

    weights = np.arange(12, dtype="float32").reshape(3, 4)
    cluster.replicas[0].start()  # killed above
    wait_for_http(cluster.replicas[0].public_url + "oauth_callback")
    with (
        ChatClient(url=cluster.replicas[0].public_url, token=alice_token) as alice,
        ChatClient(url=cluster.replicas[1].public_url, token=bob_token) as bob,
    ):
        shared = alice.join("files").share(weights, caption="weights")
        b_files = bob.join("files")
        taken = b_files.take(shared["seq"])
        assert taken.dtype == weights.dtype and (taken == weights).all()
        alice.rooms["files"].delete(shared["seq"])
        with pytest.raises(ChatError) as gone:
            b_files.take(shared["seq"])
        assert gone.value.code == "not_found"


def test_conversations_converge_across_replicas_and_a_hub_admin_may_delete(
    cluster: Cluster,
) -> None:
    """Three people on two replicas reply, react, edit and delete through cut connections."""
    proxies = [TcpProxy(replica.port).start() for replica in cluster.replicas]
    names = ["alice", "bob", "carol"]
    people = [
        ChatClient(
            url=f"http://127.0.0.1:{proxies[i % 2].port}/services/chat/",
            token=cluster.hub.token(name, CHAT),
            timeout=60,
        )
        for i, name in enumerate(names)
    ]
    stop = threading.Event()
    cuts = 0

    def cutter() -> None:
        nonlocal cuts
        while not stop.wait(0.4):
            cuts += sum(proxy.cut() for proxy in proxies)

    try:
        rooms = [person.join("storm") for person in people]
        arrivals = []
        for room in rooms:
            arrived = threading.Event()
            room.on_message(lambda m, arrived=arrived: m["body"] == "the end" and arrived.set())
            arrivals.append(arrived)
        thread = threading.Thread(target=cutter, daemon=True)
        thread.start()
        with ThreadPoolExecutor(3) as pool:
            done = pool.map(lambda i: converse(rooms[i], seed=i, steps=60), range(3))
            assert sum(done) > 120
        stop.set()
        thread.join()
        # A Hub admin (carol, on replica 0) deletes alice's message; bob may not.
        target = rooms[0].send("alice's message")
        with pytest.raises(ChatError) as refused:
            rooms[1].delete(target["seq"])
        assert refused.value.code == "forbidden"
        assert rooms[2].delete(target["seq"])["deleted"]
        rooms[0].send("the end")
        for arrived in arrivals:  # entries arrive in seq order: every change is in by then
            assert arrived.wait(WAIT)
        with ChatClient(
            url=cluster.replicas[1].public_url, token=cluster.hub.token("bob", CHAT)
        ) as fresh:
            expected = fresh.join("storm").messages
        assert expected[-1]["body"] == "the end"
        assert next(m for m in expected if m["seq"] == target["seq"])["body"] == ""
        first = expected[0]["seq"]  # a joiner gets the recent history (100 messages)
        for room in rooms:
            assert [m for m in room.messages if m["seq"] >= first] == expected
        assert cuts >= 2
    finally:
        stop.set()
        for person in people:
            person.close()
        for proxy in proxies:
            proxy.stop()
