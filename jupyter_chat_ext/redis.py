"""Redis backplane and Redis Streams history: the only module importing redis.

Replicas of the hub service that share one Redis (``--redis-url``) share rooms:

- each room's messages are a Stream (``chat-ext:room:<name>:log``) whose entry ids are
  the messages' ``seq`` (``<seq>-0``); a Lua script assigns the seq, de-duplicates
  retried sends by ``(user, id)``, appends and publishes, all in one step;
- each room has a channel (``chat-ext:room:<name>``) that a replica subscribes to only
  while the room is loaded there (someone is in it); presence, typing, live values and
  access changes are published there, each stamped with the sending replica's node id
  so that it can drop its own echoes;
- presence and the latest value per topic are also kept in hashes, for replicas that
  load the room later; replicas beat in ``chat-ext:nodes`` and the users of a replica
  that stops beating are dropped from presence.

Redis down: local delivery goes on (typing, values, presence within a replica), sends
are refused with ``unavailable`` (clients retry), the connection is retried with
backoff, and a replica catches up on every loaded room once Redis is back.
Acknowledged history is as durable as Redis is configured to be (use AOF with
``appendfsync always`` or ``everysec``; see docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backplane import Backplane, Receiver, Snapshot
from .history import Appended, Entry, HistoryStore, RoomLog, StoreUnavailable, new_epoch
from .protocol import Message, Presence, User, decode_user, encode

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX: Final = "chat-ext:"
NODES: Final = PREFIX + "nodes"  # a sorted set (node -> last beat) and a channel (departures)
ROOM_CHANNEL: Final = PREFIX + "room:"
NODE_ID_LENGTH: Final = 16
OUTBOX_LIMIT: Final = 10_000  # relayed frames held while Redis is slow or away
BATCH: Final = 512  # relayed frames (or appends) written per round trip
MAX_CONNECTIONS: Final = 64
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _key(room: str, part: str) -> str:
    return f"{ROOM_CHANNEL}{room}:{part}"


# The relay envelope, the one format on the room channels and in the values hashes:
# one byte for the frame's kind (b"t" text, b"b" binary), then (on channels only) the
# sending replica's node id, then the frame.
def _kind(binary: bool) -> bytes:
    return b"b" if binary else b"t"


def _envelope(node: str, frame: bytes, binary: bool) -> bytes:
    """A frame as published on a room channel by replica ``node``."""
    return _kind(binary) + node.encode() + frame


def _open_envelope(data: bytes) -> tuple[str, bytes, bool]:
    """(node, frame, binary) of a frame published on a room channel."""
    return data[1 : 1 + NODE_ID_LENGTH].decode(), data[1 + NODE_ID_LENGTH :], data[:1] == b"b"


def _kept(frame: bytes, binary: bool) -> bytes:
    """A latest value as kept in a room's values hash."""
    return _kind(binary) + frame


def _unkept(data: bytes) -> tuple[bytes, bool]:
    return data[1:], data[:1] == b"b"


_OPEN = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local recent = {}
if tonumber(ARGV[2]) > 0 then
  recent = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, seq, recent}
"""

# KEYS: meta, log, ids. ARGV: epoch (if new), dedup field, message JSON before and
# after its seq, channel, publish prefix (kind + node).
_APPEND = """
local known = redis.call('HGET', KEYS[3], ARGV[2])
if known then
  local entry = redis.call('XRANGE', KEYS[2], known .. '-0', known .. '-0')
  return {1, entry[1][2][2]}
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local message = ARGV[3] .. seq .. ARGV[4]
redis.call('XADD', KEYS[2], seq .. '-0', 'm', message)
redis.call('HSET', KEYS[3], ARGV[2], seq)
redis.call('PUBLISH', ARGV[5], ARGV[6] .. message)
return {0, message}
"""

_message_decoder = msgspec.json.Decoder(Message)
_SEQ_MARK: Final = b',"seq":0,'


def connect(url: str) -> aioredis.Redis:
    """A Redis client that fails fast (a few short retries) when Redis is away.

    At most :data:`MAX_CONNECTIONS` at once: past that, callers wait for one (a burst
    of joins after a restart must not open thousands of connections).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)


