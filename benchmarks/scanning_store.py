"""SQLite history without the full-text index, for benchmarks/search.py's "before".

A server given ``--ChatExtensionApp.history_class=scanning_store.ScanningHistory``
(with this folder on ``PYTHONPATH``) searches by scanning messages, as a store with
no index does.
"""

from __future__ import annotations

from jupyter_chat_ext.history import SQLiteHistory


class ScanningHistory(SQLiteHistory):
    """SQLite history whose searches scan the rooms' messages (no FTS5 index)."""

    full_text = False
