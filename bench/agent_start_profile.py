"""Where an agent container's start goes, phase by phase, next to a plain `http.server` container (issue 14).

    make bench   (or: .venv/bin/python bench/agent_start_profile.py [--starts 7] [--restore-mb 1] [--before TAG])

Each start is a real `run_agent` (create, start, secrets by `docker exec`) of a new tenant, on one engine with one
SeaweedFS, then `/readyz` polled from the host. The phases come from the container's own log: the entrypoint's
events and the `agent.start_phase` marks (`agent_image/_phases.py`), whose wall clock the host shares:

  docker_start        `docker run` issued -> the container's process started (engine: create, start)
  entry_python        -> the entrypoint waits for its secrets (interpreter start, imports, identity)
  secrets             -> secrets file read (the control plane's `docker exec` of the secrets writer)
  fence               -> CURRENT read and checked (one S3 GET)
  restore_and_config  -> database ready (replica probes/restore, schema, Litestream configs read back)
  litestream_start    -> the agent server's process started by `litestream replicate -exec`
  serve_imports       -> interpreter start, imports, bundle loaded
  runtime_open        -> the runtime's database opened
  recover             -> recovery done (`agent.ready`)
  listen              -> uvicorn listening
  readyz_seen         -> the host's first 200 on /readyz (lease confirmed, polling at 20 ms)
  (also, for comparing with an image without the marks: secrets_fence_restore_config, litestream_serve_recover,
  ready_seen; and lease_after_listening: when the first CURRENT read confirmed the lease, relative to listening)
  first_sync_probe    (offset from `docker run`) the first `litestream sync -wait` probe that answered
  host_run_agent      (beside the phases) `run_agent` itself: create, start and the secrets' `docker exec`

`--before TAG` measures an older agent image in the same run, start for start interleaved (an image without the
marks shows only the phases its log has). `--restore-mb N` adds restore + start of an N MB replica next to a bare
`litestream restore` on the host. `--importtime` prints `python -X importtime` of the container's Python processes
(entrypoint, secrets writer, agent server) in the image: the slowest modules, cumulative.
One JSON line per figure; medians (and p90) over the starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import docker  # noqa: E402
from agent_container import BUCKET, Bench, emit, measure_baseline, replicated_database, summary  # noqa: E402

from control_plane.drivers.agent_spec import run_agent, wait_ready  # noqa: E402
from control_plane.drivers.host_address import local_host_address  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402

PHASES = (
    "docker_start",
    "entry_python",
    "secrets",
    "fence",
    "restore_and_config",
    "litestream_start",
    "serve_imports",
    "runtime_open",
    "recover",
    "listen",
    "readyz_seen",
)
IMPORTS = {
    "entrypoint": "import agent_image.container.entrypoint",
    "secrets_in": "import agent_image.container.secrets_in",
    "serve": "import agent_image.__main__, agent_image.server, agent_image.container.fence, "
    "agent_image.container.replication, tenants.hello",
}


def _wall(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def events(container: Any) -> dict[str, dict[str, Any]]:
    """The first log event of each kind (`agent.start_phase` by phase), with `at` as wall-clock seconds."""
    found: dict[str, dict[str, Any]] = {}
    for line in container.logs().decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or "event" not in event:
            continue
        key = event.get("phase") if event["event"] == "agent.start_phase" else event["event"]
        if key in found:
            continue
        if "at" not in event and "timestamp" in event:
            event["at"] = _wall(event["timestamp"])
        found[str(key)] = event
    return found


def phases(issued: float, ready: float, container: Any) -> tuple[dict[str, float], float | None]:
    """Seconds per phase (only those whose both ends the log shows) and the first sync probe's offset."""
    container.reload()
    seen = events(container)
    bounds: dict[str, float] = {"issued": issued, "ready": ready}
    bounds["process"] = _wall(container.attrs["State"]["StartedAt"])
    for name, key in (
        ("waiting", "agent.waiting_for_secrets"),
        ("secrets", "secrets_read"),
        ("fence", "fence_checked"),
        ("database", "agent.database_ready"),
        ("imported", "serve_imported"),
        ("opened", "runtime_opened"),
        ("recovered", "agent.ready"),
        ("listening", "listening"),
    ):
        if key in seen:
            bounds[name] = float(seen[key]["at"])
    imported = seen.get("serve_imported")
    if imported is not None and imported.get("process_s") is not None:
        bounds["serve_process"] = float(imported["at"]) - float(imported["process_s"])
    order = [
        ("docker_start", "issued", "process"),
        ("entry_python", "process", "waiting"),
        ("secrets", "waiting", "secrets"),
        ("fence", "secrets", "fence"),
        ("restore_and_config", "fence", "database"),
        ("litestream_start", "database", "serve_process"),
        ("serve_imports", "serve_process", "imported"),
        ("runtime_open", "imported", "opened"),
        ("recover", "opened", "recovered"),
        ("listen", "recovered", "listening"),
        ("readyz_seen", "listening", "ready"),
    ]
    result = {name: bounds[end] - bounds[start] for name, start, end in order if start in bounds and end in bounds}
    # coarser spans from the events every image logs, to compare with an image without the marks
    if "waiting" in bounds and "database" in bounds:
        result["secrets_fence_restore_config"] = bounds["database"] - bounds["waiting"]
    if "database" in bounds and "recovered" in bounds:
        result["litestream_serve_recover"] = bounds["recovered"] - bounds["database"]
    if "recovered" in bounds:
        result["ready_seen"] = bounds["ready"] - bounds["recovered"]
    lease = seen.get("lease_confirmed")
    if lease is not None and "listening" in bounds:
        result["lease_after_listening"] = float(lease["at"]) - bounds["listening"]
    probe = seen.get("first_sync_probe")
    return result, None if probe is None else float(probe["at"]) - issued


