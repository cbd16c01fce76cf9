"""Swarm benchmark: how fast p2pai nodes join and are declared dead, and what an idle node costs.

Real `p2pai start` processes, all on 127.0.0.1 (API, peer endpoint, libp2p; mDNS bound to
127.0.0.1 or off), no model loaded. One invocation:

1. starts a swarm of 3 (A, then B and C bootstrapped to A; mDNS on 127.0.0.1 for all three);
2. idle cost: each node's CPU (utime+stime) over IDLE_WINDOW_S and its VmRSS, `--repeat` windows;
3. `--repeat` rounds of:
   - join by bootstrap: spawn a 4th node with `--bootstrap A --no-mdns`; time to its own
     /readyz and to being online on A, B and C (their /api/p2p polled every 20 ms);
   - SIGKILL it: time until A, B and C show it offline;
   - join by mDNS: spawn a 4th node with `--mdns-interface 127.0.0.1` and no bootstrap, timed the same way;
   - SIGSTOP it (frozen: its connections stay open): time until A, B and C show it offline;
     then SIGCONT and stop it.

Run `python bench/bench_swarm.py --help` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_single_node import CLOCK_TICKS, CpuMeter, free_port, machine, markdown_table

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.02
"""How often the observers' /api/p2p (and the newcomer's /readyz) are polled."""
HTTP_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 30.0
DETECT_TIMEOUT_S = 15.0
SETUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SETTLE_S = 3.0
"""After the swarm of 3 formed, before the first idle window: start-up work is over."""
IDLE_WINDOW_S = 10.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "swarm.json"

TARGETS = {"join_s": 2.0, "detect_s": 3.0, "idle_rss_mb": 150.0}


class QuietMeter(CpuMeter):
    """CpuMeter that remembers the last CPU time of each of our processes.

    A node killed during a measurement disappears from /proc; without the cache, its
    whole lifetime's CPU would drop out of "ours" and show up as others' use. Once
    reaped, a node is `retire`d: its PID may be reused by someone else's process.
    """

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids)
        self._last: dict[int, int] = {}
        self._retired = 0

    def mark(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        ours = 0
        for pid in self.pids:
            ticks = process_ticks(pid)
            if ticks is not None:
                self._last[pid] = ticks
            ours += self._last.get(pid, 0)
        ours += self._retired
        machine_ticks = user + nice + system + irq + softirq + steal
        return time.perf_counter(), machine_ticks / CLOCK_TICKS, ours / CLOCK_TICKS

    def retire(self, pid: int) -> None:
        """Stop reading a reaped process; what it used so far stays counted as ours."""
        if pid in self.pids:
            self.pids.remove(pid)
            self._retired += self._last.pop(pid, 0)


def process_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks, None once it is gone."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(after_name[11]) + int(after_name[12])


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Node:
    """A `p2pai start` process this benchmark started: loopback only, stopped by its own PID."""

    def __init__(self, name: str, workdir: Path, token: str, models_dir: Path, *, mdns: bool,
                 bootstrap: str | None = None, extra: tuple[str, ...] = ()) -> None:
        """`extra`: more `p2pai start` arguments (the chaos and soak benchmarks serve models)."""
        self.name = name
        self.port = free_port()
        self.p2p_port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.data_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        self.argv = [
            sys.executable, "-m", "p2pai", "start", "--token", token, "--name", name,
            "--data-dir", str(self.data_dir), "--models-dir", str(models_dir),
            "--listen", f"{HOST}:{self.port}", "--peer-listen", f"{HOST}:0",
            "--p2p-listen", f"/ip4/{HOST}/tcp/{self.p2p_port}",
            *(["--mdns-interface", HOST] if mdns else ["--no-mdns"]),
            *(["--bootstrap", bootstrap] if bootstrap else []),
            *extra,
        ]
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": pythonpath}
        self.proc: subprocess.Popen[bytes] | None = None
        self.id: str | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=str(REPO))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def bootstrap_addr(self) -> str:
        assert self.id
        return f"/ip4/{HOST}/tcp/{self.p2p_port}/p2p/{self.id}"

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGCONT (it may be frozen), SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        else:
            self.proc.wait(timeout=STOP_TIMEOUT_S)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def is_ready(session: aiohttp.ClientSession, node: Node) -> bool:
    try:
        async with session.get(node.url + "/readyz", timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def swarm_view(session: aiohttp.ClientSession, node: Node) -> tuple[set[str], set[str]] | None:
    """(online peer ids, all known peer ids) as `node` sees them, None if it did not answer."""
    view = await get_json(session, node.url + "/api/p2p")
    if view is None:
        return None
    peers = [n for n in view["federated_nodes"] if not n["self"]]
    return {n["id"] for n in peers if n["online"]}, {n["id"] for n in peers}


async def ticks(started: float) -> Any:
    """Sleep to the next POLL_S tick after `started`: polls stay on a fixed 20 ms grid."""
    elapsed = time.monotonic() - started
    await asyncio.sleep(POLL_S - elapsed % POLL_S)


async def start_swarm(session: aiohttp.ClientSession, workdir: Path, token: str, models_dir: Path) -> list[Node]:
    """A, then B and C bootstrapped to A (mDNS on 127.0.0.1 for all): online on each other."""
    seed = Node("a", workdir, token, models_dir, mdns=True)
    nodes = [seed]
    seed.start()
    await wait_ready(session, seed)
    for name in ("b", "c"):
        node = Node(name, workdir, token, models_dir, mdns=True, bootstrap=seed.bootstrap_addr())
        node.start()
        nodes.append(node)
    for node in nodes[1:]:
        await wait_ready(session, node)
    ids = {n.id for n in nodes}
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        views = [await swarm_view(session, n) for n in nodes]
        if all(v is not None and v[0] == ids - {n.id} for v, n in zip(views, nodes, strict=True)):
            return nodes
        await asyncio.sleep(0.1)
    raise TimeoutError("the swarm of 3 did not form")


async def wait_ready(session: aiohttp.ClientSession, node: Node) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not node.alive():
            raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")  # type: ignore[union-attr]
        if await is_ready(session, node):
            view = await get_json(session, node.url + "/api/p2p")
            if view is not None:
                node.id = view["self"]["id"]
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{node.name} not ready after {SETUP_TIMEOUT_S:.0f} s:\n{node.log_tail()}")


@dataclass
class Join:
    how: str
    ready_s: float | None
    """Spawn to the newcomer's /readyz answering 200."""
    seen_s: dict[str, float | None]
    """Spawn to online on each observer."""
    others_cores: float
    node_id: str | None = None

    @property
    def join_s(self) -> float | None:
        """Spawn to online on every observer."""
        return None if None in self.seen_s.values() else max(self.seen_s.values())  # type: ignore[type-var]

    @property
    def after_ready_s(self) -> float | None:
        return self.join_s - self.ready_s if self.join_s is not None and self.ready_s is not None else None


