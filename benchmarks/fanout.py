"""Fan-out side by side: jupyter-chat-ext, Node `ws`, Node Socket.IO and python-socketio.

Usage: python benchmarks/fanout.py [--rounds 3] [--quick] [--only a,b,c,d,e,f]
                                  [--servers chat,ws,socketio,python-socketio]

One command runs every scenario against every server, alternating servers within
each round (so the ratios hold on a noisy machine), prints the table and writes it to
docs/performance.md (section "fanout"). The load generator is a separate Node
process (benchmarks/node/loadgen.mjs, the `ws` library) speaking our protocol and
Socket.IO's; it reports its own CPU cost per copy received. Node `ws` is a bare
broadcast (benchmarks/node/ws_server.mjs: no store, no checks), the floor any chat
server is measured against. It installs what it needs:
the npm packages in benchmarks/node, python-socketio and aiohttp from PyPI, and uses
the machine's redis-server for (e).

Scenarios: (a) 100 clients in one room, 10 senders, 1,000 msgs/s in all for 10 s;
(b) 1,000 clients, 100 msgs/s; (c) capacity at 100 clients: the highest rate with
p99 <= 100 ms and no copy lost; (d) 2,000 and 10,000 idle connections, server RSS per
connection; (e) two jupyter-chat-ext processes on Redis, clients split between them,
at the rate of (a); (f) ordinary load: 100 clients, 400 msgs/s (the latency a person
sees). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "benchmarks" / "node"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import machine, write_section  # noqa: E402

from helpers import JupyterServer, RedisServer, free_port  # noqa: E402

CHAT_OPTIONS = (
    "--ChatExtensionApp.message_rate_limit=1e9",
    "--ChatExtensionApp.message_burst=1000000000",
    "--ChatExtensionApp.max_connections_per_user=100000",
    "--ChatExtensionApp.history_on_join=0",
)


# The load of scenarios (a) and (b); (e) is (a) with the clients split over replicas.
SCENARIOS: dict[str, dict[str, Any]] = {
    "a": {"clients": 100, "senders": 10, "rate": 1000},
    "b": {"clients": 1000, "senders": 10, "rate": 100},
    "f": {"clients": 100, "senders": 10, "rate": 400},
}


def raise_fd_limit() -> None:
    """Allow 10,000+ sockets per process (the generator's and the servers')."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65_536)), hard))


