"""Redis backplane and Redis history: the only module importing redis.

Replicas of the hub service that share one Redis (``--redis-url``) share rooms:

- each room's log (messages and changes to them, see conversation.py) is kept in
  ``chat-ext:room:<name>:*`` keys, written by Lua scripts that assign the ``seq``,
  de-duplicate retried requests by ``(user, id)``, store and publish, all in one step;
- each room has a channel (``chat-ext:room:<name>``) that a replica subscribes to only
  while the room is loaded there (someone is in it); log entries, presence, typing,
  live values and access changes are published there, each stamped with the sending
  replica's node id so that it can drop its own echoes;
- presence and the latest value per topic are also kept in hashes, for replicas that
  load the room later; replicas beat in ``chat-ext:nodes`` and the users of a replica
  that stops beating are dropped from presence.

A room's history keys:

- ``meta`` (hash): ``epoch``, ``seq`` (the last entry's) and ``format`` (``2``);
- ``log`` (stream): one entry per log entry, with id ``<seq>-0``. A message's entry is
  ``k=m`` only: its content is in ``msgs``. A change's is ``k=c``, ``t=<target seq>``,
  ``r=<id, user, ts, kind, target, emoji as JSON>``: an edit's body is not in it;
- ``msgs`` (hash): seq -> the message's JSON as it is now, every change applied. A
  change overwrites it, so a deletion leaves no earlier body in any key;
- ``ids`` (hash): ``user NUL id`` -> the seq of the entry that request made.

A user's keys (``chat-ext:user:<username>:*``):

- ``mentions`` (sorted set): ``<seq>:<room>`` of each message that mentions them now,
  scored by its ``ts``. The append, change and import scripts keep it in step with ``msgs``
  (an edit replaces a message's mentions, a deletion clears them); a mention at or
  before the user's read marker is read for good and is dropped when next met;
- ``reads`` (hash): room -> the seq of their read marker (moved forward only, by a
  script).

Frames for every connection of a user (a mention, a moved read marker) go on one
channel, ``chat-ext:notify``, that every replica listens to from its start.

An append is one script. A reply or a change takes two (each pipelined with the other
requests of the moment): one reads the message it changes (or the entry a retry
already made), Python decides what the message becomes (the rules of
:mod:`~jupyter_chat_ext.conversation`), and the write script stores it only if the
message is still as read (its JSON's SHA-1, compared in the script) and the request
was not stored meanwhile; otherwise the request is read and decided again. The seq is
only known inside the write script: Python encodes the frames with a placeholder seq,
turned into NUL bytes (which JSON escapes inside strings), and the script puts the seq
in their place.

A log written by the version before changes (each stream entry a message's JSON,
body included, in field ``m``) is converted by the first script that touches the room:
the messages move to ``msgs`` and the stream is rebuilt without them (deleting the
entries would leave their bytes in the stream's nodes). Stop every replica of the older
version before starting this one: it cannot read the new layout.

Search has no index in Redis: it reads each room's ``msgs`` hash from the newest seq
down (pipelined HMGETs) and matches each body in Python with the rules of
:mod:`~jupyter_chat_ext.search`, which SQLite's index follows too, so both find the same
messages; a search of every room first lists the rooms with ``SCAN``. A rare word costs
reading every message of the rooms searched (see docs/performance.md).

An import (each part of it) is one script too: it stores the messages only if the
room's seq is still the ``after`` the part continues and the stored parents of its
replies are as read (their SHA-1s), and publishes them like appends.

A deleted body is gone from every key at once; Redis's append-only file keeps the
commands that wrote it until the file is rewritten (``BGREWRITEAOF``, or
``auto-aof-rewrite-percentage``), and an RDB snapshot taken before keeps it too.

Redis down: local delivery goes on (typing, values, presence within a replica), sends
are refused with ``unavailable`` (clients retry), the connection is retried with
backoff, and a replica catches up on every loaded room once Redis is back.
Acknowledged history is as durable as Redis is configured to be (use AOF with
``appendfsync always`` or ``everysec``; see docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import conversation
from .attachments import AttachmentStore, Ref, Upload
from .backplane import Backplane, Receiver, Snapshot
from .conversation import ChangeEntry
from .history import (
    Appended,
    Changed,
    Entry,
    HistoryStore,
    LogEntry,
    RoomLog,
    StoreUnavailable,
    _reused,
    new_epoch,
    not_empty,
)
from .protocol import (
    Attachment,
    Change,
    ChangeKind,
    Message,
    Presence,
    ProtocolError,
    User,
    decode_user,
    encode,
)
from .search import Query, newest_first

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX: Final = "chat-ext:"
NODES: Final = PREFIX + "nodes"  # a sorted set (node -> last beat) and a channel (departures)
ROOM_CHANNEL: Final = PREFIX + "room:"
NOTIFY: Final = PREFIX + "notify"  # frames for all of a user's connections, every replica
USER_KEY: Final = PREFIX + "user:"
NODE_ID_LENGTH: Final = 16
OUTBOX_LIMIT: Final = 10_000  # relayed frames held while Redis is slow or away
BATCH: Final = 512  # relayed frames (or appends) written per round trip
MAX_CONNECTIONS: Final = 64
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _key(room: str, part: str) -> str:
    return f"{ROOM_CHANNEL}{room}:{part}"


def _user_key(username: str, part: str) -> str:
    return f"{USER_KEY}{username}:{part}"


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


def _notice(node: str, username: str, frame: bytes) -> bytes:
    """A frame for every connection of ``username``, as published on :data:`NOTIFY`."""
    name = username.encode()
    return node.encode() + b"%d:" % len(name) + name + frame


def _open_notice(data: bytes) -> tuple[str, str, bytes]:
    """(node, username, frame) of a frame published on :data:`NOTIFY`."""
    node, rest = data[:NODE_ID_LENGTH].decode(), data[NODE_ID_LENGTH:]
    size, _, rest = rest.partition(b":")
    return node, rest[: int(size)].decode(), rest[int(size) :]


def _kept(frame: bytes, binary: bool) -> bytes:
    """A latest value as kept in a room's values hash."""
    return _kind(binary) + frame


