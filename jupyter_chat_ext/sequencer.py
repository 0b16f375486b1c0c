"""A room's log as this process sees it: its position, recent entries, ordered delivery.

Log entries (messages, and changes to them: edits, deletions, reactions) are stored
(and numbered) by the history store; they reach a room here in any order (from this
process's appends, or from other replicas). The sequencer lets them through in
``seq`` order, each once, holds an early one until the one before it arrives, and
asks for the gap to be read back when it does not. It keeps the recent entries with
each message in its current state (a change updates the message it targets, and the
cached changes of it: a deleted body is not replayed), and answers what a join or a
reconnect is sent, within the join's byte budget.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from .protocol import Change, Message, Since, encode

if TYPE_CHECKING:
    from .config import ChatSettings
    from .history import HistoryStore, LogEntry

E = TypeVar("E", Message, Change, "LogEntry")

GAP_WAIT = 0.25  # seconds a message may wait for an earlier one before the gap is read back
GAP_PAGE = 500  # messages read from the store at a time for a reconnect's gap
RECENT_MIN = 1000  # messages kept in memory per loaded room, at least


def size_of(message: LogEntry) -> int:
    """The bytes ``message`` takes in a frame."""
    return len(encode(message))


def fits(messages: Sequence[LogEntry], budget: int) -> bool:
    """Whether the frames of ``messages`` take at most ``budget`` bytes."""
    total = 0
    for message in messages:
        total += size_of(message)
        if total > budget:
            return False
    return True


def _messages(entries: list[LogEntry]) -> list[Message]:
    return [entry for entry in entries if isinstance(entry, Message)]


def newest_within(messages: list[E], budget: int) -> list[E]:
    """The newest of ``messages`` whose frames fit ``budget`` bytes (at least one)."""
    total = 0
    for index in range(len(messages) - 1, -1, -1):
        total += size_of(messages[index])
        if total > budget:
            return messages[index + 1 :] or messages[-1:]
    return messages


class Sequencer:
    """The ordered log of one room: ``epoch``, ``seq``, recent messages, early arrivals.

    ``on_gap`` is called when a message has waited ``GAP_WAIT`` seconds for an earlier
    one: the room then reads what it missed from the store (:meth:`missed_after`).
    """

    def __init__(
        self,
        room: str,
        epoch: str,
        seq: int,
        recent: Iterable[LogEntry],
        store: HistoryStore,
        settings: ChatSettings,
        on_gap: Callable[[], None],
    ) -> None:
        self.room = room
        self.epoch = epoch
        self.seq = seq
        self._store = store
        self._settings = settings
        self._on_gap = on_gap
        self._recent: deque[LogEntry] = deque(
            recent, maxlen=max(settings.history_on_join, RECENT_MIN)
        )
        self._pending: dict[int, tuple[LogEntry, bytes | None]] = {}  # seq -> early entry
        self._gap_timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        """True while an early message waits for an earlier one."""
        return bool(self._pending)

    def order(self, message: LogEntry, frame: bytes | None) -> list[tuple[LogEntry, bytes | None]]:
        """The messages that may go out now that ``message`` arrived, in ``seq`` order.

        A message seen before gives none; an early one gives none and waits.
        """
        if message.seq <= self.seq or message.seq in self._pending:
            return []
        if message.seq > self.seq + 1:
            self._pending[message.seq] = (message, frame)
            self.await_gap()
            return []
        ready = [self._take(message, frame)]
        while (early := self._pending.pop(self.seq + 1, None)) is not None:
            ready.append(self._take(*early))
        if not self._pending and self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        return ready

    def _take(self, entry: LogEntry, frame: bytes | None) -> tuple[LogEntry, bytes | None]:
        self.seq = entry.seq
        if isinstance(entry, Change):
            self._restate(entry.message)
        elif entry.reply_to is not None and entry.parent_replies is not None:
            parent = next(
                (m for m in self._recent if isinstance(m, Message) and m.seq == entry.reply_to),
                None,
            )
            if parent is not None and parent.rev < entry.seq:
                replies = entry.parent_replies
                self._restate(msgspec.structs.replace(parent, replies=replies, rev=entry.seq))
        self._recent.append(entry)
        return entry, frame

    def _restate(self, message: Message) -> None:
        """Hold ``message``'s new state wherever the recent entries carry it."""
        for index, cached in enumerate(self._recent):
            if isinstance(cached, Message):
                if cached.seq == message.seq and cached.rev <= message.rev:
                    self._recent[index] = message
            elif cached.target == message.seq and cached.message.rev <= message.rev:
                self._recent[index] = msgspec.structs.replace(cached, message=message)

    def await_gap(self) -> None:
        """Have the gap before the waiting messages read back soon, unless it fills."""
        if self._gap_timer is None:
            self._gap_timer = asyncio.get_running_loop().call_later(GAP_WAIT, self._gap)

    def _gap(self) -> None:
        self._gap_timer = None
        self._on_gap()

    async def missed(self) -> tuple[list[LogEntry], bool]:
        """One page of the stored entries after ``seq``, and whether more may follow."""
        limit = self._settings.max_replay or 1000
        messages = await self._store.fetch(self.room, after=self.seq, limit=limit)
        return messages, len(messages) == limit

    async def since(self, since: Since | None) -> tuple[Sequence[LogEntry], bool, int]:
        """What a joiner is sent: (entries, whether they are the whole gap, start).

        A recovered gap is every entry (messages and changes) with a seq above
        ``start`` that was committed when the read began, possibly a few more; never
        more than ``max_join_bytes`` of them (a longer gap is not replayed). Otherwise
        recent history: messages only, in their current state.
        """
        settings = self._settings
        if (
            since is not None
            and since.epoch == self.epoch
            and 0 <= since.seq <= self.seq
            and self.seq - since.seq <= settings.max_replay
        ):
            oldest = self._recent[0].seq if self._recent else self.seq + 1
            if since.seq + 1 >= oldest:
                gap: list[LogEntry] | None = [m for m in self._recent if m.seq > since.seq]
            else:
                gap = await self._read_gap(since.seq)
            if gap is not None and fits(gap, settings.max_join_bytes):
                return gap, True, since.seq
        history = newest_within(await self.newest_messages(), settings.max_join_bytes)
        return history, False, history[0].seq - 1 if history else self.seq

    async def newest_messages(self) -> list[Message]:
        """The newest ``history_on_join`` messages, each as it is now.

        Counted in messages, not log entries: however many changes follow them (a
        reaction toggled a hundred times), a joiner still gets the recent messages.
        """
        want = self._settings.history_on_join
        cached = _messages(list(self._recent))
        whole = not self._recent or self._recent[0].seq == 1
        if len(cached) >= want or whole:
            return cached[-want:] if want else []
        stored = _messages(await self._store.fetch(self.room, before=self.seq + 1, limit=want))
        # A change delivered while the store was read is in the cache: take the newer.
        newer = {m.seq: m for m in _messages(list(self._recent))}
        return [newer[m.seq] if m.seq in newer and newer[m.seq].rev > m.rev else m for m in stored]

    async def _read_gap(self, after: int) -> list[LogEntry] | None:
        """The messages after ``after``, read in pages; None once past ``max_join_bytes``.

        A client asking to resume from the start of a long history never makes the
        server read (or hold) more than one join's worth of it.
        """
        gap: list[LogEntry] = []
        size = 0
        while True:
            page = await self._store.fetch(self.room, after=after, limit=GAP_PAGE)
            size += sum(size_of(m) for m in page)
            if size > self._settings.max_join_bytes:
                return None
            gap += page
            if len(page) < GAP_PAGE:
                return gap
            after = page[-1].seq

    def recent_after(self, seq: int) -> list[LogEntry]:
        """The recent entries with a seq above ``seq``."""
        return [m for m in self._recent if m.seq > seq]

    def recent_speakers(self) -> list[str]:
        """The usernames of the recent messages' authors, most recent first, each once."""
        speakers = {m.user.username: None for m in reversed(self._recent) if isinstance(m, Message)}
        return list(speakers)

    def recent_authors(self) -> set[str]:
        """The usernames of the recent messages' authors."""
        return {m.user.username for m in self._recent if isinstance(m, Message)}

    def fresh_history(self) -> list[Message]:
        """The newest recent messages (``history_on_join`` entries), within ``max_join_bytes``."""
        history = _messages(list(self._recent)[-self._settings.history_on_join :])
        return newest_within(history, self._settings.max_join_bytes)

    async def page(self, before: int, limit: int) -> list[Message]:
        """Return up to ``limit`` messages older than ``before`` (for "load earlier")."""
        limit = min(limit, self._settings.history_page_size)
        cached = [m for m in _messages(list(self._recent)) if m.seq < before]
        whole = bool(self._recent) and self._recent[0].seq == 1
        if len(cached) >= limit or (cached and whole):
            return cached[-limit:]
        return _messages(await self._store.fetch(self.room, before=before, limit=limit))

    async def around(self, seq: int, limit: int) -> list[Message]:
        """Up to ``limit // 2`` messages before ``seq``, then those from ``seq`` on.

        ``limit`` in all (at most ``history_page_size``): fewer before the room's
        first message, fewer after its last. For opening a room at a message.
        """
        limit = min(limit, self._settings.history_page_size)
        before = await self.page(seq, limit // 2) if limit > 1 else []
        want = limit - len(before)
        oldest = self._recent[0].seq if self._recent else self.seq + 1
        if seq >= oldest:
            return before + [m for m in _messages(list(self._recent)) if m.seq >= seq][:want]
        after: list[Message] = []
        start = seq - 1
        while len(after) < want:
            page = await self._store.fetch(self.room, after=start, limit=GAP_PAGE)
            after += _messages(page)
            if len(page) < GAP_PAGE:
                break
            start = page[-1].seq
        return before + after[:want]

    def close(self) -> None:
        """Cancel the gap timer."""
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