@dataclass
class Detection:
    how: str
    offline_s: dict[str, float | None]
    others_cores: float

    @property
    def detect_s(self) -> float | None:
        return None if None in self.offline_s.values() else max(self.offline_s.values())  # type: ignore[type-var]


@dataclass
class Idle:
    cores: dict[str, float]
    rss_mb: dict[str, float]
    loaded: dict[str, list[str]]
    others_cores: float
    window_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def measure_join(session: aiohttp.ClientSession, observers: list[Node], newcomer: Node, how: str,
                       meter: QuietMeter) -> Join:
    """Spawn `newcomer`; poll its /readyz and the observers' /api/p2p on a 20 ms grid."""
    known: set[str] = set()
    for node in observers:
        view = await swarm_view(session, node)
        assert view is not None, f"{node.name} does not answer"
        known |= view[1]
    await asyncio.to_thread(meter.wait_quiet)
    since = meter.mark()
    started = time.monotonic()
    newcomer.start()
    meter.pids.append(newcomer.pid)
    ready_s: float | None = None
    seen: dict[str, float | None] = {n.name: None for n in observers}
    found: set[str] = set()
    while time.monotonic() - started < JOIN_TIMEOUT_S:
        pending = [n for n in observers if seen[n.name] is None]
        checks = [swarm_view(session, n) for n in pending]
        if ready_s is None:
            checks.append(is_ready(session, newcomer))
        results = await asyncio.gather(*checks)
        now = time.monotonic() - started
        for node, view in zip(pending, results, strict=False):
            new = view[0] - known if view is not None else set()
            if new:
                seen[node.name] = now
                found |= new
        if ready_s is None and results[-1] is True:
            ready_s = now
        if ready_s is not None and None not in seen.values():
            break
        if not newcomer.alive():
            raise RuntimeError(f"{newcomer.name} exited:\n{newcomer.log_tail()}")
        await ticks(started)
    others = meter.others_cores(since)
    if ready_s is not None:
        view = await get_json(session, newcomer.url + "/api/p2p")
        newcomer.id = view["self"]["id"] if view else None
    if found and found != {newcomer.id}:
        print(f"  warning: observers saw {found} come online, the newcomer is {newcomer.id}", file=sys.stderr)
    return Join(how, ready_s, seen, others, newcomer.id)


