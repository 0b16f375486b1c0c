"""Rooms shared through a real redis-server: two registries stand for two replicas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import msgspec
import pytest

from jupyter_chat_ext.access import Action, refusal
from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.conversation import ChangeEntry
from jupyter_chat_ext.history import Entry, MemoryHistory
from jupyter_chat_ext.protocol import (
    Access,
    Change,
    DataEvent,
    Delete,
    Edit,
    Error,
    ImportDone,
    Joined,
    Mention,
    Mentions,
    Message,
    Presence,
    ProtocolError,
    React,
    ReadMarker,
    TypingEvent,
    User,
    decode_server,
    encode,
)
from jupyter_chat_ext.rooms import RoomRegistry
from jupyter_chat_ext.session import Session

from helpers import RedisServer

ALICE = User(username="alice", name="alice", display_name="Alice", initials="AL")
BOB = User(username="bob", name="bob", display_name="Bob", initials="BO")
CAROL = User(username="carol", name="carol", display_name="Carol", initials="CA")
SETTINGS = ChatSettings()
WAIT = 10.0


class Member:
    """A connection that records the frames it is sent; tests await the ones they expect."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.frames: list[Any] = []
        self._changed = asyncio.Event()

    def write(self, frame: bytes, key: Hashable | None = None, binary: bool = False) -> None:
        self.frames.append(decode_server(frame) if not binary else ("binary", frame))
        self._changed.set()

    def evicted(self, room: str) -> None:
        self.frames.append(("evicted", room))
        self._changed.set()

    async def next(self, kind: type, where: Any = lambda f: True) -> Any:
        """The first frame of ``kind`` (matching ``where``), waiting for it if needed."""

        async def wait() -> Any:
            seen = 0
            while True:
                for frame in self.frames[seen:]:
                    if isinstance(frame, kind) and where(frame):
                        return frame
                seen = len(self.frames)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), WAIT)

    def of(self, kind: type) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]


class Connection(Member):
    """The transport of a real :class:`Session`, recording what it is sent."""

    def send(self, frame: bytes, binary: bool = False) -> bool:
        self.write(frame, binary=binary)
        return True

    def close(self, code: int, reason: str) -> None:
        self.frames.append(("closed", code))
        self._changed.set()


def connect(registry: RoomRegistry, user: User) -> tuple[Session, Connection]:
    """A connection of ``user`` to the replica ``registry`` stands for (after hello)."""
    connection = Connection(user)
    session = Session(registry, user, connection)
    session.open()
    return session, connection


async def frame(session: Session, **fields: Any) -> None:
    """Hand ``session`` a client frame, awaiting it if the session says to."""
    pending = session.receive(msgspec.json.encode(fields))
    if pending is not None:
        await pending


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition nothing signals (a timer in the code under test)."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


async def until_async(read: Callable[[], Awaitable[int]], expected: int) -> None:
    """Poll Redis until ``read`` gives ``expected``."""
    async with asyncio.timeout(WAIT):
        while await read() != expected:
            await asyncio.sleep(0.01)


async def _subscribers(redis: Any, channel: str) -> int:
    return int(dict(await redis.pubsub_numsub(channel))[channel.encode()])


def make_registry(url: str, node_timeout: float = 10.0) -> RoomRegistry:
    from jupyter_chat_ext.redis import RedisBackplane, RedisHistory

    backplane = RedisBackplane(url, node_timeout)
    return RoomRegistry(RedisHistory(backplane), SETTINGS, backplane)


@contextlib.asynccontextmanager
async def replicas(
    url: str, node_timeout: float = 10.0
) -> AsyncIterator[tuple[RoomRegistry, RoomRegistry]]:
    """Two registries on one Redis, as two replicas of the service would be."""
    one, two = make_registry(url, node_timeout), make_registry(url, node_timeout)
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