def _unkept(data: bytes) -> tuple[bytes, bool]:
    return data[1:], data[:1] == b"b"


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
        """Beat once and start reading, writing and beating.

        If Redis is there, return once this replica hears :data:`NOTIFY` (a user who
        connects from then on misses no mention); if not, at once (it is retried).
        """
        self._receiver = receiver
        channel = NOTIFY.encode()
        listening = self._confirm[channel] = asyncio.get_running_loop().create_future()
        try:
            try:
                await self._beat()
                reached = True
            except _UNREACHABLE as exc:
                self._unreachable("start", exc)
                reached = False
            for work in (self._read(), self._write(), self._heartbeat()):
                self._spawn(work)
            if reached:
                await asyncio.wait_for(asyncio.shield(listening), self.node_timeout)
        except asyncio.TimeoutError:
            log.warning("chat: no confirmation of the subscription to %s yet", NOTIFY)
        finally:
            self._confirm.pop(channel, None)

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
        change = Presence(room=room, count=0, joined=[user]) if here else None
        frame = encode(change or Presence(room=room, count=0, left=[user]))
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

    def notify(self, username: str, frame: bytes) -> None:
        """Publish a frame for every connection of ``username`` (on every replica)."""
        self._queue(("publish", NOTIFY, _notice(self.node, username, frame)))

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
                    await self._pubsub.subscribe(NODES, NOTIFY)
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
        if channel == NOTIFY.encode():
            if kind == "message":
                node, username, frame = _open_notice(data)
                if node != self.node and self._receiver is not None:
                    self._receiver.notified(username, frame)
            elif kind == "subscribe":
                confirmed = self._confirm.get(channel)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
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


# ---------------------------------------------------------------------- history scripts
#
# Every history script gets the same KEYS: a room's meta hash, log stream, ids hash and
# msgs hash (see the module docstring), and starts with this prelude. Lua only stores,
# reads and compares; what a change does to a message is decided in Python
# (conversation.py), between the read script and the write script that checks nothing
# changed meanwhile.
_PRELUDE = """
local meta, log, ids, msgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- A log written by the previous version holds each message's JSON (body included)
-- in its stream entry's field 'm'. Move each into the msgs hash and rebuild the
-- stream without them (XDEL would leave the bytes in the stream's nodes).
local function upgrade()
  if redis.call('HGET', meta, 'format') == '2' or redis.call('EXISTS', log) == 0 then
    return
  end
  local kept, from = {}, '-'
  while true do
    local page = redis.call('XRANGE', log, from, '+', 'COUNT', 1000)
    for _, e in ipairs(page) do
      local seq, fields = string.match(e[1], '^%d+'), e[2]
      if fields[1] == 'm' then
        redis.call('HSETNX', msgs, seq, fields[2])
        fields = {'k', 'm'}
      end
      kept[#kept + 1] = {seq, fields}
    end
    if #page < 1000 then break end
    from = (tonumber(string.match(page[#page][1], '^%d+')) + 1) .. '-0'
  end
  redis.call('DEL', log)
  for _, e in ipairs(kept) do
    redis.call('XADD', log, e[1] .. '-0', unpack(e[2]))
  end
  redis.call('HSET', meta, 'format', '2')
end

-- The next seq of the room (its log is created, with this epoch, if new).
local function next_seq(epoch)
  redis.call('HSETNX', meta, 'epoch', epoch)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  if seq == 1 then redis.call('HSET', meta, 'format', '2') end
  return seq
end

local function last_seq()
  return tonumber(redis.call('HGET', meta, 'seq') or '0')
end

-- The entries lo..hi, in seq order: {seq, 'm', message} or {seq, 'c', change record,
-- its target message}, every message as it is now.
local function entries(lo, hi)
  local out, targets = {}, {}
  if hi < lo then return out end
  for _, e in ipairs(redis.call('XRANGE', log, lo .. '-0', hi .. '-0')) do
    local seq, fields = string.match(e[1], '^%d+'), e[2]
    if fields[2] == 'm' then
      out[#out + 1] = {seq, 'm', redis.call('HGET', msgs, seq)}
    else
      local target = fields[4]
      if targets[target] == nil then targets[target] = redis.call('HGET', msgs, target) end
      out[#out + 1] = {seq, 'c', fields[6], targets[target]}
    end
  end
  return out
end

upgrade()
"""

# ARGV: epoch (if new), how many recent entries.
_OPEN = """
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local last = last_seq()
local first = math.max(1, last - tonumber(ARGV[2]) + 1)
return {redis.call('HGET', meta, 'epoch'), last, entries(first, last)}
"""