async def measure_detection(session: aiohttp.ClientSession, observers: list[Node], victim: Node,
                            sig: signal.Signals, meter: QuietMeter) -> Detection:
    """Send `sig` to `victim`; poll the observers until none shows it online."""
    assert victim.id
    how = {signal.SIGKILL: "kill", signal.SIGSTOP: "freeze"}[sig]
    await asyncio.to_thread(meter.wait_quiet)
    for node in observers:  # it must be online everywhere before it dies
        view = await swarm_view(session, node)
        if view is None or victim.id not in view[0]:
            print(f"  warning: {victim.name} not online on {node.name} before {how}", file=sys.stderr)
    since = meter.mark()
    started = time.monotonic()
    victim.signal(sig)
    offline: dict[str, float | None] = {n.name: None for n in observers}
    while time.monotonic() - started < DETECT_TIMEOUT_S:
        pending = [n for n in observers if offline[n.name] is None]
        views = await asyncio.gather(*(swarm_view(session, n) for n in pending))
        now = time.monotonic() - started
        for node, view in zip(pending, views, strict=True):
            if view is not None and victim.id not in view[0]:
                offline[node.name] = now
        if None not in offline.values():
            break
        await ticks(started)
    return Detection(how, offline, meter.others_cores(since))


async def measure_idle(session: aiohttp.ClientSession, nodes: list[Node], meter: QuietMeter) -> Idle:
    """CPU over IDLE_WINDOW_S (nothing polls the nodes meanwhile) and RSS at its end."""
    await asyncio.to_thread(meter.wait_quiet)
    since = meter.mark()
    before = {n.name: process_ticks(n.pid) or 0 for n in nodes}
    started = time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_S)
    wall = time.monotonic() - started
    after = {n.name: process_ticks(n.pid) or 0 for n in nodes}
    others = meter.others_cores(since)
    rss = {n.name: (rss_bytes(n.pid) or 0) / 1e6 for n in nodes}
    loaded = {}
    for node in nodes:
        view = await get_json(session, node.url + "/api/p2p")
        loaded[node.name] = view["self"].get("loaded", []) if view else ["?"]
    cores = {name: (after[name] - before[name]) / CLOCK_TICKS / wall for name in before}
    return Idle(cores, rss, loaded, others, wall)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from p2pai.token import new_token

    token = new_token()
    models_dir = workdir / "no-models"
    models_dir.mkdir()
    started_nodes: list[Node] = []
    joins: list[Join] = []
    detections: list[Detection] = []
    idles: list[Idle] = []
    meter = QuietMeter([os.getpid()])
    async with aiohttp.ClientSession() as session:
        try:
            print("starting a swarm of 3 ...", flush=True)
            swarm = await start_swarm(session, workdir, token, models_dir)
            started_nodes += swarm
            meter.pids += [n.pid for n in swarm]
            await asyncio.sleep(SETTLE_S)
            for i in range(args.repeat):
                idle = await measure_idle(session, swarm, meter)
                idles.append(idle)
                print(f"  idle {i + 1}: cores {fmt_map(idle.cores, 3)}, RSS MB {fmt_map(idle.rss_mb, 0)}, "
                      f"others {idle.others_cores:.2f}", flush=True)
            seed = swarm[0]
            for i in range(args.repeat):
                plans = [
                    ("bootstrap", {"mdns": False, "bootstrap": seed.bootstrap_addr()}, signal.SIGKILL),
                    ("mdns", {"mdns": True}, signal.SIGSTOP),
                ]
                for how, options, sig in plans:
                    newcomer = Node(f"{how}-{i + 1}", workdir, token, models_dir, **options)  # type: ignore[arg-type]
                    started_nodes.append(newcomer)
                    try:
                        join = await measure_join(session, swarm, newcomer, how, meter)
                        joins.append(join)
                        print(f"  join by {how} {i + 1}: ready {fmt(join.ready_s)} s, online on "
                              f"{fmt_map(join.seen_s)} s, others {join.others_cores:.2f}", flush=True)
                        if join.join_s is None or newcomer.id is None:
                            print(f"  {newcomer.name} did not join; not timing its failure", flush=True)
                            continue
                        detection = await measure_detection(session, swarm, newcomer, sig, meter)
                        detections.append(detection)
                        print(f"  {detection.how} {i + 1}: offline on {fmt_map(detection.offline_s)} s, "
                              f"others {detection.others_cores:.2f}", flush=True)
                    finally:
                        newcomer.stop()
                        if newcomer.proc is not None:
                            meter.retire(newcomer.pid)
        finally:
            for node in reversed(started_nodes):
                node.stop()
    problems = scan_logs(workdir)
    return {"joins": joins, "detections": detections, "idle": idles, "log_problems": problems}


