"""Schemathesis against the real control plane, inside namespaces where no engine can be reached.

`run(workdir, ...)` starts `unshare --net --mount --pid` running this module's `main` inside, which:
1. isolates itself: only `lo` is up (no route anywhere), a fresh tmpfs hides `/run` (so `/var/run/docker.sock`
   and every test-bed engine's `/run/NAME.sock` are gone), and it proves both before going on;
2. starts the embedded SeaweedFS and `litefleet serve` (the real app: DockerDriver, reconciler, health monitor,
   observer) on loopback, adds two nodes whose engines cannot answer (a missing unix socket, a closed loopback
   port) and two tenants, so fuzzed calls reach the scale / evacuate / delete paths and the reconciler works on
   what they queue;
3. runs `schemathesis run` over `/openapi.json` with the admin token for `seconds` (checks: `no_server_error`
   from tests/fuzz/hooks.py and schemathesis's `ignored_auth`);
4. stops the control plane, checks its log for tracebacks and the fleet DB with tests/fuzz/consistency.py, and
   writes `result.json` in `workdir`.

Being PID 1 of its own PID namespace, it takes every process it started with it when it ends, however it ends."""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from control_plane.cli.local import ControlPlaneProcess
from control_plane.db.engine import make_engine
from control_plane.db.models import Node, Tenant
from control_plane.storage.seaweed import EmbeddedStore, free_address
from control_plane.timing import poll
from tests.fuzz.consistency import problems

REPO = Path(__file__).resolve().parents[2]
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock")
# Nodes whose engines cannot answer in here: a unix socket that does not exist, a closed port on loopback.
NODES = {"gone-a": "unix:///run/litefleet-fuzz/no-engine.sock", "gone-b": "tcp://127.0.0.1:9"}
TENANTS = [{"name": "acme", "agents": 2}, {"name": "globex", "agents": 1}]


def run(workdir: Path, seconds: int, seed: int, timeout: float) -> dict[str, Any]:
    """Run the harness in fresh namespaces (as root) and return its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
        sys.executable, "-m", "tests.fuzz.harness", str(workdir), "--seconds", str(seconds), "--seed", str(seed),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO)}
    with open(workdir / "harness.log", "wb") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    result_file = workdir / "result.json"
    if not result_file.exists():
        tail = (workdir / "harness.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"the fuzz harness exited {done.returncode} without a result:\n{tail}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def isolate() -> list[str]:
    """Bring up `lo` only and hide `/run`; then prove no engine is reachable. Returns what was proven."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=16m", "litefleet-fuzz", "/run"], check=True)
    proofs = []
    interfaces = [name for _, name in socket.if_nameindex()]
    assert interfaces == ["lo"], f"network namespace has {interfaces}"
    proofs.append("interfaces: lo only")
    for path in ENGINE_SOCKETS:
        assert not os.path.exists(path), f"{path} is visible"
    assert not os.listdir("/run"), "/run is not empty"
    proofs.append(f"hidden: {', '.join(ENGINE_SOCKETS)} and every /run/*.sock")
    for address in (("10.99.0.1", 2376), ("172.17.0.1", 2375), ("8.8.8.8", 53)):
        with socket.socket() as sock:
            sock.settimeout(2)
            code = sock.connect_ex(address)
        assert code == errno.ENETUNREACH, f"{address} answered connect with {errno.errorcode.get(code, code)}"
    proofs.append("no route: 10.99.0.1:2376, 172.17.0.1:2375, 8.8.8.8:53 -> ENETUNREACH")
    return proofs


def seed_fleet(control_plane: ControlPlaneProcess, database_url: str) -> None:
    """Nodes straight into the fleet DB (registration would refuse them: their engines do not answer), tenants
    through the API (each queues a provision the reconciler then fails on the absent engines)."""
    engine = make_engine(database_url)
    with Session(engine) as session:
        session.add_all([Node(name=name, engine_url=url, capacity_agents=4) for name, url in NODES.items()])
        session.commit()
    engine.dispose()
    for tenant in TENANTS:
        answer = control_plane.client.send("POST", "/v1/tenants", json=tenant, timeout=30)
        assert answer.status_code == 202, answer.text