# ARGV: 'after' or 'before', the seq ('' for before: everything), limit.
_FETCH = """
local last, limit = last_seq(), tonumber(ARGV[3])
if ARGV[1] == 'after' then
  local after = tonumber(ARGV[2])
  return entries(after + 1, math.min(after + limit, last))
end
local found, hi = {}, math.min((tonumber(ARGV[2]) or last + 1) - 1, last)
while hi >= 1 and #found < limit do
  local count = math.max(2 * (limit - #found), 64)
  local page = redis.call('XREVRANGE', log, hi .. '-0', '-', 'COUNT', count)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    if e[2][2] == 'm' then
      found[#found + 1] = string.match(e[1], '^%d+')
      if #found == limit then break end
    end
  end
  hi = tonumber(string.match(page[#page][1], '^%d+')) - 1
end
local out = {}
for i = #found, 1, -1 do
  out[#out + 1] = {found[i], 'm', redis.call('HGET', msgs, found[i])}
end
return out
"""

# Before a reply or a change. ARGV: dedup field, the seq of the message it changes.
# -> {1, the entry stored for this request already} or {0, that message (or nil)}.
_READ = """
local known = redis.call('HGET', ids, ARGV[1])
if known then
  local seq = tonumber(known)
  return {1, entries(seq, seq)[1]}
end
return {0, redis.call('HGET', msgs, ARGV[2])}
"""

# ARGV: epoch (if new), dedup field, message JSON (a NUL where its seq goes), channel,
# publish prefix (kind + node), room, ts; for a reply: the parent's seq, the SHA-1 of
# the parent as read, the parent's new JSON (a NUL where its rev goes). KEYS[5...]: the
# mentions sets of the users it mentions.
# -> {0, message} stored; {1, message} a retry; {2} the id names a change; {3} the
# parent changed since it was read.
_APPEND = """
local known = redis.call('HGET', ids, ARGV[2])
if known then
  local message = redis.call('HGET', msgs, known)
  if message then return {1, message} end
  return {2}
end
local parent = ARGV[8]
if parent then
  local current = redis.call('HGET', msgs, parent)
  if not current or redis.sha1hex(current) ~= ARGV[9] then return {3} end
end
local seq = tostring(next_seq(ARGV[1]))
local message = string.gsub(ARGV[3], '%z', seq)
redis.call('XADD', log, seq .. '-0', 'k', 'm')
redis.call('HSET', msgs, seq, message)
redis.call('HSET', ids, ARGV[2], seq)
if parent then
  redis.call('HSET', msgs, parent, (string.gsub(ARGV[10], '%z', seq)))
end
for i = 5, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[7], seq .. ':' .. ARGV[6])
end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. message)
return {0, message}
"""

# ARGV: epoch (if new), dedup field, target seq, SHA-1 of the target as read, change
# record, the target's new JSON and the change frame (NULs where the seq goes),
# channel, publish prefix, the target's member in mentions sets and its ts, how many
# of KEYS[5...] it no longer mentions (the mentions sets of those users first, then
# of those it mentions now and did not). -> {0, seq} stored; {1} the target changed
# or the request was stored since the read: read again.
_CHANGE = """
if redis.call('HEXISTS', ids, ARGV[2]) == 1 then return {1} end
local current = redis.call('HGET', msgs, ARGV[3])
if not current or redis.sha1hex(current) ~= ARGV[4] then return {1} end
local seq = tostring(next_seq(ARGV[1]))
redis.call('XADD', log, seq .. '-0', 'k', 'c', 't', ARGV[3], 'r', ARGV[5])
redis.call('HSET', msgs, ARGV[3], (string.gsub(ARGV[6], '%z', seq)))
redis.call('HSET', ids, ARGV[2], seq)
local removed = 4 + tonumber(ARGV[12])
for i = 5, #KEYS do
  if i <= removed then
    redis.call('ZREM', KEYS[i], ARGV[10])
  else
    redis.call('ZADD', KEYS[i], ARGV[11], ARGV[10])
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[9] .. (string.gsub(ARGV[7], '%z', seq)))
return {0, seq}
"""

# An import's part. ARGV: epoch (if new), after, channel, publish prefix, how many
# messages, stored parents and mentions; then per message its dedup field and JSON
# (seqs after + 1, ...), per stored parent its seq, SHA-1 as read and new JSON, per
# mention the index of its user's set in KEYS[5...], the score (ts) and the member.
# -> {0, last seq} stored; {1, seq} the room's seq is not after; {2, dedup field}
# that request is stored already; {3} a parent changed since it was read.
_IMPORT = """
local after, last = tonumber(ARGV[2]), last_seq()
if last ~= after then return {1, last} end
local count, parents, mentions = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local at = 8
for i = at, at + 2 * count - 1, 2 do
  if redis.call('HEXISTS', ids, ARGV[i]) == 1 then return {2, ARGV[i]} end
end
local p = at + 2 * count
for i = p, p + 3 * parents - 1, 3 do
  local current = redis.call('HGET', msgs, ARGV[i])
  if not current or redis.sha1hex(current) ~= ARGV[i + 1] then return {3} end
end
redis.call('HSETNX', meta, 'epoch', ARGV[1])
for n = 1, count do
  local seq, i = tostring(after + n), at + 2 * (n - 1)
  redis.call('XADD', log, seq .. '-0', 'k', 'm')
  redis.call('HSET', msgs, seq, ARGV[i + 1])
  redis.call('HSET', ids, ARGV[i], seq)
end
for i = p, p + 3 * parents - 1, 3 do
  redis.call('HSET', msgs, ARGV[i], ARGV[i + 2])
end
local m = p + 3 * parents
for i = m, m + 3 * mentions - 1, 3 do
  redis.call('ZADD', KEYS[4 + tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
end
redis.call('HSET', meta, 'seq', after + count, 'format', '2')
for i = at + 1, at + 2 * count - 1, 2 do
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ARGV[i])
end
return {0, after + count}
"""

