"""Remembered identities: the login cookie each server gave this user's programs.

jupyter_server gives a token-authenticated client a new anonymous identity unless it
sends back the login cookie it was given. Keeping that cookie per server URL makes
every ``jupyter-chat-ext`` command of one person (and every ``ChatClient`` created
with ``remember_identity=True``) speak as the same person. The cookie proves an
identity to that server, like the token does, so the file is readable by its owner
only, as Jupyter keeps its runtime files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

log = logging.getLogger(__name__)


def store_path() -> Path:
    """Where remembered identities are kept."""
    return Path(jupyter_data_dir()) / "jupyter_chat_ext" / "identity.json"


def _read() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        url: {str(k): str(v) for k, v in cookies.items()}
        for url, cookies in data.items()
        if isinstance(url, str) and isinstance(cookies, dict)
    }


def load_cookies(url: str) -> dict[str, str]:
    """The cookies remembered for the server at ``url`` (empty if none)."""
    return _read().get(url, {})


def save_cookies(url: str, cookies: dict[str, str]) -> None:
    """Remember ``cookies`` for ``url``; a failure to write is logged, never raised."""
    path = store_path()
    data = _read()
    data[url] = dict(cookies)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".identity-")  # mode 0600
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("chat: could not remember this identity in %s: %s", path, exc)