def settle(control_plane: ControlPlaneProcess, timeout: float = 60) -> bool:
    """Wait until no operation is pending or running (what the fuzzer queued has been worked off)."""
    for _ in poll(timeout, 0.5):
        busy = [
            op for state in ("pending", "running") for op in control_plane.client.all("/v1/operations", state=state)
        ]
        if not busy:
            return True
    return False


def schemathesis(url: str, token: str, seconds: int, seed: int, tally: Path, report: Path) -> int:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", "no_server_error,ignored_auth",
        "--max-time", str(seconds), "--seed", str(seed), "--workers", "1",
        "--request-timeout", "20", "--suppress-health-check", "all", "--no-color",
        "--report", "junit", "--report-junit-path", str(report),
    ]  # fmt: skip
    env = os.environ | {
        "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
        "LITEFLEET_FUZZ_TALLY": str(tally),
        "PYTHONPATH": str(REPO),  # the hooks module; the run's cwd is the work dir, where schemathesis keeps a cache
    }
    return subprocess.run(command, cwd=tally.parent, env=env, check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seconds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir: Path = args.workdir
    result: dict[str, Any] = {"seconds": args.seconds, "seed": args.seed}
    started = time.monotonic()
    result["isolation"] = isolate()
    store = EmbeddedStore(workdir / "store", free_address("127.0.0.1"), "litefleet", "FUZZADMIN", secrets.token_hex(16))
    store.up()
    state = workdir / "state"
    state.mkdir(exist_ok=True)
    database_url = f"sqlite:///{state / 'fleet.db'}"
    control_plane = ControlPlaneProcess.beside(
        store,
        "litefleet/agent:fuzz-absent",
        state,
        database_url=database_url,
        heartbeat_interval="1",
        hold_timeout="1",  # a request held while a fuzzed evacuation "moves" its agent: bounded, as waits are
    )
    try:
        control_plane.start(timeout=180)  # a loaded 2-vCPU machine imports slowly
        seed_fleet(control_plane, database_url)
        result["startup_s"] = round(time.monotonic() - started, 1)
        tally = workdir / "tally.jsonl"
        tally.unlink(missing_ok=True)
        fuzz_started = time.monotonic()
        token = control_plane.env["LITEFLEET_API_TOKEN"]
        result["schemathesis_rc"] = schemathesis(
            control_plane.url, token, args.seconds, args.seed, tally, workdir / "junit.xml"
        )
        result["fuzz_s"] = round(time.monotonic() - fuzz_started, 1)
        lines = [json.loads(line) for line in tally.read_text().splitlines()] if tally.exists() else []
        result["requests"] = len(lines)
        result["statuses"] = dict(sorted(Counter(str(line["status"]) for line in lines).items()))
        result["server_errors"] = Counter(f"{line['status']} {line['code']}" for line in lines if line["status"] >= 500)
        result["settled"] = settle(control_plane)
        result["api_counts"] = {path: len(control_plane.client.all(path)) for path in ("/v1/nodes", "/v1/tenants")}
    finally:
        control_plane.stop()
        store.down()
    log = control_plane.log.read_text(errors="replace")
    result["api_exceptions"] = log.count("Exception in ASGI application")  # uvicorn's word for an unhandled error
    result["operations_crashed"] = log.count('"event": "operation.crashed"')  # a runner raised: reported, not fuzzed
    engine = make_engine(database_url)
    result["problems"] = problems(engine)
    with Session(engine) as session:
        result["db_counts"] = {
            "/v1/nodes": len(session.exec(select(Node)).all()),
            "/v1/tenants": len(session.exec(select(Tenant)).all()),
        }
    result["total_s"] = round(time.monotonic() - started, 1)
    (workdir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