def spawn_loadgen(cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the Node load generator with ``cfg``; its stdin and stdout are pipes."""
    return subprocess.Popen(
        ["node", str(NODE_DIR / "loadgen.mjs"), json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=raise_fd_limit,
    )


def install() -> None:
    """The npm packages of the generator and the Node server; python-socketio."""
    if not (NODE_DIR / "node_modules" / "ws").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    try:
        import aiohttp  # type: ignore[import-not-found]  # noqa: F401
        import socketio  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pip = [sys.executable, "-m", "pip", "install", "-q", "python-socketio>=5", "aiohttp"]
        subprocess.run(pip, check=True)


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


class Server:
    """A server under test, started once and driven by every scenario."""

    name = ""
    kind = "chat"
    token = ""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def urls(self) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)


class ScriptServer(Server):
    """A server script that prints "listening" once it accepts connections."""

    def __init__(self, home: Path, cmd: list[str]) -> None:
        super().__init__(home)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*cmd, str(self.port)], stdout=subprocess.PIPE, cwd=NODE_DIR, preexec_fn=raise_fd_limit
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if b"listening" in line:
                return
        raise RuntimeError(f"{cmd} exited")

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.port}/socket.io/"]


class NodeSocketIO(ScriptServer):
    name = "Node Socket.IO"
    kind = "socketio"

    def __init__(self, home: Path) -> None:
        super().__init__(home, ["node", str(NODE_DIR / "socketio_server.mjs")])


class NodeWs(ScriptServer):
    name = "Node ws (bare broadcast)"

    def __init__(self, home: Path) -> None:
        super().__init__(home, ["node", str(NODE_DIR / "ws_server.mjs")])

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.port}/"]


class PythonSocketIO(ScriptServer):
    name = "python-socketio (aiohttp)"
    kind = "socketio"

    def __init__(self, home: Path) -> None:
        super().__init__(home, [sys.executable, str(ROOT / "benchmarks" / "psio_server.py")])


class Chat(Server):
    """jupyter-chat-ext in `jupyter server` (SQLite history), or several on one Redis."""

    name = "jupyter-chat-ext"

    def __init__(self, home: Path, replicas: int = 1, redis_url: str = "") -> None:
        super().__init__(home)
        options = CHAT_OPTIONS + (
            (f"--ChatExtensionApp.redis_url={redis_url}",) if redis_url else ()
        )
        raise_fd_limit()  # inherited by the servers
        self.servers = [
            JupyterServer(home / f"s{i}", args=options).start() for i in range(replicas)
        ]
        self.token = self.servers[0].token
        self.proc = self.servers[0].proc

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{s.port}/chat-ext/ws" for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


SERVERS: dict[str, Callable[[Path], Server]] = {
    "chat": Chat,
    "ws": NodeWs,
    "socketio": NodeSocketIO,
    "python-socketio": PythonSocketIO,
}


def loadgen(server: Server, room: str, **cfg: Any) -> dict[str, Any]:
    """Run the generator once against ``server``; its result, with the server's CPU."""
    cfg = {"kind": server.kind, "token": server.token, "room": room, **cfg}
    cfg["expected"] = int(cfg["rate"] * cfg["duration"] * cfg["clients"])
    cpu0, _ = proc_stat(server.pid)
    wall0 = time.monotonic()
    results = []
    for url in server.urls()[:1] if not cfg.get("split") else server.urls():
        results.append({**cfg, "url": url})
    if len(results) == 1:
        out = subprocess.run(
            ["node", str(NODE_DIR / "loadgen.mjs"), json.dumps(results[0])],
            capture_output=True,
            check=True,
            timeout=600,
            preexec_fn=raise_fd_limit,
        ).stdout
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
    else:
        result = split_run(results)
    cpu1, rss = proc_stat(server.pid)
    result["server_cpu"] = (cpu1 - cpu0) / (time.monotonic() - wall0)
    result["server_rss_mb"] = rss / 1e6
    print(f"{server.name} {room}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def split_run(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Clients split over several servers (e): one generator per server, run together."""
    share = [
        dict(
            c,
            clients=c["clients"] // len(configs),
            senders=max(1, c["senders"] // len(configs)),
            rate=c["rate"] / len(configs),
        )
        for c in configs
    ]
    for c in share:
        c["expected"] = int(c["rate"] * c["duration"] * c["clients"] * len(configs))
        c["wait_start"] = True
        c["total_copies"] = c["expected"]
    procs = [spawn_loadgen(c) for c in share]
    for proc in procs:  # every client of every generator has joined: start together
        assert proc.stdout is not None
        proc.stdout.readline()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    outs = [json.loads(p.communicate(timeout=600)[0].splitlines()[-1]) for p in procs]
    return {
        "delivered": sum(o["delivered"] for o in outs),
        "expected": sum(o["sent"] for o in outs) * sum(c["clients"] for c in share),
        "lost": sum(o["sent"] for o in outs) * sum(c["clients"] for c in share)
        - sum(o["delivered"] for o in outs),
        "copies_per_s": sum(o["copies_per_s"] for o in outs),
        "p50_ms": max(o["p50_ms"] for o in outs),
        "p99_ms": max(o["p99_ms"] for o in outs),
        "max_ms": max(o["max_ms"] for o in outs),
        "generator_us_per_copy": statistics.mean(o["generator_us_per_copy"] for o in outs),
    }


@contextlib.contextmanager
def idle_clients(server: Server, count: int, room: str) -> Iterator[None]:
    """``count`` idle generator clients in ``room``, all joined, while in the block."""
    cfg = {
        "kind": server.kind,
        "token": server.token,
        "room": room,
        "clients": count,
        "idle": True,
        "url": server.urls()[0],
    }
    gen = spawn_loadgen(cfg)
    assert gen.stdout is not None and gen.stdin is not None
    try:
        gen.stdout.readline()  # {"ready": count}: every client has joined
        yield
    finally:
        gen.stdin.close()
        gen.wait(120)


def idle(server: Server, count: int) -> float:
    """Server RSS per idle connection, in KB, with ``count`` clients in one room."""
    _, before = proc_stat(server.pid)
    with idle_clients(server, count, f"idle-{count}"):
        _, after = proc_stat(server.pid)
    return (after - before) / count / 1e3


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def capacity(server: Server, rounds_room: str, duration: float) -> dict[str, Any]:
    """The highest rate (copies/s at 100 clients) with p99 <= 100 ms and nothing lost."""
    best: dict[str, Any] = {"copies_per_s": 0.0, "rate": 0}
    for rate in (100, 200, 400, 700, 1000, 1300, 1600, 2000, 2500, 3000):
        run = loadgen(
            server, f"{rounds_room}-{rate}", clients=100, senders=10, rate=rate, duration=duration
        )
        if run["lost"] > 0 or run["p99_ms"] > 100:
            break
        best = {**run, "rate": rate}
    return best


DEFAULT_ONLY = "a,b,c,d,e,f"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    parser.add_argument("--only", default=DEFAULT_ONLY)
    parser.add_argument("--servers", default=",".join(SERVERS), help="which servers to run")
    args = parser.parse_args()
    only = set(args.only.split(","))
    duration = 3.0 if args.quick else 10.0
    install()
    raise_fd_limit()
    results: dict[str, dict[str, list[Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        makers = [SERVERS[name] for name in args.servers.split(",")]
        servers = [make(Path(tmp) / f"server{i}") for i, make in enumerate(makers)]
        redis = (
            RedisServer(
                shutil.which("redis-server") or "redis-server",
                Path(tmp) / "redis",
                fsync="everysec",
            ).start()
            if "e" in only
            else None
        )
        replicas = Chat(Path(tmp) / "replicas", replicas=2, redis_url=redis.url) if redis else None
        try:
            for rnd in range(args.rounds):
                for server in servers:
                    mine = results.setdefault(server.name, {})
                    for key in ("a", "b", "f"):
                        if key in only:
                            load = dict(SCENARIOS[key], duration=duration)
                            mine.setdefault(key, []).append(loadgen(server, f"{key}{rnd}", **load))
                    if "c" in only:
                        mine.setdefault("c", []).append(
                            capacity(server, f"c{rnd}", min(duration, 3.0))
                        )
                    if "d" in only and rnd == 0:
                        mine["d"] = [idle(server, 2000), idle(server, 10_000)]
                if replicas is not None:
                    results.setdefault("replicas", {}).setdefault("e", []).append(
                        loadgen(
                            replicas,
                            f"e{rnd}",
                            **SCENARIOS["a"],
                            duration=duration,
                            split=True,
                        )
                    )
        finally:
            for server in servers:
                server.stop()
            if replicas is not None:
                replicas.stop()
            if redis is not None:
                redis.stop()
    report = render(results, args, duration)
    # A run of some scenarios or servers only has a section of its own (the whole
    # side-by-side table stays as it was measured).
    whole = args.only == DEFAULT_ONLY and args.servers == ",".join(SERVERS)
    write_section("fanout" if whole else f"fanout-{args.only.replace(',', '')}", report)
    print(report)


def command(args: argparse.Namespace) -> str:
    """The command line that measured a table."""
    words = ["python benchmarks/fanout.py", f"--rounds {args.rounds}"]
    words += ["--quick"] if args.quick else []
    words += [f"--only {args.only}"] if args.only != DEFAULT_ONLY else []
    words += [f"--servers {args.servers}"] if args.servers != ",".join(SERVERS) else []
    return " ".join(words)


def render(
    results: dict[str, dict[str, list[Any]]], args: argparse.Namespace, duration: float
) -> str:
    def row(runs: list[dict[str, Any]]) -> str:
        return (
            (
                f"{median(runs, 'copies_per_s'):,.0f}/s | {sum(r['lost'] for r in runs)} | "
                f"{median(runs, 'p50_ms'):.1f} / {median(runs, 'p99_ms'):.1f} / {median(runs, 'max_ms'):.0f} ms | "
                f"{median(runs, 'server_cpu') * 100:.0f}% | "
                f"{statistics.median(r['server_cpu'] / r['copies_per_s'] * 1e6 for r in runs):.1f} µs | "
                f"{median(runs, 'server_rss_mb'):.0f} MB"
            )
            if runs and "server_cpu" in runs[0]
            else "-"
        )

    part = "" if args.only == DEFAULT_ONLY else f": scenarios {args.only}"
    lines = [
        f"## Fan-out side by side{part}",
        "",
        f"Measured by `{command(args)}` on {machine()}:",
        f"servers, Redis and the load generator share the machine; {duration:g} s per run; medians of",
        f"{args.rounds} rounds, servers alternating within each round; latency is send to receipt",
        "(p50 / p99 / max). Lost counts every round.",
        "",
        "| scenario | server | delivered | lost | latency | server CPU | per copy | server RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = [n for n in results if n != "replicas"]
    for key, label in (
        ("a", "(a) 100 clients, 1,000 msgs/s"),
        ("b", "(b) 1,000 clients, 100 msgs/s"),
        ("f", "(f) 100 clients, 400 msgs/s"),
    ):
        for name in names:
            if key in results[name]:
                lines.append(f"| {label} | {name} | {row(results[name][key])} |")
    if "replicas" in results:
        lines.append(
            f"| (e) as (a), 2 replicas on Redis | jupyter-chat-ext | {row(results['replicas']['e'])} |"
        )
    cap = [n for n in names if "c" in results[n]]
    if cap:
        lines += [
            "",
            "| (c) capacity at 100 clients (p99 <= 100 ms, nothing lost) | copies/s |",
            "|---|---|",
        ]
        for name in cap:
            lines.append(f"| {name} | {median(results[name]['c'], 'copies_per_s'):,.0f} |")
    idle_rows = [n for n in names if "d" in results[n]]
    if idle_rows:
        lines += [
            "",
            "| (d) idle connections: server RSS per connection | 2,000 | 10,000 |",
            "|---|---|---|",
        ]
        for name in idle_rows:
            two, ten = results[name]["d"]
            lines.append(f"| {name} | {two:.1f} KB | {ten:.1f} KB |")
    costs = [r["generator_us_per_copy"] for n in names for r in results[n].get("a", [])]
    if costs:
        lines += [
            "",
            f"The load generator spent {statistics.median(costs):.1f} µs of CPU per copy received (median over the (a) runs).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
