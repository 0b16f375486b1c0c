"""Run the reliability scenarios and write their figures to docs/reliability.md.

Usage: python benchmarks/reliability.py [--scale N]

The figures come from tests/test_reliability.py (each test records what it measured);
--scale multiplies the message counts and fuzzed frames (CHAT_RELIABILITY_SCALE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LIMITS = [
    ("message body", "max_message_size", "bytes (UTF-8)"),
    ("live value", "max_value_size", "bytes of JSON"),
    ("messages per user", "message_rate_limit", "per second, bursts of `message_burst`"),
    ("live values per user", "data_rate_limit", "per second, bursts of `data_burst`"),
    ("unread bytes per connection", "max_send_queue", "bytes, then close code 4008"),
    ("connections per user", "max_connections_per_user", "then close code 4029"),
    ("rooms per connection", "max_rooms_per_connection", "then `too_many_rooms`"),
    ("room name", "max_room_name", "characters, then `invalid_room`"),
    ("history page", "history_page_size", "messages per `history` request"),
    (
        "what one `joined` carries",
        "max_join_bytes",
        "bytes of history, and as much of values; the rest follows or is left to `history`; a longer gap gets `recovered: false`",
    ),
    (
        "typing events per user",
        "typing_rate_limit",
        "per second, bursts of `typing_burst`, then `rate_limited`",
    ),
    (
        "joins per user",
        "join_rate_limit",
        "per second, bursts of `join_burst`, then `rate_limited` (clients retry)",
    ),
    ("topics per room", "max_topics_per_room", "then `too_many_topics`"),
    ("silent peer closed after", "heartbeat_timeout", "seconds without a pong"),
    (
        "handshake",
        "handshake_timeout",
        "seconds to send a request's headers (hub service: and its body), then the connection is dropped",
    ),
]

DURABILITY = """## What an acknowledgement promises

A chat message (or an edit, deletion or reaction) is acknowledged, by the sender's own
copy, only once the history store has committed it. What a crash can take back:

| what happens | SQLite, `history_fsync = False` (default: WAL, `synchronous=NORMAL`) | SQLite, `history_fsync = True` (`synchronous=FULL`) | Redis (`redis_url`) |
|---|---|---|---|
| the server process crashes or is killed (`kill -9`) | nothing acknowledged is lost: the commit was written to the WAL file, which the OS keeps | nothing acknowledged is lost | nothing acknowledged is lost: the append ran in Redis |
| the machine loses power, or its OS crashes | the messages acknowledged since the WAL was last synced may be lost: the checkpointer syncs it every second, so about the last second's | nothing acknowledged is lost: the WAL is synced before the acknowledgement | as Redis's `appendfsync`: `always` nothing, `everysec` about the last second's |
| what each message costs | a write to the WAL, on the event loop's thread (a fraction of a millisecond per batch) | the same, and one `fsync` per batch, on the store's thread (here ~3 ms at the median, ~20 ms at the 99th percentile; messages arriving meanwhile share the next) | one Redis script |

Either way the database stays consistent: a power loss takes back whole transactions,
the newest ones, and the room's `seq` goes on from the last one kept (the epoch stays).
A client that had seen a message lost that way and returns before the room's `seq` has
caught up with it gets `recovered: false` and reloads the room's history; one that
returns later keeps the lost message where a newer one took its `seq` (as with Redis on
`everysec`). The first row is tested for both settings by
`pytest tests/test_reliability.py -k test_every_acknowledged_message_survives_kill_9`;
a power loss cannot be tested here.
"""

THREAT_MODEL = """## Threat model

Who attacks: anyone who can chat on the server. On a personal Jupyter server that is
whoever holds its token (they can also run code, so the chat adds nothing to defend
there); on a JupyterHub it is every Hub user, each holding a valid login, who must not
read a room that is not theirs nor make a room or the service unusable for others. A
Hub user controls their own single-user server and its environment: no credential of
the service is ever placed there.

What they cannot do, and what stops it (each a test that attacks it):

| attack | what happens | test |
|---|---|---|
| speak as someone else | the server stamps every frame with the authenticated user; a delegation is signed and expires | `tests/test_server.py -k "forged or delegation"` |
| read a private or direct room they are not in | every frame is checked against the room's access (access.py), not only the join | `tests/test_private_rooms.py -k matrix` |
| join a room while its owner creates it as private | creation is one step no join interleaves with, on one process and across Redis replicas | `tests/test_private_rooms.py -k race`, `tests/test_redis.py -k private_creation` |
| squat a name so that someone's private room is really theirs | asking for a private room that exists fails with `room_exists` | `tests/test_private_rooms.py -k never_lands` |
| lock late joiners out with big live values | values past a join's budget follow under the send-queue bound, one at a time | `tests/test_abuse.py -k big_values` |
| make the server build huge replays (`since` at the start) | a join carries at most `max_join_bytes`; gaps are read in pages | `tests/test_abuse.py -k replay` |
| flood typing, topics or new rooms | per-user rate limits and a topic limit; an empty room writes nothing to disk; the WAL is cut back | `tests/test_abuse.py -k floods`, `tests/test_history.py -k "wal or new_names"` |
| inflate every frame with a huge display name | display fields are cut where the user is stamped | `tests/test_abuse.py -k identity` |
| crash a handler with deep or out-of-range JSON | `bad_frame` / `invalid_field`, no traceback, the connection goes on | `tests/test_abuse.py -k malformed` |
| run script in someone's page | messages are sanitized Markdown, everything else text | `tests/test_browser.py -k xss` |
| pass for someone by taking their display name | the widget shows `name (username)` where names collide; hovering an author shows the username | `tests/test_browser.py -k twins` |