def start_once(bench: Bench, image: str, tenant: str, generation: int, restore_from: int | None) -> dict[str, Any]:
    spec = bench.spec(tenant, generation, restore_from=restore_from)
    spec = dataclasses.replace(spec, image=image)
    bench.storage.advance_current(tenant, 0, generation, bench.storage.read_current(tenant, 0))
    issued = time.time()
    container = run_agent(bench.client, spec)
    delivered = time.time()
    bench.containers.append(container)
    bench.volumes.append(spec.volume)
    wait_ready(container, spec.agent_token, timeout=600)
    ready = time.time()
    deadline = time.monotonic() + 10
    result: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the first sync probe runs beside the server: give it a moment
        per_phase, probe = phases(issued, ready, container)
        per_phase["host_run_agent"] = delivered - issued
        result = {"total": ready - issued, "phases": per_phase, "first_sync_probe": probe}
        if probe is not None:
            break
        time.sleep(0.1)
    container.remove(force=True)
    return result


def report(label: str, image: str, runs: list[dict[str, Any]], **extra: Any) -> None:
    emit(f"{label}_start_to_readyz_s", image=image, **summary([run["total"] for run in runs]), **extra)
    per_phase: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, seconds in run["phases"].items():
            per_phase[name].append(seconds)
    for name in [*PHASES, *sorted(set(per_phase) - set(PHASES))]:
        if per_phase.get(name):
            emit(f"{label}_phase_s", image=image, phase=name, **summary(per_phase[name]), **extra)
    probes = [run["first_sync_probe"] for run in runs if run["first_sync_probe"] is not None]
    if probes:
        emit(f"{label}_first_sync_probe_s", image=image, **summary(probes), **extra)


def importtime(client: Any, image: str, top: int) -> None:
    for process, code in IMPORTS.items():
        script = (
            "import subprocess, sys, time, statistics\n"
            f"code = {code!r}\n"
            "walls = []\n"
            "for _ in range(5):\n"
            "    began = time.monotonic()\n"
            "    subprocess.run([sys.executable, '-c', code], check=True)\n"
            "    walls.append(time.monotonic() - began)\n"
            "done = subprocess.run([sys.executable, '-X', 'importtime', '-c', code], capture_output=True, text=True)\n"
            "print(statistics.median(walls))\n"
            "print(done.stderr)\n"
        )
        output = client.containers.run(
            image,
            ["-c", script],
            entrypoint="/opt/litefleet/bin/python3",
            remove=True,
            read_only=True,
            tmpfs={"/tmp": "rw"},
        ).decode()
        wall, _, profile = output.partition("\n")
        rows = []
        for line in profile.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), parts[2].strip()))
        slowest = [{"module": name, "cumulative_ms": round(us / 1000, 1)} for us, name in sorted(rows, reverse=True)]
        emit("import_profile", image=image, process=process, wall_s=round(float(wall), 3), slowest=slowest[:top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--restore-mb", type=int, default=1, help="0: no restore figure")
    parser.add_argument("--before", help="an older agent image to measure in the same run, interleaved")
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    built = build_agent_image(client)
    images = {"after": built.tag} if args.before is None else {"before": args.before, "after": built.tag}
    emit("image", tag=built.tag, built=built.built, before=args.before)
    if args.importtime:
        for image in images.values():
            importtime(client, image, args.top)
    address = free_address(local_host_address())
    with tempfile.TemporaryDirectory() as store_dir:
        store = EmbeddedStore(Path(store_dir), address, BUCKET, "BENCHADMIN", secrets.token_hex(16))
        store.up()
        bench = Bench(client, built.tag, store)
        try:
            measure_baseline(client, args.starts)
            runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for _ in range(args.starts):
                for label, image in images.items():
                    runs[label].append(start_once(bench, image, "p" + secrets.token_hex(4), 1, None))
            for label, image in images.items():
                report(label, image, runs[label])
            if args.restore_mb:
                measure_restores(bench, images, args.restore_mb, args.starts)
        finally:
            bench.cleanup()
            store.down()


def measure_restores(bench: Bench, images: dict[str, str], megabytes: int, starts: int) -> None:
    tenant = f"q{megabytes}-" + secrets.token_hex(3)
    bench.storage.advance_current(tenant, 0, 1, None)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        replicated_database(bench.storage, bench.store.admin, tenant, megabytes, scratch)
        bare: list[float] = []
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        generation = 2
        for attempt in range(starts):
            out = scratch / f"bare-{attempt}.db"
            began = time.monotonic()
            bench.storage.restore(bench.storage.replica_url(tenant, 0, 1), out, integrity_check="quick")
            bare.append(time.monotonic() - began)
            for leftover in scratch.glob("bare-*"):
                leftover.unlink()
            for label, image in images.items():
                runs[label].append(start_once(bench, image, tenant, generation, 1))
                generation += 1
    emit("bare_restore_s", size_mb=megabytes, **summary(bare))
    for label, image in images.items():
        report(f"{label}_restore", image, runs[label], size_mb=megabytes)


if __name__ == "__main__":
    main()