async def test_a_message_posted_on_one_replica_reaches_the_other_once_in_order(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        alice, bob = Member(ALICE), Member(BOB)
        room_a, room_b = await one.get("lobby"), await two.get("lobby")
        await room_a.join(alice, None, None)
        joined, _ = await room_b.join(bob, None, None)
        assert joined.epoch == room_a.epoch  # one log, shared
        await alice.next(Presence, lambda p: "bob" in {u.username for u in p.joined})
        assert {u.username for u in room_a.roster.members} == {"alice", "bob"}

        for i in range(20):
            await (room_a if i % 2 else room_b).post(alice if i % 2 else bob, f"m{i}", f"hello {i}")
        await bob.next(Message, lambda m: m.seq == 20)
        await alice.next(Message, lambda m: m.seq == 20)
        for member in (alice, bob):
            seqs = [m.seq for m in member.of(Message)]
            assert seqs == list(range(1, 21)), seqs  # own echoes dropped, nothing twice

        # A send retried through the other replica (after a lost ack) is not stored twice.
        await room_b.post(alice, "m1", "hello 1")
        assert (
            room_b.seq == 20 and (await two.store.fetch("lobby", after=0, limit=50))[-1].seq == 20
        )


async def test_presence_values_typing_and_access_cross_replicas(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        alice, bob = Member(ALICE), Member(BOB)
        room_a = await one.get("values")
        await room_a.join(alice, None, None)
        room_a.publish(alice, "temperature", b"21.5")

        # bob's replica loads the room later: it finds alice and her latest value in Redis.
        room_b = await two.get("values")
        joined, _ = await room_b.join(bob, None, None)
        assert [u.username for u in joined.members] == ["bob", "alice"]
        assert bytes(joined.values["temperature"].value) == b"21.5"

        room_a.publish(alice, "temperature", b"22.0")
        event = await bob.next(DataEvent, lambda e: bytes(e.value) == b"22.0")
        assert event.user.username == "alice"

        room_b.roster.set_typing(BOB, True)
        typing = await alice.next(TypingEvent)
        assert typing.user.username == "bob" and typing.active

        room_a.leave(alice)
        left = await bob.next(Presence, lambda p: bool(p.left))
        assert [user.username for user in left.left] == ["alice"]
        assert [u.username for u in room_b.roster.members] == ["bob"]
        # Nobody is in the room on replica one any more: it stops listening to it.
        await until(lambda: "values" not in one)
        redis = one.backplane.redis  # type: ignore[attr-defined]
        await until_async(lambda: _subscribers(redis, "chat-ext:room:values"), 1)


async def test_private_room_access_is_shared(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        alice, bob = Member(ALICE), Member(BOB)
        await one.store.set_access("secret", "alice", ["alice", "bob"])
        room_a, room_b = await one.get("secret"), await two.get("secret")
        assert room_b.access is not None and room_b.access.owner == "alice"
        await room_a.join(alice, None, None)
        await room_b.join(bob, None, None)
        room_a.set_access(Access(room="secret", owner="alice", members=["alice"]))
        assert await bob.next(tuple, lambda f: f[0] == "evicted") == ("evicted", "secret")
        assert refusal(room_b.access, "bob", Action.READ) is not None


async def test_a_replica_that_stops_beating_loses_its_users(redis_server: RedisServer) -> None:
    async with replicas(redis_server.url, node_timeout=1.0) as (one, two):
        alice, bob = Member(ALICE), Member(BOB)
        room_a, room_b = await one.get("r"), await two.get("r")
        await room_a.join(alice, None, None)
        await room_b.join(bob, None, None)
        await bob.next(Presence, lambda p: "alice" in {u.username for u in p.joined})
        # The replica dies without a word: its heartbeat stops, nothing is published.
        for task in one.backplane._tasks:  # type: ignore[attr-defined]
            task.cancel()
        gone = await bob.next(Presence, lambda p: bool(p.left))
        assert [user.username for user in gone.left] == ["alice"]


async def test_redis_down_refuses_sends_keeps_local_delivery_and_recovers(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        alice, bob, carol = Member(ALICE), Member(BOB), Member(BOB)
        room_a, room_b = await one.get("r"), await two.get("r")
        await room_a.join(alice, None, None)
        await room_b.join(bob, None, None)
        await room_a.post(alice, "before", "stored before the outage")
        await bob.next(Message, lambda m: m.id == "before")

        redis_server.stop()
        with pytest.raises(ProtocolError) as refused:
            await room_a.post(alice, "during", "sent while Redis is down")
        assert refused.value.code == "unavailable" and refused.value.retry_after
        await room_b.join(carol, None, None)  # a second connection on the same replica
        room_b.publish(bob, "t", b"1")  # local delivery goes on
        assert bytes((await carol.next(DataEvent)).value) == b"1"

        redis_server.start()
        # The client retries the refused send (same id): stored once, delivered to all.
        while True:
            try:
                await room_a.post(alice, "during", "sent while Redis is down")
                break
            except ProtocolError as exc:
                assert exc.code == "unavailable"
                await asyncio.sleep(exc.retry_after or 0.1)  # what ChatClient does
        message = await bob.next(Message, lambda m: m.id == "during")
        assert message.seq == 2  # acknowledged history survived the restart
        assert [m.body for m in await two.store.fetch("r", after=0, limit=10)] == [
            "stored before the outage",
            "sent while Redis is down",
        ]


async def test_messages_arriving_out_of_order_are_delivered_in_seq_order() -> None:
    store = MemoryHistory()
    registry = RoomRegistry(store, SETTINGS)
    room = await registry.get("r")
    member = Member(ALICE)
    await room.join(member, None, None)
    stored = [
        (await store.append(Entry("r", f"m{i}", BOB, 0.0, f"body {i}"))).message for i in range(3)
    ]
    room.deliver(stored[2])  # the third arrives first: it waits
    room.deliver(stored[1])
    assert member.of(Message) == []
    # Nobody delivers the first: after a short wait the gap is read from the store.
    await member.next(Message, lambda m: m.seq == 3)
    assert [m.seq for m in member.of(Message)] == [1, 2, 3]
    assert msgspec.structs.asdict(member.of(Message)[0])["body"] == "body 0"
    await registry.close()


async def test_private_creation_is_atomic_across_replicas(redis_server: RedisServer) -> None:
    async with replicas(redis_server.url) as (one, two):
        room_a, room_b = await one.get("mine"), await two.get("mine")
        outcomes = await asyncio.gather(
            room_a.create_private("alice", [], "a"),
            room_b.create_private("bob", [], "b"),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, ProtocolError)]
        assert len(refused) == 1 and refused[0].code == "room_exists", outcomes
        owner = "alice" if outcomes[0] is None else "bob"
        assert await one.store.get_access("mine") == (owner, [owner])

        # A public room someone is in on the other replica is not new.
        bob = Member(BOB)
        await (await two.get("busy")).join(bob, None, None)
        with pytest.raises(ProtocolError) as exists:
            await (await one.get("busy")).create_private("alice", [], "c")
        assert exists.value.code == "room_exists"


async def test_changes_cross_replicas_in_order_and_late_joiners_get_them_applied(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        alice, bob = Member(ALICE), Member(BOB)
        room_a, room_b = await one.get("conv"), await two.get("conv")
        await room_a.join(alice, None, None)
        await room_b.join(bob, None, None)
        await room_a.post(alice, "m1", "hello")  # 1
        await room_a.post(alice, "m2", "a secret")  # 2
        await room_a.change(alice, Edit(room="conv", id="e1", seq=1, body="hello, all"), False)
        await room_b.change(bob, React(room="conv", id="r1", seq=1, emoji="+1"), False)  # 4
        await room_b.post(bob, "m3", "hi!", reply_to=1)  # 5
        await room_a.change(alice, Delete(room="conv", id="d1", seq=2), False)  # 6

        for member in (alice, bob):
            await member.next(Change, lambda c: c.seq == 6)
            entries = [f for f in member.frames if isinstance(f, Message | Change)]
            assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]  # in order, each once
            assert [getattr(e, "kind", "message") for e in entries] == [
                *("message", "message", "edit", "react", "message", "delete")
            ]
        # What a replica relays is what the replica that stored it delivers.
        assert [encode(f) for f in alice.frames if isinstance(f, Message | Change)] == [
            encode(f) for f in bob.frames if isinstance(f, Message | Change)
        ]
        deleted = bob.of(Change)[-1].message
        assert (deleted.seq, deleted.deleted, deleted.body) == (2, True, "")

        def check(history: list[Message]) -> None:
            first, second, third = history
            assert (first.body, first.edited is not None) == ("hello, all", True)
            assert (first.reactions, first.replies, first.rev) == ({"+1": ["bob"]}, 1, 5)
            assert (second.deleted, second.body) == (True, "")
            assert (third.reply_to, third.parent_replies) == (1, 1)

        # A late joiner on replica two (which has the room loaded)...
        joined, _ = await room_b.join(Member(CAROL), None, None)
        assert joined.seq == 6
        check(joined.history)
        # ... and on a replica that loads the room from Redis now.
        three = make_registry(redis_server.url)
        try:
            joined, _ = await (await three.get("conv")).join(Member(CAROL), None, None)
            assert joined.seq == 6
            check(joined.history)
        finally:
            await three.close()


async def test_changes_to_one_message_from_two_replicas_are_all_applied(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        await one.store.append(Entry("busy", "m1", ALICE, 1.0, "react to me"))
        users = [User(username=f"u{i}", name=f"u{i}", display_name=f"U{i}") for i in range(60)]
        work = [
            (one if i % 2 else two).store.change(
                ChangeEntry("busy", f"r{i}", user, 2.0, "react", 1, emoji="+1"), 10
            )
            for i, user in enumerate(users)
        ]
        results = await asyncio.gather(*work)
        assert sorted(r.change.seq for r in results) == list(range(2, 62))
        (message,) = await one.store.fetch("busy", before=None, limit=10)
        assert sorted(message.reactions["+1"]) == sorted(u.username for u in users)
        assert message.rev == 61


async def test_mentions_and_read_markers_reach_a_user_on_another_replica(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        await one.start()  # as a server does before it takes connections
        await two.start()
        await one.store.append(Entry("general", "b0", BOB, 1.0, "bob was here"))  # known
        alice, alice_sees = connect(one, ALICE)
        bob, bob_sees = connect(two, BOB)  # on replica two, in no room at all
        sessions = [alice, bob]
        try:
            await frame(alice, op="join", room="general", id="j")
            await alice_sees.next(Joined)
            await frame(alice, op="send", room="general", id="m1", body="@bob look at this")
            mention = await bob_sees.next(Mention)
            assert (mention.room, mention.message.seq) == ("general", 2)
            message = mention.message
            assert (message.body, message.mentions) == ("@bob look at this", ["bob"])
            assert not alice_sees.of(Mention)

            # Durable too: a connection of bob's that opens now is told after hello.
            later, later_sees = connect(two, BOB)
            sessions.append(later)
            unread = await later_sees.next(Mentions)
            assert [(m.room, m.seq) for m in unread.mentions] == [("general", 2)]

            # bob reads on replica one: his connections on replica two follow.
            reader, reader_sees = connect(one, BOB)
            sessions.append(reader)
            await frame(reader, op="join", room="general", id="j")
            await frame(reader, op="read", room="general", seq=2, id="r1")
            mine = await reader_sees.next(ReadMarker)
            assert (mine.room, mine.seq, mine.id) == ("general", 2, "r1")
            for sees in (bob_sees, later_sees):
                marker = await sees.next(ReadMarker)
                assert (marker.room, marker.seq, marker.id) == ("general", 2, None)
            assert await two.store.get_read("bob", "general") == 2
            assert await two.store.unread_mentions("bob", 10) == []

            # The other way (replica two to one), published after replica one's marker
            # reached two: by then the reader has every echo of its own it would get.
            await frame(later, op="join", room="general", id="j")
            await frame(later, op="read", room="general", seq=1, id="r2")  # behind: stays
            assert (await later_sees.next(ReadMarker, lambda m: m.id)).seq == 2
            await frame(later, op="join", room="other", id="j")
            await frame(later, op="read", room="other", seq=0, id="r3")
            await reader_sees.next(ReadMarker, lambda m: m.room == "other")
            markers = [(m.room, m.seq, m.id) for m in reader_sees.of(ReadMarker)]
            assert markers == [  # its own marker once (the echo dropped), then two's
                ("general", 2, "r1"),
                ("general", 2, None),
                ("other", 0, None),
            ]
        finally:
            for session in sessions:
                session.close()


async def test_an_import_on_one_replica_reaches_the_other_in_order(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server.url) as (one, two):
        await one.start()
        await two.start()
        bob, bob_sees = connect(two, BOB)
        mod, mod_sees = connect(one, ALICE)
        mod.moderator = True
        try:
            await frame(bob, op="join", room="restored", id="j")
            await bob_sees.next(Joined)

            def part(after: int, count: int) -> list[dict[str, Any]]:
                return [
                    {
                        "seq": s,
                        "id": f"m{s}",
                        "user": msgspec.to_builtins(CAROL),
                        "ts": float(s),
                        "body": f"@bob hello {s}",
                        "mentions": ["bob"],
                        **({"reply_to": 1} if s > 1 else {}),
                    }
                    for s in range(after + 1, after + count + 1)
                ]

            for after, count, frame_id in ((0, 3, "i1"), (3, 2, "i2")):
                await frame(
                    mod,
                    op="import",
                    room="restored",
                    id=frame_id,
                    after=after,
                    messages=part(after, count),
                )
                done = await mod_sees.next(ImportDone, lambda d, i=frame_id: d.id == i)
                assert done.seq == after + count
            await bob_sees.next(Message, lambda m: m.seq == 5)
            received = bob_sees.of(Message)
            assert [(m.seq, m.user.username, m.parent_replies) for m in received] == [
                (1, "carol", None),
                (2, "carol", 1),
                (3, "carol", 2),
                (4, "carol", 3),
                (5, "carol", 4),
            ]
            assert not bob_sees.of(Mention)  # an import notifies nobody
            first = (await two.store.fetch("restored", after=0, limit=1))[0]
            assert isinstance(first, Message) and (first.replies, first.rev) == (4, 5)
            unread = await two.store.unread_mentions("bob", 10)
            assert [m.seq for m in unread] == [5, 4, 3, 2, 1]

            await frame(mod, op="import", room="restored", id="i3", after=0, messages=part(0, 1))
            refused = await mod_sees.next(Error, lambda e: e.id == "i3")
            assert refused.code == "room_not_empty"
        finally:
            bob.close()
            mod.close()