async def _reach(work: Awaitable[T]) -> T:
    """Await a Redis call; an unreachable Redis becomes :class:`StoreUnavailable`."""
    try:
        return await work
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"the chat service's Redis cannot be reached ({exc})") from exc


class RedisBackplane(Backplane):
    """Rooms shared by every process on one Redis (see the module docstring)."""

    distributed = True

    def __init__(self, url: str, node_timeout: float = 10.0) -> None:
        self.url = url
        self.node = uuid.uuid4().hex[:NODE_ID_LENGTH]
        self.node_timeout = node_timeout
        self.redis = connect(url)
        self._pubsub = self.redis.pubsub()
        self._subscribed_nodes = False
        self._watching: dict[str, int] = {}  # room -> times loaded and not yet unloaded
        self._subscribed: set[str] = set()
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._outbox: deque[tuple[Any, ...]] = deque(maxlen=OUTBOX_LIMIT)
        self._wake = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._clock_offset = 0.0  # Redis time minus ours
        self._receiver: Receiver | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._down_since: float | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, receiver: Receiver) -> None:
        """Beat once (if Redis is there) and start reading, writing and beating."""
        self._receiver = receiver
        try:
            await self._beat()
        except _UNREACHABLE as exc:
            self._unreachable("start", exc)
        for work in (self._read(), self._write(), self._heartbeat()):
            self._spawn(work)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Tell the other replicas this one is gone, then disconnect."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # redis-py may swallow a cancellation: the loops also check _closed
            self._wake.set()
            self._beat_now.set()
            await asyncio.wait(tasks, timeout=5)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(NODES, self.node)
                pipe.publish(NODES, self.node)
                await asyncio.wait_for(pipe.execute(), 2)
        except (*_UNREACHABLE, asyncio.TimeoutError):
            pass
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.redis.aclose()

    def _unreachable(self, what: str, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("chat: Redis at %s unreachable (%s: %s); retrying", self.url, what, exc)

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.warning(
                "chat: Redis reachable again after %.1f s", time.monotonic() - self._down_since
            )
            self._down_since = None

    # ------------------------------------------------------------------ rooms

    async def watch(self, room: str) -> None:
        """Subscribe to ``room``'s channel; return once Redis confirmed it."""
        self._watching[room] = self._watching.get(room, 0) + 1
        try:
            await _reach(self._sync(room))
        except BaseException:
            self.unwatch(room)
            raise

    def unwatch(self, room: str) -> None:
        """Unsubscribe from ``room``'s channel (unless it was loaded again meanwhile)."""
        left = self._watching.get(room, 0) - 1
        if left > 0:
            self._watching[room] = left
            return
        self._watching.pop(room, None)
        self._spawn(self._unsubscribe(room))

    async def _unsubscribe(self, room: str) -> None:
        with contextlib.suppress(*_UNREACHABLE):  # the connection is gone, and with it
            await self._sync(room)  # its subscriptions

    async def _sync(self, room: str) -> None:
        """Make the subscription to ``room`` match whether it is watched."""
        channel = (ROOM_CHANNEL + room).encode()
        async with self._lock:
            want, have = room in self._watching, room in self._subscribed
            if want and not have:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirm[channel] = confirmed
                try:
                    await self._pubsub.subscribe(channel)
                    await asyncio.wait_for(asyncio.shield(confirmed), self.node_timeout)
                except asyncio.TimeoutError:
                    raise RedisTimeoutError("no subscription confirmation") from None
                finally:
                    self._confirm.pop(channel, None)
                self._subscribed.add(room)
            elif have and not want:
                self._subscribed.discard(room)
                await self._pubsub.unsubscribe(channel)

    async def snapshot(self, room: str) -> Snapshot:
        """Presence of live replicas in ``room`` and its latest values."""
        now = time.time() + self._clock_offset
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(_key(room, "presence"))
            pipe.hgetall(_key(room, "values"))
            pipe.zrangebyscore(NODES, now - self.node_timeout, "+inf")
            presence, values, nodes = await _reach(pipe.execute())
        alive = {node.decode() for node in nodes} | {self.node}
        snapshot = Snapshot()
        for field, user in presence.items():
            node = field.split(b"\0", 1)[0].decode()
            if node != self.node and node in alive:
                snapshot.presence.append((node, decode_user(user)))
        for frame in values.values():
            snapshot.values.append(_unkept(frame))
        return snapshot

    def present(self, room: str, user: User, here: bool) -> None:
        """Record and announce that ``user`` came to or left ``room`` on this replica."""
        field = f"{self.node}\0{user.username}"
        frame = encode(Presence(room=room, joined=user) if here else Presence(room=room, left=user))
        if here:
            self._queue(("hset", _key(room, "presence"), field, encode(user)))
        else:
            self._queue(("hdel", _key(room, "presence"), field))
        self._queue(("publish", ROOM_CHANNEL + room, _envelope(self.node, frame, False)))

    def relay(
        self, room: str, frame: bytes, binary: bool = False, topic: str | None = None
    ) -> None:
        """Publish a broadcast frame; a live value is also kept as its topic's latest."""
        if topic is not None:
            self._queue(("hset", _key(room, "values"), topic, _kept(frame, binary)))
        self._queue(("publish", ROOM_CHANNEL + room, _envelope(self.node, frame, binary)))

    def _queue(self, op: tuple[Any, ...]) -> None:
        self._outbox.append(op)
        self._wake.set()

    # ------------------------------------------------------------------ tasks

    async def _write(self) -> None:
        """Write queued frames, many per round trip; while Redis is away, keep the newest."""
        backoff = 0.1
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and not self._closed:
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                pipe = self.redis.pipeline(transaction=False)
                for op, *args in batch:
                    getattr(pipe, op)(*args)
                try:
                    await pipe.execute()
                    backoff = 0.1
                except _UNREACHABLE as exc:
                    self._unreachable("publish", exc)
                    # Ephemeral frames: when the outbox is full, the oldest are dropped.
                    if len(self._outbox) + len(batch) <= OUTBOX_LIMIT:
                        self._outbox.extendleft(reversed(batch))
                    await asyncio.sleep(backoff * (1 + random.random()))
                    backoff = min(backoff * 2, 5.0)
                except RedisError as exc:
                    log.warning("chat: dropped %d relayed frames: %s", len(batch), exc)

    async def _heartbeat(self) -> None:
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.node_timeout / 4)
            self._beat_now.clear()
            try:
                await self._beat()
            except _UNREACHABLE as exc:
                self._unreachable("heartbeat", exc)

    async def _beat(self) -> None:
        """Say this replica is alive; forget the users of replicas that stopped beating."""
        seconds, micros = await self.redis.time()
        now = seconds + micros / 1e6
        self._clock_offset = now - time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(NODES, {self.node: now})
            pipe.zrangebyscore(NODES, now - self.node_timeout, "+inf")
            pipe.zremrangebyscore(NODES, "-inf", now - 3600)
            _, nodes, _ = await pipe.execute()
        self._reachable()
        if self._receiver is not None:
            self._receiver.prune({node.decode() for node in nodes} | {self.node})

    async def _read(self) -> None:
        """Hand other replicas' frames to the receiver; resubscribe after an outage."""
        backoff = 0.1
        while not self._closed:
            try:
                if not self._subscribed_nodes:
                    await self._pubsub.subscribe(NODES)
                    self._subscribed_nodes = True
                message = await self._pubsub.get_message(timeout=None)
            except _UNREACHABLE as exc:
                self._unreachable("subscribe", exc)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if message is not None:
                try:
                    self._dispatch(message)
                except Exception:
                    log.exception("chat: failed to handle a frame from Redis")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if channel == NODES.encode():
            self._beat_now.set()  # a replica left, or we resubscribed: beat and prune now
            return
        room = channel[len(ROOM_CHANNEL) :].decode()
        if kind == "message":
            node, frame, binary = _open_envelope(data)
            if node != self.node and self._receiver is not None:
                self._receiver.receive(room, frame, binary, node)
        elif kind == "subscribe":
            confirmed = self._confirm.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            elif self._receiver is not None:  # resubscribed after an outage
                self._reachable()
                self._receiver.resumed(room)


