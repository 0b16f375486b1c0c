"""Where the server spends its time in scenario (a) of benchmarks/fanout.py.

Usage: python benchmarks/profile_fanout.py [--rate 1000] [--seconds 5]

Starts `jupyter server` with the extension, drives it with the fan-out load generator
(100 clients, 10 senders, `rate` msgs/s) and samples it with py-spy (installed from
PyPI if missing); writes the top of the profile to docs/performance.md ("profile").
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from fanout import NODE_DIR, Chat, install, raise_fd_limit  # noqa: E402
from report import machine, write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    install()
    if shutil.which("py-spy") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        chat = Chat(Path(tmp))
        try:
            cfg = {
                "kind": "chat",
                "token": chat.token,
                "room": "profile",
                "clients": 100,
                "senders": 10,
                "rate": args.rate,
                "duration": args.seconds + 3,
                "expected": int(args.rate * (args.seconds + 3) * 100),
                "url": chat.urls()[0],
            }
            gen = subprocess.Popen(
                ["node", str(NODE_DIR / "loadgen.mjs"), json.dumps(cfg)], stdout=subprocess.PIPE
            )
            assert gen.stdout is not None
            gen.stdout.readline()  # every client joined: the load starts
            raw = Path(tmp) / "profile.txt"
            spy = ["py-spy", "record", "-d", str(args.seconds), "-r", "200", "-f", "raw"]
            subprocess.run(
                [*spy, "-o", str(raw), "-p", str(chat.pid)], check=True, capture_output=True
            )
            run = json.loads(gen.communicate()[0].splitlines()[-1])
        finally:
            chat.stop()
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            if line.strip():
                stack, count = line.rsplit(" ", 1)
                own[stack.split(";")[-1]] += int(count)
                total += int(count)
    rows = "\n".join(
        f"| {100 * n / total:.1f}% | `{frame.replace('|', '/')}` |"
        for frame, n in own.most_common(12)
    )
    report = f"""## Profile of scenario (a)

Measured by `python benchmarks/profile_fanout.py --rate {args.rate:g} --seconds {args.seconds}`
on {machine()}: py-spy samples of the server (all threads) while 100 clients in one
room receive {args.rate:g} msgs/s ({run["copies_per_s"]:,.0f} copies/s delivered,
{run["lost"]} lost, p50 {run["p50_ms"]:.1f} ms, p99 {run["p99_ms"]:.1f} ms). Top frames by
own time; `write_to_fd` is the `send()` of the coalesced writes, `_worker` and
`_write_batch_sync` the SQLite writer thread.

| own time | frame |
|---|---|
{rows}
"""
    write_section("profile", report)
    print(report)


if __name__ == "__main__":
    main()
