"""Write one benchmark's section of docs/performance.md, leaving the others as they are."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
TITLE = "# Performance\n\nEach section is written by the benchmark it names; rerun it to refresh.\n"


def machine() -> str:
    """A one-line description of where a benchmark ran."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def write_section(name: str, body: str, path: Path = PERFORMANCE) -> None:
    """Replace (or append) the section between this benchmark's markers."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    text = path.read_text() if path.exists() else TITLE
    if not text.startswith("# Performance\n\nEach section"):
        text = TITLE  # an old single-benchmark file: start again
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