def scan_logs(workdir: Path) -> dict[str, list[str]]:
    """Warnings, errors and tracebacks the nodes logged: printed, for the report."""
    problems = {}
    for log in sorted(workdir.glob("*.log")):
        lines = [line.rstrip() for line in log.read_text(errors="replace").splitlines()
                 if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Error", "CRITICAL"))]
        if lines:
            problems[log.stem] = lines[:20]
    return problems


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_map(values: dict[str, float | None], digits: int = 2) -> str:
    return " ".join(f"{k}={fmt(v, digits)}" for k, v in values.items())


def row(values: list[float | None], digits: int, total: int) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {
        "median": statistics.median(got) if got else None,
        "min": min(got) if got else None,
        "max": max(got) if got else None,
        "n": f"{len(got)}/{total}",
        "digits": digits,
    }


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    joins: list[Join] = results["joins"]
    detections: list[Detection] = results["detections"]
    idles: list[Idle] = results["idle"]
    rows: dict[str, dict[str, Any]] = {}
    for how, label in (("bootstrap", "bootstrap"), ("mdns", "mDNS")):
        mine = [j for j in joins if j.how == how]
        rows[f"{how}_ready_s"] = {"label": f"join by {label}: spawn -> own /readyz (s)",
                                  **row([j.ready_s for j in mine], 2, len(mine))}
        rows[f"{how}_join_s"] = {"label": f"join by {label}: spawn -> online on all 3 others (s)",
                                 **row([j.join_s for j in mine], 2, len(mine)), "target": ("<=", TARGETS["join_s"])}
        rows[f"{how}_after_ready_s"] = {"label": f"join by {label}: /readyz -> online on all 3 others (s)",
                                        **row([j.after_ready_s for j in mine], 2, len(mine))}
    for how, label in (("kill", "SIGKILL"), ("freeze", "SIGSTOP")):
        mine = [d for d in detections if d.how == how]
        rows[f"{how}_detect_s"] = {"label": f"failure detection: {label} -> offline on all 3 others (s)",
                                   **row([d.detect_s for d in mine], 2, len(mine)),
                                   "target": ("<=", TARGETS["detect_s"])}
    cores = [c for idle in idles for c in idle.cores.values()]
    rss = [r for idle in idles for r in idle.rss_mb.values()]
    rows["idle_cores"] = {"label": "idle CPU per node, swarm of 3 (cores)", **row(cores, 3, len(cores))}
    rows["idle_rss_mb"] = {"label": "idle RSS per node, swarm of 3 (MB)", **row(rss, 0, len(rss)),
                           "target": ("<=", TARGETS["idle_rss_mb"])}
    others = [j.others_cores for j in joins] + [d.others_cores for d in detections] + [i.others_cores for i in idles]
    rows["_others_cores_max"] = {"value": max(others) if others else None}
    return rows


def render_table(rows: dict[str, dict[str, Any]]) -> str:
    header = ["metric", "median", "min", "max", "n", "target"]
    lines = [header]
    for key, r in rows.items():
        if key.startswith("_"):
            continue
        digits = r["digits"]
        target = ""
        if "target" in r:
            op, limit = r["target"]
            verdict = "n/a" if r["median"] is None else ("met" if r["median"] <= limit else "MISSED")
            target = f"{op} {limit:g}: {verdict}"
        lines.append([r["label"], fmt(r["median"], digits), fmt(r["min"], digits), fmt(r["max"], digits),
                      r["n"], target])
    return markdown_table(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, Join):
        return {**asdict(value), "join_s": value.join_s, "after_ready_s": value.after_ready_s}
    if isinstance(value, Detection):
        return {**asdict(value), "detect_s": value.detect_s}
    if isinstance(value, Idle):
        return asdict(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5,
                        help="idle windows and join/failure rounds; medians are reported (default 5)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--keep-logs", type=Path, help="copy the nodes' logs into this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-swarm-") as tmp:
        workdir = Path(tmp)
        results = asyncio.run(run(args, workdir))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
    rows = summarise(results)
    table = render_table(rows)
    others_max = rows["_others_cores_max"]["value"]
    print()
    print(table)
    print(f"\nmost cores used by other processes during a measurement: {fmt(others_max)}")
    if results["log_problems"]:
        print("the nodes logged problems:")
        for name, lines in results["log_problems"].items():
            for line in lines:
                print(f"  {name}: {line}")
    report = {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": machine(),
        "repeat": args.repeat,
        "poll_s": POLL_S,
        "idle_window_s": IDLE_WINDOW_S,
        "targets": TARGETS,
        "summary": rows,
        "others_cores_max": others_max,
        "table": table,
        "runs": jsonable({k: v for k, v in results.items()}),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
