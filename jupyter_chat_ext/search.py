"""Search: the matching rules every store applies, and the server's ``search`` op.

A query is words: a message matches when its body has every word of the query
(in any order). Words are compared folded: case-insensitive (``casefold``),
diacritics ignored (NFKD, combining marks dropped: ``café`` finds ``Cafe``), and
compatibility forms unified (full-width letters, ligatures). A query word ending in
``*`` matches words that start with it (``plot*`` finds ``plotting``). A word is a
run of letters, marks and digits; each Han, Hiragana or Katakana character is a word
of its own (those scripts do not separate words with spaces). Deleted messages are
never found (their body is erased).

The same Python tokenizer decides both sides everywhere: SQLite's FTS5 index is fed
the folded words of each body (its ``ascii`` tokenizer then splits them exactly on
the spaces between them), and the stores that scan (memory, Redis) fold each body
and compare. So every store finds the same messages, and :func:`marks` (the
``[start, end)`` spans of the matching words in the body) agrees with what was found.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from .access import Action, readable, require, room_access
from .protocol import Found, ProtocolError, Search, SearchResults

if TYPE_CHECKING:
    from .history import HistoryStore

QUERY_MAX: Final = 1000  # characters of a query
TERMS_MAX: Final = 32  # words of a query
SEARCH_LIMIT: Final = 50  # results when a search does not say how many
ROOMS_MAX: Final = 1000  # rooms one search may name

# Han ideographs, Hiragana, Katakana: each character is a word (an optional voicing mark with it).
_CJK: Final = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# ASCII characters other than letters and digits: dropped from folded words (FTS5's
# ``ascii`` tokenizer would split on them).
_ASCII_OTHER: Final = {c: None for c in range(128) if not chr(c).isalnum()}


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """Words: runs of letters, digits and marks, or one CJK character (built once)."""
    # Marks are all below U+20000 but for the variation selectors at U+E0100.
    planes = [*range(0x20000), *range(0xE0000, 0xE1000)]
    marks = [c for c in planes if unicodedata.category(chr(c))[0] == "M"]
    ranges: list[str] = []
    start = previous = marks[0]
    for code in [*marks[1:], -1]:
        if code != previous + 1:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(previous))}")
            start = code
        previous = code
    mark = "".join(ranges)
    return re.compile(
        rf"[{_CJK}][{mark}]*|(?:(?![{_CJK}])[^\W_]|[{mark}])+",
    )


_ASCII_WORD: Final = re.compile(r"[a-z0-9]+")  # the words of lower-cased ASCII text


def fold(word: str) -> str:
    """A word as it is compared: case-folded, without diacritics, ASCII letters and digits only."""
    if word.isascii():  # letters and digits only (see words()): the fast, common case
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return kept.translate(_ASCII_OTHER)


def words(text: str) -> list[tuple[str, int, int]]:
    """The folded words of ``text`` with their ``[start, end)`` spans (empty ones dropped)."""
    found = []
    for match in _word_pattern().finditer(text):
        folded = fold(match.group())
        if folded:
            found.append((folded, match.start(), match.end()))
    return found


def folded(text: str) -> list[str]:
    """The folded words of ``text`` (as :func:`words` gives them, faster for ASCII text)."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return [word for word, _, _ in words(text)]


def indexed(body: str) -> str:
    """What a full-text index is fed for ``body``: its folded words, space-separated."""
    return " ".join(folded(body))


@dataclass(frozen=True)
class Term:
    """One word of a query; ``prefix`` matches the words that start with it."""

    word: str
    prefix: bool = False

    def matches(self, word: str) -> bool:
        """Whether a folded word of a body matches this term."""
        return word.startswith(self.word) if self.prefix else word == self.word


