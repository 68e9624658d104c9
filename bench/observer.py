"""The observer following N agents: CPU, memory and staleness, live followers against periodic restores.

    .venv/bin/python bench/observer.py [--agents 100] [--duration 30] [--periodic-interval 10]
                                       [--modes follow,periodic,mixed]

No Docker: an embedded SeaweedFS on 127.0.0.1, N agent databases (the runtime's schema) replicated by one host
`litestream replicate` (sync 1 s, as agents default), and a writer process that bumps a counter in a random agent
every --write-every seconds and reports when each commit returned. For each mode the observer follows all N:

  follow    max_followers=N: one `litestream restore -f` per agent
  periodic  max_followers=0: every agent restored in full each --periodic-interval (2 restores at a time)
  mixed     max_followers=N/5: the busiest fifth live, the rest periodic

Figures (one JSON line per mode, then a table):
  cpu_pct        observer CPU over the measuring window, % of one core: this process (the observer's threads and
                 the checker's reads) + its litestream children (live followers, and periodic restores that ran)
  store_cpu_pct  the embedded SeaweedFS over the same window (followers poll it: LIST requests cost CPU there)
  rss_mib        this process + its litestream children, sampled every 0.5 s: mean and max
  stale_s        per write: commit -> the observer's copy shows it (p50, p90, max); `unseen` = not seen by the end
  ready_s        follow() of all N -> every copy readable
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import apsw  # noqa: E402

from agent_image import Store  # noqa: E402
from agent_image.container import litestream  # noqa: E402
from control_plane.observer import Observer, ObserverSettings  # noqa: E402
from control_plane.storage import ObjectStorage  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402

BUCKET = "litefleet-bench-observer"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tenant_name(i: int) -> str:
    return f"obs{i:04d}"


# -- the writer (a separate process, so its CPU is not the observer's) ---------------------------------------------


def writer(dbs: list[str], every: float, duration: float) -> None:
    connections = []
    for db in dbs:
        conn = apsw.Connection(db)
        conn.set_busy_timeout(10_000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        connections.append(conn)
    rng = random.Random(7)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        index = rng.randrange(len(connections))
        value = (
            connections[index]
            .execute(
                "INSERT INTO counters (name, value) VALUES ('bench', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
            )
            .fetchall()[0][0]
        )
        print(f"{index} {value} {time.time():.6f}", flush=True)
        time.sleep(every)


# -- measuring --------------------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE


def _cpu(pid: int | None) -> float:
    stat = proc_stat(pid) if pid else None
    return stat[1] if stat else 0.0


def children(parent: int, exclude: set[int]) -> dict[int, tuple[float, int]]:
    found: dict[int, tuple[float, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        stat = proc_stat(int(entry))
        if stat is not None and stat[0] == parent:
            found[int(entry)] = (stat[1], stat[2])
    return found


@dataclass
class Sampler:
    exclude: set[int]
    rss: list[float] = field(default_factory=list)
    child_cpu: dict[int, float] = field(default_factory=dict)  # last seen cpu of live children
    child_cpu_start: dict[int, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        me = os.getpid()
        kids = children(me, self.exclude)
        own = proc_stat(me)
        total = (own[2] if own else 0) + sum(rss for _, rss in kids.values())
        self.rss.append(total / 2**20)
        for pid, (cpu, _) in kids.items():
            self.child_cpu.setdefault(pid, cpu)
            self.child_cpu_start.setdefault(pid, cpu)
            self.child_cpu[pid] = cpu

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


# -- one mode ----------------------------------------------------------------------------------------------------------


def measure(
    mode: str, cap: int, args: argparse.Namespace, storage: ObjectStorage, dbs: list[str], exclude: set[int]
) -> dict[str, Any]:
    n = len(dbs)
    with tempfile.TemporaryDirectory(dir=args.scratch) as cache:
        settings = ObserverSettings(
            cache_dir=Path(cache),
            max_followers=cap,
            periodic_interval=args.periodic_interval,
            follow_interval=args.follow_interval,
            integrity_check="none",
        )
        observer = Observer(storage, settings)
        try:
            started = time.monotonic()
            for i in range(n):
                observer.follow(tenant_name(i), 0, 1)
            observer.start()
            for i in range(n):
                observer.wait_ready(tenant_name(i), 0, 1, timeout=600)
            ready_s = time.monotonic() - started
            return run_window(mode, cap, args, observer, dbs, exclude, ready_s)
        finally:
            observer.close()


def run_window(
    mode: str,
    cap: int,
    args: argparse.Namespace,
    observer: Observer,
    dbs: list[str],
    exclude: set[int],
    ready_s: float,
) -> dict[str, Any]:
    counter = lambda c: int((c.execute("SELECT value FROM counters WHERE name='bench'").fetchall() or [(0,)])[0][0])  # noqa: E731
    sampler = Sampler(set(exclude))
    sampler.sample()
    store_cpu_start = _cpu(args.store_pid)
    times_start = os.times()
    wall_start = time.monotonic()
    sampling = threading.Thread(target=sampler.run, daemon=True)
    sampling.start()
    command = [sys.executable, __file__, "--writer", "--every", str(args.write_every), "--duration", str(args.duration)]
    proc = subprocess.Popen(command + dbs, stdout=subprocess.PIPE, text=True)
    sampler.exclude.add(proc.pid)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    pending: list[tuple[int, int, float]] = []
    stale: list[float] = []
    writes = 0
    writer_done = False
    grace_end: float | None = None
    while True:
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                writer_done = True
                grace_end = time.monotonic() + args.periodic_interval + 5
                break
            fields = line.split()
            pending.append((int(fields[0]), int(fields[1]), float(fields[2])))
            writes += 1
        still: list[tuple[int, int, float]] = []
        seen_values: dict[int, int] = {}
        for index, value, at in pending:
            if index not in seen_values:
                _, seen_values[index] = observer.read(tenant_name(index), 0, counter, 1)
            if seen_values[index] >= value:
                stale.append(time.time() - at)
            else:
                still.append((index, value, at))
        pending = still
        if writer_done and (not pending or (grace_end is not None and time.monotonic() > grace_end)):
            break
        time.sleep(0.05)
    # Reap the writer ourselves to learn its CPU: it lands in children_* below and is not the observer's.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    writer_cpu = usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - wall_start
    sampler.stop.set()
    sampling.join()
    sampler.sample()
    times_end = os.times()
    own_cpu = (times_end.user - times_start.user) + (times_end.system - times_start.system)
    reaped_cpu = (times_end.children_user - times_start.children_user) + (
        times_end.children_system - times_start.children_system
    )
    store_cpu = _cpu(args.store_pid) - store_cpu_start
    live_cpu = sum(sampler.child_cpu[pid] - sampler.child_cpu_start[pid] for pid in sampler.child_cpu)
    cpu = own_cpu + max(0.0, reaped_cpu - writer_cpu) + live_cpu
    result = {
        "mode": mode,
        "agents": len(dbs),
        "max_followers": cap,
        "live_followers": len(observer.pids()),
        "ready_s": round(ready_s, 1),
        "window_s": round(wall, 1),
        "cpu_pct": round(100 * cpu / wall, 1),
        "cpu_observer_process_pct": round(100 * own_cpu / wall, 1),
        "store_cpu_pct": round(100 * store_cpu / wall, 1),
        "rss_mib_mean": round(statistics.mean(sampler.rss), 1),
        "rss_mib_max": round(max(sampler.rss), 1),
        "writes": writes,
        "seen": len(stale),
        "unseen": len(pending),
        "stale_s_p50": pct(stale, 0.5) if stale else None,
        "stale_s_p90": pct(stale, 0.9) if stale else None,
        "stale_s_max": round(max(stale), 3) if stale else None,
    }
    print(json.dumps(result), flush=True)
    return result


# -- setup -------------------------------------------------------------------------------------------------------------


def make_agents(storage: ObjectStorage, store: EmbeddedStore, n: int, scratch: Path) -> tuple[list[str], Any]:
    """N runtime databases replicated by one `litestream replicate` (sync 1 s), each with a first counter value."""
    dbs: list[str] = []
    documents: list[dict[str, Any]] = []
    for i in range(n):
        db = scratch / f"{tenant_name(i)}.db"
        Store(str(db)).close()
        conn = apsw.Connection(str(db))
        conn.execute("INSERT INTO counters (name, value) VALUES ('bench', 0)")
        conn.close()
        storage.advance_current(tenant_name(i), 0, 1, storage.read_current(tenant_name(i), 0))
        url = storage.replica_url(tenant_name(i), 0, 1)
        documents.append(litestream.config(db, url, storage.endpoint))
        dbs.append(str(db))
    document = {"dbs": [doc["dbs"][0] for doc in documents]}
    config = litestream.write_config(document, scratch / "replicate.json")
    replicator = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(config)],
        env=litestream.environment(store.admin),
        stdout=(scratch / "replicate.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    for i in range(n):
        while storage.replica_txid(tenant_name(i), 0, 1) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica of {tenant_name(i)} not written in time; see {scratch}/replicate.log")
            time.sleep(0.2)
    return dbs, replicator


def table(results: list[dict[str, Any]]) -> None:
    columns = [
        ("mode", "mode"),
        ("agents", "N"),
        ("live_followers", "live"),
        ("ready_s", "ready s"),
        ("cpu_pct", "CPU %"),
        ("store_cpu_pct", "store CPU %"),
        ("rss_mib_mean", "RSS MiB"),
        ("rss_mib_max", "RSS max"),
        ("stale_s_p50", "stale p50"),
        ("stale_s_p90", "stale p90"),
        ("stale_s_max", "stale max"),
        ("seen", "seen"),
        ("unseen", "unseen"),
    ]
    widths = [max(len(title), *(len(str(r[key])) for r in results)) for key, title in columns]
    print("  ".join(title.rjust(w) for (_, title), w in zip(columns, widths, strict=True)))
    for row in results:
        print("  ".join(str(row[key]).rjust(w) for (key, _), w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writes per mode")
    parser.add_argument("--write-every", type=float, default=0.25)
    parser.add_argument("--periodic-interval", type=float, default=10.0)
    parser.add_argument("--follow-interval", type=float, default=0.5)
    parser.add_argument("--modes", default="follow,periodic,mixed")
    parser.add_argument("--scratch", default=os.environ.get("LITEFLEET_BENCH_DIR"))
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--every", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("dbs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(args.dbs, args.every, args.duration)
        return
    caps = {"follow": args.agents, "periodic": 0, "mixed": max(1, args.agents // 5)}
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch_dir:
        scratch = Path(scratch_dir)
        store = EmbeddedStore(scratch / "store", free_address("127.0.0.1"), BUCKET, "BENCH", secrets.token_hex(16))
        store.up()
        replicator = None
        try:
            storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
            dbs, replicator = make_agents(storage, store, args.agents, scratch)
            store_pid = store.running_pid()
            exclude = {replicator.pid, *([store_pid] if store_pid else [])}
            args.store_pid = store_pid
            results = [measure(mode, caps[mode], args, storage, dbs, exclude) for mode in args.modes.split(",")]
        finally:
            if replicator is not None:
                replicator.terminate()
                replicator.wait(60)
            store.down()
    print()
    table(results)


if __name__ == "__main__":
    main()
