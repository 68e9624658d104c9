"""Throughput of the durable runtime against its baselines, measured in one run on one disk.

    make bench            (or: .venv/bin/python bench/runtime.py [--repeat 3] [--seconds 3])

Figures (one JSON line each, median of --repeat runs, every run in a fresh process and a fresh file):
  sqlite_commits_per_s      raw apsw: one-row INSERT + COMMIT per transaction (the disk's commit ceiling)
  litefleet_wf_per_s        a 3-step workflow, sequential (1 in flight) and 64 in flight
  litefleet_wf_per_commit   workflows per committed transaction (Store.commits; each one an fsync under FULL):
                            group commit's efficiency; 0.25 when nothing is shared (4 commits a workflow: start,
                            two steps, the last step with the finish)
  dbos_wf_per_s             the same workflow on DBOS 3.4 with its SQLite system database (its defaults)
  agent_idle_rss_mib        a `litefleet-agent serve` process, ready and idle
and the ratios the targets are stated in (litefleet / DBOS, litefleet / SQLite ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IN_FLIGHT = 64


# -- children: each measurement runs in its own process ---------------------------------------------------------


def _drive(run_one: Callable[[int], Any], seconds: float, in_flight: int) -> tuple[float, int]:
    """(workflows per second, workflows run) with `in_flight` clients each running workflows back to back for
    `seconds`."""
    done = [0] * in_flight
    stop = time.monotonic() + seconds

    def client(slot: int) -> None:
        i = 0
        while time.monotonic() < stop:
            run_one(slot * 1_000_000 + i)
            i += 1
        done[slot] = i

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started), sum(done)


def child_sqlite(path: str, synchronous: str, seconds: float) -> float:
    import apsw

    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    count, stop = 0, time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < stop:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 64,))
        conn.execute("COMMIT")
        count += 1
    return count / (time.monotonic() - started)


def child_litefleet(path: str, synchronous: str, seconds: float, in_flight: int) -> tuple[float, float]:
    """(workflows/s, workflows per commit)."""
    from agent_image import Runtime, step, workflow

    @step
    def bump(x: int) -> int:
        return x + 1

    @workflow
    def three_steps(x: int) -> int:
        return bump(bump(bump(x)))

    module = type(sys)("bench_bundle")
    module.three_steps = three_steps  # type: ignore[attr-defined]
    runtime = Runtime(path, module, synchronous=synchronous)
    runtime.recover()
    try:
        before = runtime.store.commits
        rate, workflows = _drive(lambda i: runtime.start(three_steps, (i,)).result(), seconds, in_flight)
        return rate, workflows / (runtime.store.commits - before)
    finally:
        runtime.close()


def child_dbos(path: str, seconds: float, in_flight: int) -> float:
    import logging

    from dbos import DBOS

    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}"})

    @DBOS.step()
    def bump(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    def three_steps(x: int) -> int:
        return bump(bump(bump(x)))

    DBOS.launch()
    try:
        return _drive(lambda i: DBOS.start_workflow(three_steps, i).get_result(), seconds, in_flight)[0]
    finally:
        DBOS.destroy()


def child_agent_rss(path: str) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent_image", "serve", "--bundle", "tenants.hello", "--db", path, "--port", str(port)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), "LITEFLEET_LOG_LEVEL": "WARNING"},
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1.0)  # idle
        status = Path(f"/proc/{agent.pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        return rss_kib / 1024
    finally:
        agent.terminate()
        agent.wait(30)


# -- parent: run children, take medians, print JSON lines -------------------------------------------------------


def _run_child(*args: str) -> float:
    return _run_child_values(*args)[0]


def _run_child_values(*args: str) -> list[float]:
    """The numbers a child prints on its last line."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("LITEFLEET_BENCH_DIR")) as tmp:
        db = os.path.join(tmp, "bench.db")
        out = subprocess.run(
            [sys.executable, __file__, "--child", args[0], db, *args[1:]],
            capture_output=True,
            text=True,
            env=os.environ | {"PYTHONPATH": str(REPO)},
            timeout=600,
        )
    if out.returncode != 0:
        raise SystemExit(f"bench child {args} failed:\n{out.stderr[-3000:]}")
    return [float(value) for value in out.stdout.strip().splitlines()[-1].split()]