# A room is new if no message was ever stored in it (its seq is 0), it is not private,
# and nobody is in it on any replica.
_CREATE_PRIVATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') > 0 then return 0 end
if redis.call('HLEN', KEYS[3]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'members', ARGV[2])
return 1
"""


class RedisHistory(HistoryStore):
    """History in Redis Streams, shared by every replica on the same Redis.

    Appends made while one round trip is under way go together in the next one (a
    pipeline of append scripts), in the order they were made.
    """

    def __init__(self, backplane: RedisBackplane) -> None:
        self.publishes = backplane
        self._redis: Any = backplane.redis  # redis-py's annotations are looser than ours
        self._stamp = _envelope(backplane.node, b"", False)  # the script appends the frame
        self._open = self._redis.register_script(_OPEN)
        self._append = self._redis.register_script(_APPEND)
        self._create_private = self._redis.register_script(_CREATE_PRIVATE)
        self._pending: list[tuple[Entry, asyncio.Future[Appended]]] = []
        self._writer: asyncio.Future[None] | None = None

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        keys = [_key(room, "meta"), _key(room, "log")]
        epoch, seq, entries = await _reach(self._open(keys, [new_epoch(), recent]))
        messages = [_message_decoder.decode(fields[1]) for _, fields in reversed(entries)]
        return RoomLog(epoch.decode(), int(seq), messages)

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append` (one Lua script: dedup, seq, XADD, PUBLISH)."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await future

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            pipe = self._redis.pipeline(transaction=False)
            for entry, _ in batch:
                await self._append(*self._script_args(entry), client=pipe)
            try:
                results = await _reach(pipe.execute(raise_on_error=False))
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    duplicate, message = result
                    future.set_result(Appended(_message_decoder.decode(message), bool(duplicate)))

    def _script_args(self, entry: Entry) -> tuple[list[str], list[str | bytes]]:
        draft = encode(
            Message(
                room=entry.room, seq=0, id=entry.id, user=entry.user, ts=entry.ts, body=entry.body
            )
        )
        head, tail = draft.split(_SEQ_MARK, 1)  # the first mark is the field: strings escape '"'
        keys = [_key(entry.room, "meta"), _key(entry.room, "log"), _key(entry.room, "ids")]
        args: list[str | bytes] = [
            new_epoch(),
            f"{entry.user.username}\0{entry.id}",
            head + b',"seq":',
            b"," + tail,
            ROOM_CHANNEL + entry.room,
            self._stamp,
        ]
        return keys, args

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Message]:
        """See :meth:`HistoryStore.fetch`."""
        log_key = _key(room, "log")
        if after is not None:
            entries = await _reach(self._redis.xrange(log_key, f"{after + 1}-0", "+", count=limit))
        else:
            if before is not None and before <= 1:
                return []
            end = "+" if before is None else f"{before - 1}-0"
            entries = list(
                reversed(await _reach(self._redis.xrevrange(log_key, end, "-", count=limit)))
            )
        return [_message_decoder.decode(fields[b"m"]) for _, fields in entries]

    async def get_access(self, room: str) -> tuple[str, list[str]] | None:
        """See :meth:`HistoryStore.get_access`."""
        stored = await _reach(self._redis.hgetall(_key(room, "access")))
        if not stored:
            return None
        return stored[b"owner"].decode(), msgspec.json.decode(stored[b"members"], type=list[str])

    async def set_access(self, room: str, owner: str, members: list[str]) -> None:
        """See :meth:`HistoryStore.set_access`."""
        mapping = {"owner": owner, "members": msgspec.json.encode(members)}
        await _reach(self._redis.hset(_key(room, "access"), mapping=mapping))

    async def create_private(self, room: str, owner: str, members: list[str]) -> bool:
        """See :meth:`HistoryStore.create_private` (one Lua script)."""
        keys = [_key(room, "access"), _key(room, "meta"), _key(room, "presence")]
        created = await _reach(self._create_private(keys, [owner, msgspec.json.encode(members)]))
        return bool(created)

    async def close(self) -> None:
        """Finish the appends under way."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