# A user's read marker in a room moves forward only. KEYS: the user's reads hash.
# ARGV: room, seq. -> the marker now.
_SET_READ = """
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local seq = tonumber(ARGV[2])
if seq <= now then return now end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return seq
"""

# KEYS: a user's mentions set and reads hash. ARGV: limit. -> up to limit members
# (<seq>:<room>), newest first, past the read marker of their room. Those at or before
# it are read for good (a marker never moves back): they are dropped from the set.
_UNREAD = """
local limit, found, read, marks, start = tonumber(ARGV[1]), {}, {}, {}, 0
while #found < limit do
  local page = redis.call('ZREVRANGE', KEYS[1], start, start + 255)
  for _, member in ipairs(page) do
    local seq, room = string.match(member, '^(%d+):(.*)$')
    if marks[room] == nil then
      marks[room] = tonumber(redis.call('HGET', KEYS[2], room) or '0')
    end
    if tonumber(seq) <= marks[room] then
      read[#read + 1] = member
    elseif #found < limit then
      found[#found + 1] = member
    end
  end
  if #page < 256 then break end
  start = start + #page
end
for i = 1, #read, 1000 do
  redis.call('ZREM', KEYS[1], unpack(read, i, math.min(i + 999, #read)))
end
return found
"""


class _ChangeRecord(msgspec.Struct, omit_defaults=True):
    """A change as its stream entry keeps it: its target's state is in the msgs hash."""

    id: str
    user: User
    ts: float
    kind: ChangeKind
    target: int
    emoji: str | None = None


_message_decoder = msgspec.json.Decoder(Message)
_record_decoder = msgspec.json.Decoder(_ChangeRecord)
# A seq no log reaches: encoded where the store's seq goes, then cut out (see _marked).
_MARK: Final = 2**53 + 1
_MARKS: Final = re.compile(rb'(?<="seq":|"rev":)' + str(_MARK).encode() + rb"(?![0-9])")
MAX_ATTEMPTS: Final = 100  # times a change is decided again because its target changed
PICKS: Final = 10  # times unread mentions are picked again because one changed meanwhile
SCAN_PAGE: Final = 500  # seqs read with one HMGET by a search
SCAN_ROUND: Final = 2  # HMGETs pipelined in one round trip by a search (then the loop's turn)
ROOM_KEYS: Final = 1000  # keys per SCAN when a search lists the rooms


def _marked(frame: msgspec.Struct, marks: int) -> bytes:
    """``frame`` as JSON with a NUL byte for each ``seq`` or ``rev`` set to :data:`_MARK`.

    JSON escapes NUL inside strings, so the scripts' NULs are exactly these places,
    and a body (which escapes ``"``) cannot hold a ``"seq":`` of its own.
    """
    encoded, found = _MARKS.subn(b"\0", encode(frame))
    if found != marks:
        raise AssertionError(f"{found} seq marks in a frame, expected {marks}")
    return encoded


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


@dataclass
class _Op:
    """A pending append or change and the future its caller awaits."""

    entry: Entry | ChangeEntry
    max_reactions: int
    future: asyncio.Future[Any]
    attempts: int = 0

    @property
    def changes(self) -> tuple[str, int] | None:
        """(room, seq) of the existing message this changes: a target or a reply's parent."""
        if isinstance(self.entry, ChangeEntry):
            return self.entry.room, self.entry.target
        if self.entry.reply_to is not None:
            return self.entry.room, self.entry.reply_to
        return None


# What a write script's answer gives: a result, or None to decide again.
_Answer = Callable[[Any], "Appended | Changed | None"]