def _figure(name: str, runs: list[float], unit: str, digits: int = 1, **labels: Any) -> dict[str, Any]:
    line = {"figure": name, **labels, "median": round(statistics.median(runs), digits), "unit": unit}
    line["runs"] = [round(r, digits) for r in runs]
    print(json.dumps(line), flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-dbos", action="store_true")
    options = parser.parse_args()
    n, secs = options.repeat, str(options.seconds)
    median: dict[str, float] = {}

    # Round-robin: every round runs each child once, so each figure's runs sample the same minutes of a shared
    # disk (its commit rate can swing several-fold within minutes) and the ratios compare like with like.
    # Each DBOS child runs right after the litefleet child it is compared with.
    plan: list[tuple[str, ...]] = [("sqlite", "FULL", secs)]
    for flight in (1, IN_FLIGHT):
        plan.append(("litefleet", "FULL", secs, str(flight)))
        if not options.skip_dbos:
            plan.append(("dbos", secs, str(flight)))
    plan += [("sqlite", "NORMAL", secs)] + [("litefleet", "NORMAL", secs, str(flight)) for flight in (1, IN_FLIGHT)]
    results: dict[tuple[str, ...], list[list[float]]] = {child: [] for child in plan}
    for _ in range(n):
        for child in plan:
            results[child].append(_run_child_values(*child))

    for sync in ("FULL", "NORMAL"):
        runs = [values[0] for values in results[("sqlite", sync, secs)]]
        median[f"sqlite_{sync}"] = _figure("sqlite_commits_per_s", runs, "commits/s", mode=f"WAL/{sync}")["median"]
        for flight in (1, IN_FLIGHT):
            pairs = results[("litefleet", sync, secs, str(flight))]
            runs = [pair[0] for pair in pairs]
            line = _figure("litefleet_wf_per_s", runs, "workflows/s", mode=f"WAL/{sync}", in_flight=flight)
            median[f"litefleet_{sync}_{flight}"] = line["median"]
            per_commit = [pair[1] for pair in pairs]
            label = "workflows/commit" + (" (= per fsync)" if sync == "FULL" else "")
            line = _figure("litefleet_wf_per_commit", per_commit, label, 2, mode=f"WAL/{sync}", in_flight=flight)
            median[f"per_commit_{sync}_{flight}"] = line["median"]
    if not options.skip_dbos:
        for flight in (1, IN_FLIGHT):
            runs = [values[0] for values in results[("dbos", secs, str(flight))]]
            line = _figure("dbos_wf_per_s", runs, "workflows/s", mode="DBOS 3.4 sqlite defaults", in_flight=flight)
            median[f"dbos_{flight}"] = line["median"]
            ratio = median[f"litefleet_FULL_{flight}"] / line["median"]
            # and round by round: each pair ran back to back, seconds apart
            ours = [pair[0] for pair in results[("litefleet", "FULL", secs, str(flight))]]
            per_round = [round(a / b, 1) for a, b in zip(ours, runs, strict=True)]
            print(
                json.dumps(
                    {
                        "figure": "litefleet_over_dbos",
                        "in_flight": flight,
                        "ratio": round(ratio, 1),
                        "per_round": per_round,
                        "per_round_median": statistics.median(per_round),
                    }
                )
            )
    _figure("agent_idle_rss_mib", [_run_child("rss") for _ in range(n)], "MiB")
    # Each workflow is 5 durable records (start, 3 steps, finish; the last step shares the finish's commit):
    # group commit is what lets the runtime write more of them per second than the disk commits one-row
    # transactions.
    ceiling = median["litefleet_FULL_64"] * 5 / median["sqlite_FULL"]
    print(
        json.dumps({"figure": "litefleet_commits_over_sqlite_ceiling", "mode": "WAL/FULL", "ratio": round(ceiling, 2)})
    )
    # The fsyncs/s the runtime spends (workflows/s over workflows per fsync) against the disk's one-row commit
    # ceiling: sequentially, the share of the time the disk is committing; the rest is the runtime's own CPU.
    for flight in (1, IN_FLIGHT):
        fsyncs = median[f"litefleet_FULL_{flight}"] / median[f"per_commit_FULL_{flight}"]
        ratio = round(fsyncs / median["sqlite_FULL"], 2)
        print(json.dumps({"figure": "litefleet_fsyncs_over_sqlite_ceiling", "in_flight": flight, "ratio": ratio}))


def child_main(argv: list[str]) -> None:
    from agent_image.logs import configure_logging

    configure_logging("WARNING")
    kind, db, *rest = argv
    if kind == "sqlite":
        value = child_sqlite(db, rest[0], float(rest[1]))
    elif kind == "litefleet":
        rate, per_commit = child_litefleet(db, rest[0], float(rest[1]), int(rest[2]))
        print(rate, per_commit)
        return
    elif kind == "dbos":
        value = child_dbos(db, float(rest[0]), int(rest[1]))
    else:
        value = child_agent_rss(db)
    print(value)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