What they can still do: post as fast as the rate limits allow (an admin tightens them
on a shared Hub), and use their own share of memory: per connection at most
`max_send_queue` unread bytes plus one frame, per user `max_connections_per_user`
connections. Limits are per process: with N replicas, a user gets N times them.

### Authentication, delegations and handshakes

- **Who sent what** is stamped by the process that authenticated the connection,
  never taken from a frame (`Who gets in` above).
- **The hub service's handshake** names a Hub user or is refused: 401 when it names
  none (no credentials, an unknown or expired token, a cookie another service issued:
  log in to the Hub), 403 when the user or token lacks `access:services!service=<name>`.
  Either answer says why in a JSON `message`, and neither is a server error
  (`pytest tests/test_hub_refusals.py`, against a real Hub).
- **A delegation** (`POST {base_url}chat-ext/delegation`, signed with the server's
  cookie secret) lets a connection that authenticated by itself on the *same* server
  speak as the person who asked for it, marked `kernel`: send, publish, join and read
  every room they may (their private and direct rooms included), nothing more. It
  cannot obtain another delegation or rename the person (those go by the
  connection's own credentials), and no other server nor the hub service accepts it.
  Anyone authenticated on that server who holds the string can use it, so it is valid
  only `delegation_ttl` seconds (30 minutes) from when it was issued; the widget
  renews it every third of that while it is shown. A connection that
  presented it is closed when it expires (close code 4001); `ChatClient` then
  reconnects with the renewal, or as its own identity if the widget is gone. So a
  delegation handed to a kernel speaks for its person at most `delegation_ttl` seconds
  after the person last showed the widget (`pytest tests/test_delegation_expiry.py`).
- **Half-open handshakes**: a client that connects and sends nothing, part of a
  request, or its headers a byte at a time is dropped `handshake_timeout` seconds
  (60) after it connected, on both hosts; on the hub service a request body gets as
  long again (`pytest tests/test_handshake_timeout.py`, raw sockets). A completed
  WebSocket is not subject to it: a silent one is closed by the heartbeat
  (`heartbeat_timeout`), and a user's connections are capped by
  `max_connections_per_user`.
"""

AUTH = [
    ("no credentials", "refused at the handshake (403)"),
    ("wrong token (header or query string)", "refused at the handshake (403)"),
    (
        "right token in the query string",
        "accepted, as jupyter_server accepts it (browsers cannot set headers on a WebSocket)",
    ),
    ("login cookie from a foreign Origin", "refused at the handshake (403)"),
    ("authorizer denies the `chat` resource", "refused at the handshake (403)"),
    (
        "frames claiming another sender (`user` field)",
        "ignored: the server stamps the authenticated user",
    ),
    ("forged or expired delegation", "refused at the handshake (403)"),
    (
        "a delegated connection outliving its delegation",
        "closed when it expires (close code 4001); no frame after that is stamped as the "
        "person (`pytest tests/test_delegation_expiry.py`)",
    ),
    (
        "a non-member joining or reading a private or direct room",
        "refused with `forbidden` (`pytest tests/test_server.py -k 'private or direct'`; "
        "on a JupyterHub: tests/test_hub.py)",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "figures.json"
        env = {
            **os.environ,
            "CHAT_RELIABILITY_REPORT": str(report),
            "CHAT_RELIABILITY_SCALE": str(args.scale),
        }
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--numprocesses=0",  # in this process: no pytest-xdist worker beside it
                "tests/test_reliability.py",
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
        elapsed = time.monotonic() - started
        figures = json.loads(report.read_text())

    from jupyter_chat_ext.app import ChatExtensionApp

    traits = ChatExtensionApp.class_traits(config=True)
    command = "python benchmarks/reliability.py" + (
        f" --scale {args.scale}" if args.scale > 1 else ""
    )
    lines = [
        "# Reliability",
        "",
        f"Figures from one run of `{command}` ({elapsed:.0f} s) on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}. "
        "Every figure is measured by a test in `tests/test_reliability.py`, which also asserts "
        "the invariant (exact counts and order, never a timing); the same tests run in CI at "
        "scale 1. `--scale N` multiplies the messages and fuzzed frames.",
        "",
        "| scenario | figure | value | reproduce |",
        "|---|---|---|---|",
    ]
    for figure in figures:
        selector = f"`pytest tests/test_reliability.py -k {figure['test']}`"
        lines.append(
            f"| {figure['scenario']} | {figure['figure']} | {figure['value']} | {selector} |"
        )
    lines += [
        "",
        "The decoder alone is fuzzed with another 10,000 generated frames per run "
        "(`pytest tests/test_protocol.py -k decoder`), and the pure flow-control logic "
        "(conflation, the send-queue bound) by `tests/test_session.py`.",
        "",
        DURABILITY.rstrip(),
        "",
        "## Limits (defaults; each a `ChatExtensionApp` trait)",
        "",
        "| limit | default | unit, and what happens past it | trait |",
        "|---|---|---|---|",
    ]
    for label, name, unit in LIMITS:
        lines.append(f"| {label} | {traits[name].default_value} | {unit} | `{name}` |")
    lines += [
        "",
        "Enforced by `pytest tests/test_server.py -k abuse_limits`, the size and rate tests "
        "there, and `pytest tests/test_abuse.py`.",
        "",
        '## Who gets in (`pytest tests/test_server.py -k "auth or forged or origin or authorizer"`)',
        "",
        "| attempt | result |",
        "|---|---|",
    ]
    lines += [f"| {attempt} | {result} |" for attempt, result in AUTH]
    lines += ["", THREAT_MODEL.rstrip()]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