class RedisHistory(HistoryStore):
    """History in Redis, shared by every replica on the same Redis (see the module docstring).

    Appends and changes made while one round trip is under way go together in the
    next one (a pipeline of scripts), in the order they were made; replies and changes
    first read the message they change (one more round trip, also pipelined).
    """

    def __init__(self, backplane: RedisBackplane) -> None:
        self.publishes = backplane
        self._redis: Any = backplane.redis  # redis-py's annotations are looser than ours
        self._stamp = _envelope(backplane.node, b"", False)  # the script appends the frame
        register = self._redis.register_script
        self._open = register(_PRELUDE + _OPEN)
        self._fetch = register(_PRELUDE + _FETCH)
        self._read = register(_PRELUDE + _READ)
        self._append = register(_PRELUDE + _APPEND)
        self._change = register(_PRELUDE + _CHANGE)
        self._import = register(_PRELUDE + _IMPORT)
        self._create_private = register(_CREATE_PRIVATE)
        self._set_read = register(_SET_READ)
        self._unread = register(_UNREAD)
        self._pending: deque[_Op] = deque()
        self._writer: asyncio.Future[None] | None = None

    @staticmethod
    def _keys(room: str) -> list[str]:
        return [_key(room, "meta"), _key(room, "log"), _key(room, "ids"), _key(room, "msgs")]

    async def open_room(self, room: str, recent: int) -> RoomLog:
        """See :meth:`HistoryStore.open_room`."""
        epoch, seq, rows = await _reach(self._open(self._keys(room), [new_epoch(), recent]))
        return RoomLog(epoch.decode(), int(seq), _entries(room, rows))

    async def fetch(
        self, room: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[LogEntry]:
        """See :meth:`HistoryStore.fetch` (one script)."""
        args: list[str | int]
        if after is not None:
            args = ["after", after, limit]
        else:
            args = ["before", "" if before is None else before, limit]
        return _entries(room, await _reach(self._fetch(self._keys(room), args)))

    async def append(self, entry: Entry) -> Appended:
        """See :meth:`HistoryStore.append` (one script: dedup, seq, store, PUBLISH)."""
        appended: Appended = await self._queue(entry, 0)
        return appended

    async def change(self, entry: ChangeEntry, max_reactions: int) -> Changed:
        """See :meth:`HistoryStore.change` (read, decide, then store if still current)."""
        changed: Changed = await self._queue(entry, max_reactions)
        return changed

    async def _queue(self, entry: Entry | ChangeEntry, max_reactions: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(entry, max_reactions, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await future

    def _take(self) -> list[_Op]:
        """The next batch: at most one op per message it changes (the next waits a round)."""
        batch: list[_Op] = []
        changing: set[tuple[str, int]] = set()
        while self._pending and len(batch) < BATCH:
            changes = self._pending[0].changes
            if changes is not None:
                if changes in changing:
                    break
                changing.add(changes)
            batch.append(self._pending.popleft())
        return batch

    async def _write(self) -> None:
        while self._pending:
            batch = self._take()
            try:
                again = await self._write_batch(batch)
            except Exception as exc:
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)
                continue
            for op in reversed(again):
                op.attempts += 1
                if op.future.done():
                    continue
                if op.attempts >= MAX_ATTEMPTS:
                    room, seq = op.changes or (op.entry.room, 0)
                    busy = f"message {seq} of room {room!r} is being changed by many at once"
                    op.future.set_exception(StoreUnavailable(busy))
                else:
                    self._pending.appendleft(op)

    async def _write_batch(self, batch: list[_Op]) -> list[_Op]:
        """Store ``batch`` (one or two round trips); return the ops to decide again."""
        reading = [op for op in batch if op.changes is not None]
        reads: dict[int, Any] = {}
        if reading:
            pipe = self._redis.pipeline(transaction=False)
            for op in reading:
                dedup = f"{op.entry.user.username}\0{op.entry.id}"
                changes = op.changes
                assert changes is not None
                await self._read(self._keys(op.entry.room), [dedup, changes[1]], client=pipe)
            results = await _reach(pipe.execute(raise_on_error=False))
            reads = {id(op): result for op, result in zip(reading, results, strict=True)}
        pipe = self._redis.pipeline(transaction=False)
        writing: list[tuple[_Op, _Answer]] = []
        for op in batch:
            if op.future.done():
                continue
            try:
                answer = await self._plan(op, reads.get(id(op)), pipe)
            except Exception as exc:  # a refusal (ProtocolError), or the read failed
                op.future.set_exception(exc)
                continue
            if answer is not None:
                writing.append((op, answer))
        if not writing:
            return []
        results = await _reach(pipe.execute(raise_on_error=False))
        again: list[_Op] = []
        for (op, answer), result in zip(writing, results, strict=True):
            if op.future.done():
                continue
            try:
                if isinstance(result, BaseException):
                    raise result
                outcome = answer(result)
            except Exception as exc:
                op.future.set_exception(exc)
                continue
            if outcome is None:
                again.append(op)
            else:
                op.future.set_result(outcome)
        return again

    async def _plan(self, op: _Op, read: Any, pipe: Any) -> _Answer | None:
        """Queue ``op``'s write script on ``pipe``; None if the read answered it already."""
        entry = op.entry
        keys = self._keys(entry.room)
        dedup = f"{entry.user.username}\0{entry.id}"
        publish: list[str | int | bytes] = [ROOM_CHANNEL + entry.room, self._stamp]
        current: Message | None = None
        expected = ""  # the SHA-1 of the message it changes, as read
        if read is not None:
            if isinstance(read, BaseException):
                raise read
            found, stored = read
            if found:  # a retried request: the entry it made
                op.future.set_result(_retried(entry, _entries(entry.room, [stored])[0]))
                return None
            current = None if stored is None else _message_decoder.decode(stored)
            expected = "" if stored is None else _sha1(stored)
        if isinstance(entry, Entry):
            parent_args: list[str | int | bytes] = []
            parent_replies = None
            if entry.reply_to is not None:
                parent = conversation.check_parent(current, entry.room, entry.reply_to, entry.id)
                parent_replies = parent.replies
                parent_args = [
                    parent.seq,
                    expected,
                    _marked(conversation.stamped(parent, _MARK), 1),
                ]
            message = entry.message(_MARK, parent_replies)
            args: list[str | int | bytes] = [
                new_epoch(),
                dedup,
                _marked(message, 1),
                *publish,
                entry.room,
                repr(entry.ts),
                *parent_args,
            ]
            mentioned = [_user_key(name, "mentions") for name in entry.mentions]
            await self._append(keys + mentioned, args, client=pipe)
            return partial(_appended, entry)
        new = conversation.apply(current, entry, op.max_reactions)
        assert current is not None  # apply refuses a change to no message
        # An edit replaces the message's mentions; a deletion clears them.
        gone = [name for name in current.mentions if name not in new.mentions]
        added = list(conversation.newly_mentioned(current, new))
        record = _ChangeRecord(
            entry.id, entry.user, entry.ts, entry.kind, entry.target, entry.emoji
        )
        message = conversation.stamped(new, _MARK)
        frame = conversation.change_frame(entry, _MARK, message)
        args = [
            new_epoch(),
            dedup,
            entry.target,
            expected,
            encode(record),
            _marked(message, 1),
            _marked(frame, 2),
            *publish,
            f"{entry.target}:{entry.room}",
            repr(current.ts),
            len(gone),
        ]
        mentions = [_user_key(name, "mentions") for name in gone + added]
        await self._change(keys + mentions, args, client=pipe)
        return partial(_changed, entry, new, tuple(added), conversation.released(current, new))

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

    async def set_read(self, username: str, room: str, seq: int) -> int:
        """See :meth:`HistoryStore.set_read` (one script: forward only)."""
        marker = await _reach(self._set_read([_user_key(username, "reads")], [room, seq]))
        return int(marker)

    async def get_read(self, username: str, room: str) -> int:
        """See :meth:`HistoryStore.get_read`."""
        marker = await _reach(self._redis.hget(_user_key(username, "reads"), room))
        return 0 if marker is None else int(marker)

    async def unread_mentions(self, username: str, limit: int) -> list[Message]:
        """See :meth:`HistoryStore.unread_mentions`.

        A script picks the unread mentions, then one pipeline reads those messages.
        A message that no longer mentions the user by then (edited or deleted in
        between) was taken out of the set in the same step: pick again.
        """
        keys = [_user_key(username, "mentions"), _user_key(username, "reads")]
        current: list[Message] = []
        for _ in range(PICKS):
            members = await _reach(self._unread(keys, [limit]))
            pipe = self._redis.pipeline(transaction=False)
            for member in members:
                seq, _, room = member.decode().partition(":")
                pipe.hget(_key(room, "msgs"), seq)
            rows = await _reach(pipe.execute()) if members else []
            found = [_message_decoder.decode(row) for row in rows if row is not None]
            current = [m for m in found if username in m.mentions and not m.deleted]
            if len(current) == len(found):
                break
        return current

    async def rooms(self) -> dict[str, tuple[str, list[str]] | None]:
        """See :meth:`HistoryStore.rooms`: the rooms whose ``meta`` has a seq.

        Found with ``SCAN`` (a pass over every key of Redis, ``ROOM_KEYS`` at a
        time), then one pipeline for their seqs and access.
        """
        names: list[str] = []
        pattern = f"{ROOM_CHANNEL}*:meta"
        async for key in self._redis.scan_iter(match=pattern, count=ROOM_KEYS):
            names.append(key.decode()[len(ROOM_CHANNEL) : -len(":meta")])
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(_key(name, "meta"), "seq")
            pipe.hgetall(_key(name, "access"))
        replies = await _reach(pipe.execute()) if names else []
        found: dict[str, tuple[str, list[str]] | None] = {}
        for index, name in enumerate(names):
            seq, access = replies[2 * index], replies[2 * index + 1]
            if seq is None or int(seq) < 1:
                continue  # opened, never written to
            found[name] = None
            if access:
                members = msgspec.json.decode(access[b"members"], type=list[str])
                found[name] = (access[b"owner"].decode(), members)
        return found

    async def search(self, query: Query, rooms: list[str], limit: int) -> list[Message]:
        """See :meth:`HistoryStore.search`: a scan of each room's messages, newest first.

        Redis has no index of the words: each room's ``msgs`` hash is read from its
        last seq down (``SCAN_PAGE`` seqs an HMGET, ``SCAN_ROUND`` HMGETs a round
        trip), each body folded and matched in Python (:mod:`~jupyter_chat_ext.search`,
        the rules SQLite's index follows), until the room gave ``limit`` results or
        its first message. A common word is found in the newest messages at once; a
        rare one costs reading every message of the rooms searched. So that nobody's
        searches slow the replica's chat, scans take turns (one at a time per
        replica), each within :attr:`search_budget` seconds (then it answers what it
        found), and the loop is given back after every round.
        """
        async with self._scanning():
            deadline = time.monotonic() + self.search_budget
            found: list[Message] = []
            for room in rooms:
                found += await self._scan_room(room, query, limit, deadline)
                if time.monotonic() > deadline:
                    break
        found.sort(key=lambda m: newest_first(m.ts, m.room, m.seq))
        return found[:limit]

    async def _scan_room(
        self, room: str, query: Query, limit: int, deadline: float
    ) -> list[Message]:
        meta = _key(room, "meta")
        seq, layout = await _reach(self._redis.hmget(meta, ["seq", "format"]))
        if seq is not None and layout != b"2":
            await self.fetch(room, after=0, limit=1)  # its scripts move it to this layout
        top = 0 if seq is None else int(seq)
        matched: list[Message] = []
        while top >= 1:
            if time.monotonic() > deadline:
                log.info(
                    "chat: a search took over %g s: answered with what it found", self.search_budget
                )
                return matched
            pipe = self._redis.pipeline(transaction=False)
            for _ in range(SCAN_ROUND):
                if top < 1:
                    break
                pipe.hmget(_key(room, "msgs"), list(range(top, max(0, top - SCAN_PAGE), -1)))
                top -= SCAN_PAGE
            for rows in await _reach(pipe.execute()):
                for row in rows:
                    if row is None:  # a change's seq
                        continue
                    message = _message_decoder.decode(row)
                    if not message.deleted and query.matches(message.body):
                        matched.append(message)
                        if len(matched) == limit:
                            return matched
        return matched

    async def import_messages(
        self, room: str, after: int, messages: list[Message], frame_id: str
    ) -> int:
        """See :meth:`HistoryStore.import_messages` (one script, see :data:`_IMPORT`).

        One round trip reads the room's seq and the stored parents of the replies;
        Python counts the replies; the script stores everything (and publishes the
        messages, in seq order) only if the seq is still ``after`` and those parents
        are as read, else the part is read and counted again.
        """
        keys = self._keys(room)
        meta = keys[0]
        dedups = [f"{m.user.username}\0{m.id}" for m in messages]
        if len(set(dedups)) < len(dedups):
            raise _duplicate_import(room, frame_id)
        first = after + 1
        wanted = sorted(
            {m.reply_to for m in messages if m.reply_to is not None and m.reply_to < first}
        )
        for _ in range(MAX_ATTEMPTS):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(meta, ["seq", "format"])
            if wanted:
                pipe.hmget(keys[3], wanted)
            replies = await _reach(pipe.execute())
            seq, layout = replies[0]
            last = 0 if seq is None else int(seq)
            if last != after:
                raise not_empty(room, last, frame_id)
            if last and layout != b"2":
                await self.fetch(room, after=0, limit=1)  # its scripts move it to this layout
                continue
            rows: dict[int, bytes] = {
                s: row for s, row in zip(wanted, replies[1] if wanted else [], strict=True) if row
            }
            stored = {s: _message_decoder.decode(row) for s, row in rows.items()}
            new, parents = conversation.count_replies(messages, stored.get, room, frame_id)
            mentioned = sorted({name for m in new for name in m.mentions})
            index = {name: i + 1 for i, name in enumerate(mentioned)}
            args: list[str | int | bytes] = [
                new_epoch(),
                after,
                ROOM_CHANNEL + room,
                self._stamp,
                len(new),
                len(parents),
                sum(len(m.mentions) for m in new),
            ]
            for dedup, message in zip(dedups, new, strict=True):
                args += [dedup, encode(message)]
            for parent in parents.values():
                args += [parent.seq, _sha1(rows[parent.seq]), encode(parent)]
            for message in new:
                member = f"{message.seq}:{room}"
                args += [a for n in message.mentions for a in (index[n], repr(message.ts), member)]
            mentions = [_user_key(name, "mentions") for name in mentioned]
            result = await _reach(self._import(keys + mentions, args))
            outcome = int(result[0])
            if outcome == 0:
                return int(result[1])
            if outcome == 1:
                raise not_empty(room, int(result[1]), frame_id)
            if outcome == 2:
                raise _duplicate_import(room, frame_id)
        raise StoreUnavailable(f"the replies' parents in room {room!r} are being changed")

    async def close(self) -> None:
        """Finish the appends and changes under way."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)


def _entries(room: str, rows: list[list[bytes]]) -> list[LogEntry]:
    """Log entries from the scripts' rows (see ``entries`` in :data:`_PRELUDE`)."""
    targets: dict[bytes, Message] = {}
    found: list[LogEntry] = []
    for row in rows:
        if row[1] == b"m":
            found.append(_message_decoder.decode(row[2]))
            continue
        record = _record_decoder.decode(row[2])
        if row[3] not in targets:
            targets[row[3]] = _message_decoder.decode(row[3])
        found.append(
            Change(
                room=room,
                seq=int(row[0]),
                id=record.id,
                user=record.user,
                ts=record.ts,
                kind=record.kind,
                target=record.target,
                message=targets[row[3]],
                emoji=record.emoji,
            )
        )
    return found


def _duplicate_import(room: str, frame_id: str) -> ProtocolError:
    return ProtocolError(
        "invalid_field",
        "an imported message has the id of another message of its author in "
        f"room {room!r}: each (user, id) may appear once",
        id=frame_id,
        room=room,
    )


def _retried(entry: Entry | ChangeEntry, stored: LogEntry) -> Appended | Changed:
    """The answer to a retried request, given the entry its first try stored."""
    if isinstance(entry, Entry) and isinstance(stored, Message):
        return Appended(stored, True)
    if (
        isinstance(entry, ChangeEntry)
        and isinstance(stored, Change)
        and conversation.is_retry(entry, stored)
    ):
        return Changed(stored, True)
    raise _reused(entry.room, entry.id)


def _appended(entry: Entry, result: list[Any]) -> Appended | None:
    """What the append script's answer means (see :data:`_APPEND`)."""
    outcome = int(result[0])
    if outcome == 2:
        raise _reused(entry.room, entry.id)
    if outcome == 3:
        return None
    return Appended(_message_decoder.decode(result[1]), outcome == 1)


def _changed(
    entry: ChangeEntry,
    new: Message,
    added: tuple[str, ...],
    released: Attachment | None,
    result: list[Any],
) -> Changed | None:
    """What the change script's answer means (see :data:`_CHANGE`)."""
    if int(result[0]) != 0:
        return None
    seq = int(result[1])
    frame = conversation.change_frame(entry, seq, conversation.stamped(new, seq))
    return Changed(frame, False, added, released)


# ------------------------------------------------------------------------ attachments

ATTACHMENT_KEY: Final = PREFIX + "att:"

# KEYS: blob, upload, the user's pending set, the blob's pending set.
# ARGV: data, upload fields (msgpack-free: JSON), expires, ttl seconds, token.
_PUT_UPLOAD = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[5])
return 1
"""
# KEYS: blob, refs hash, rooms hash, the user's pending set, the blob's pending set.
# ARGV: ref field, ref value (JSON mime and name), room, token.
_HOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[4])
return 1
"""
# KEYS: blob, refs hash, rooms hash, the blob's pending set.  ARGV: ref field, room, now.
_RELEASE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[2]) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[3])
if redis.call('HLEN', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  return 1
end
return 0
"""


class RedisAttachments(AttachmentStore):
    """Attachments in Redis, shared by every replica: blobs by SHA-256 (one copy each).

    Keys (``chat-ext:att:``): ``blob:<sha>`` the bytes; ``up:<token>`` a pending upload
    (expires by itself); ``refs:<sha>`` the messages that hold the blob (room, author,
    id) and ``rooms:<sha>`` how many of them per room (what a fetch asks);
    ``pending:<sha>`` and ``user:<name>`` the uploads not yet sent that name it. Each
    step is one script, so replicas never see half of one. A blob is deleted in the
    step that releases its last holder with no pending upload naming it; a blob whose
    uploads all expired unsent is deleted by the next sweep (every replica sweeps).
    """

    def __init__(self, backplane: RedisBackplane) -> None:
        self._redis: Any = backplane.redis
        register = self._redis.register_script
        self._put = register(_PUT_UPLOAD)
        self._hold = register(_HOLD)
        self._release = register(_RELEASE)

    @staticmethod
    def _k(part: str, name: str) -> str:
        return f"{ATTACHMENT_KEY}{part}:{name}"

    async def put(self, upload: Upload, data: bytes) -> None:
        """See :meth:`AttachmentStore.put`."""
        u = upload
        record = msgspec.json.encode(u)  # (a dataclass: msgspec reads it back as one)
        ttl = max(1, int(u.expires - time.time()) + 1)
        keys = [
            self._k("blob", u.sha256),
            self._k("up", u.token),
            self._k("user", u.username),
            self._k("pending", u.sha256),
        ]
        await _reach(self._put(keys, [data, record, repr(u.expires), ttl, u.token]))

    async def claim(self, token: str, now: float) -> Upload | None:
        """See :meth:`AttachmentStore.claim`."""
        raw = await _reach(self._redis.get(self._k("up", token)))
        if raw is None:
            return None
        upload = msgspec.json.decode(raw, type=Upload)
        return upload if upload.token == token and upload.expires > now else None

    async def hold(self, upload: Upload, ref: Ref) -> bool:
        """See :meth:`AttachmentStore.hold`."""
        u = upload
        keys = [
            self._k("blob", u.sha256),
            self._k("refs", u.sha256),
            self._k("rooms", u.sha256),
            self._k("user", u.username),
            self._k("pending", u.sha256),
        ]
        value = msgspec.json.encode([u.mime, u.name])
        args: list[str | bytes] = [_ref_field(ref), value, ref.room, u.token]
        return bool(await _reach(self._hold(keys, args)))

    async def release(self, sha256: str, ref: Ref) -> None:
        """See :meth:`AttachmentStore.release`."""
        keys = [
            self._k("blob", sha256),
            self._k("refs", sha256),
            self._k("rooms", sha256),
            self._k("pending", sha256),
        ]
        await _reach(self._release(keys, [_ref_field(ref), ref.room, repr(time.time())]))

    async def described(self, sha256: str, room: str) -> tuple[str, str] | None:
        """See :meth:`AttachmentStore.described`."""
        if not await _reach(self._redis.hexists(self._k("rooms", sha256), room)):
            return None
        pattern = _glob_escape(_ref_field(Ref(room, "", ""))[:-2]) + "*"
        cursor = 0
        while True:  # the room's holders are few: usually one page
            cursor, found = await _reach(
                self._redis.hscan(self._k("refs", sha256), cursor, match=pattern, count=100)
            )
            if found:
                raw = next(iter(found.values()))
                mime, name = msgspec.json.decode(raw, type=tuple[str, str])
                return mime, name
            if cursor == 0:
                return None

    async def read(self, sha256: str) -> bytes | None:
        """See :meth:`AttachmentStore.read`."""
        data = await _reach(self._redis.get(self._k("blob", sha256)))
        return None if data is None else bytes(data)

    async def pending(self, username: str, now: float) -> int:
        """See :meth:`AttachmentStore.pending`."""
        key = self._k("user", username)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zcard(key)
        _, count = await _reach(pipe.execute())
        return int(count)

    async def sweep(self, now: float) -> None:
        """See :meth:`AttachmentStore.sweep`: blobs whose uploads all expired unsent."""
        async for key in self._redis.scan_iter(match=_glob_escape(self._k("pending", "")) + "*"):
            sha = key.decode().rsplit(":", 1)[1]
            await _reach(
                self._release(
                    [
                        self._k("blob", sha),
                        self._k("refs", sha),
                        self._k("rooms", sha),
                        self._k("pending", sha),
                    ],
                    ["", "", repr(now)],
                )
            )


def _ref_field(ref: Ref) -> str:
    """A holder of a blob as a hash field: room, author and id, length-prefixed."""
    return f"{len(ref.room)}:{ref.room}\x00{ref.username}\x00{ref.id}"


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