@dataclass(frozen=True)
class Query:
    """A parsed query: every term must match some word of a body."""

    text: str
    terms: tuple[Term, ...]

    def matches(self, body: str) -> bool:
        """Whether ``body`` has a word matching each term."""
        if body.isascii():
            lower = body.lower()
            if any(term.word not in lower for term in self.terms):
                return False  # cheap: most bodies of a scan are rejected here
            found = set(_ASCII_WORD.findall(lower))
        else:
            found = set(folded(body))
        return all(
            any(word.startswith(term.word) for word in found) if term.prefix else term.word in found
            for term in self.terms
        )

    def marks(self, body: str) -> list[tuple[int, int]]:
        """The ``[start, end)`` spans (in characters of ``body``) of its matching words."""
        return [
            (start, end)
            for word, start, end in words(body)
            if any(term.matches(word) for term in self.terms)
        ]

    def fts(self) -> str:
        """The query in FTS5 syntax: each term a quoted string (a prefix one with ``*``)."""
        parts = []
        for term in self.terms:
            quoted = '"' + term.word.replace('"', '""') + '"'
            parts.append(quoted + " *" if term.prefix else quoted)
        return " AND ".join(parts)


def parse(text: str, frame_id: str | None = None) -> Query:
    """The query ``text`` as terms, or ``invalid_field`` if it has no word (or too many)."""
    if len(text) > QUERY_MAX:
        raise ProtocolError(
            "invalid_field", f"a query is at most {QUERY_MAX} characters", id=frame_id
        )
    terms: list[Term] = []
    for word, _, end in words(text):
        term = Term(word, prefix=text[end : end + 1] == "*")
        if term not in terms:
            terms.append(term)
    if not terms:
        raise ProtocolError(
            "invalid_field",
            "the query has no words to search for (letters or digits)",
            id=frame_id,
        )
    if len(terms) > TERMS_MAX:
        raise ProtocolError(
            "invalid_field", f"a query has at most {TERMS_MAX} different words", id=frame_id
        )
    return Query(text, tuple(terms))


def newest_first(key_ts: float, room: str, seq: int) -> tuple[float, str, int]:
    """The sort key of search results: newest first, then by room, then newest seq."""
    return (-key_ts, room, -seq)


def highlight(
    body: str, marks: list[tuple[int, int]], before: str = "**", after: str = "**"
) -> str:
    """``body`` with each marked span wrapped in ``before`` and ``after``."""
    pieces = []
    last = 0
    for start, end in marks:
        pieces += [body[last:start], before, body[start:end], after]
        last = end
    pieces.append(body[last:])
    return "".join(pieces)


async def run(store: HistoryStore, username: str, frame: Search, max_results: int) -> SearchResults:
    """Answer a ``search`` frame of ``username``: only rooms they may read are searched.

    Named rooms are each checked (``forbidden`` for one they may not read); without
    names, every room the store has history for is filtered through
    :mod:`~jupyter_chat_ext.access`. At most ``max_results`` results.
    """
    from .history import supports  # not at the top: history imports this module

    query = parse(frame.query, frame.id)
    if frame.rooms is None:
        if not supports(store, "rooms"):
            raise ProtocolError(
                "not_supported",
                f"this server's history store ({type(store).__name__}) cannot list its "
                "rooms: name the rooms to search",
                id=frame.id,
            )
        rooms = readable(await store.rooms(), username)
    else:
        rooms = list(dict.fromkeys(frame.rooms))
        if len(rooms) > ROOMS_MAX:
            raise ProtocolError(
                "invalid_field", f"a search names at most {ROOMS_MAX} rooms", id=frame.id
            )
        for room in rooms:
            access = room_access(room, await store.get_access(room))
            require(access, username, Action.READ, room=room, frame_id=frame.id)
    limit = min(frame.limit or SEARCH_LIMIT, max_results)
    found = await store.search(query, rooms, limit) if rooms else []
    return SearchResults(
        id=frame.id,
        results=[
            Found(**msgspec.structs.asdict(message), marks=query.marks(message.body))
            for message in found
        ],
    )
