"""The control plane at fleet scale: 1,000 nodes, 10,000 tenants x 4 agents, 20,000 operations, 100,000 events, on
SQLite and PostgreSQL (issue 14). No engine is touched: the fleet DB is filled by the generator below.

    make bench                 (or: .venv/bin/python bench/scale.py [--backends sqlite,postgresql] [--small])
    .venv/bin/python bench/scale.py generate sqlite:///var/scale.db      (just fill a fleet DB)

PostgreSQL: LITEFLEET_BENCH_POSTGRES_URL names a database the bench may wipe (its `public` schema is dropped);
unset, as root, the bench runs infra/setup-postgres.sh and creates (and only ever wipes) `litefleet_bench`.

Figures (one JSON line each, per backend):
  generate_s             the generator: bulk inserts of every row
  healthz_s              `create_app` + uvicorn in a fresh process -> the first 200 from /healthz (p50 of 3)
  <list>_page_ms         p50/p99 of every page of a full walk (limit 100) over HTTP with one keep-alive client
  baseline_get_ms        GET /v1/tenants/{t} and /v1/nodes/{n}, random names: one row, the floor a page is put
                         against (ratio = page p50 / get p50)
  n_plus_one_page_ms     in process: one page of 100 tenants the way the list used to load it (a query per
                         tenant), against the same page now (two queries)
  claim_pass_s           one reconcile pass over a queue of 100 fail-overs of 100 nodes (4,000 agents) and 100
                         tenant scales, on the full fleet DB: what the reconciler does (`claim_batch`: one read
                         of the queue fills every idle worker, 4 tenant + 8 node workers), against the same
                         queue claimed one operation per read (the reconciler before), until none is due
  plan_batch_s           placing a fail-over's 40 agents: node loads once, then choose_node 40 times
  heartbeat_round_s      the health monitor's heartbeat round over 1,000 nodes (real DockerDriver pings) and its
                         probe round over 40,000 running agents (real pooled `/readyz` calls), against
                         bench/fake_fleet_server.py's 1,000 loopback addresses; target: a round within the
                         heartbeat interval; with the server's CPU seconds per round
  rss_mib                the server's RSS after /healthz and after every walk
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
import sqlalchemy  # noqa: E402
from fake_fleet_server import AGENT_PORT, ENGINE_PORT, node_address  # noqa: E402 (a sibling in bench/)
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import Session, SQLModel, col, select  # noqa: E402

from control_plane.db.engine import make_engine, migrate  # noqa: E402
from control_plane.db.models import Agent, Operation, OperationKind, OperationState  # noqa: E402
from control_plane.fleet.incarnations import Fleet  # noqa: E402
from control_plane.fleet.placement import choose_node, node_loads  # noqa: E402
from control_plane.reconciler.claims import claim, claim_batch  # noqa: E402
from control_plane.reconciler.health import HealthMonitor  # noqa: E402
from control_plane.services import paging  # noqa: E402
from control_plane.services import tenants as tenant_service  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

KINDS = ["provision", "scale", "evacuate", "hibernate", "wake"]
EVENT_KINDS = ["agent.started", "agent.stopped", "operation.scale", "node.registered", "agent.ready"]


# -- the generator --------------------------------------------------------------------------------------------------


def generate(
    url: str, nodes: int = 1000, tenants: int = 10_000, agents: int = 4, operations: int = 20_000, events: int = 100_000
) -> float:
    """Fill the (migrated, empty) fleet DB at `url`: `nodes` ready nodes, `tenants` x `agents` running agents spread
    one per node (agent i of tenant t on node (t*agents+i) mod nodes), finished operations with a step log each,
    and events. Bulk inserts (executemany) in chunks; returns the seconds it took."""
    started = time.perf_counter()
    engine = sqlalchemy.create_engine(url)
    now = time.time()
    rng = random.Random(14)
    tables = SQLModel.metadata.tables
    per_node = -(-tenants * agents // nodes)
    with engine.begin() as db:
        _bulk(
            db,
            tables["node"],
            (
                {
                    "name": f"node-{n:04}",
                    "engine_url": f"tcp://10.1.{n // 250}.{n % 250 + 1}:2376",
                    "address": f"10.1.{n // 250}.{n % 250 + 1}",
                    "capacity_agents": per_node + 8,
                    "capacity_memory_mb": 65536,
                    "labels": {},
                    "tls": "fleet",
                    "insecure": False,
                    "state": "ready",
                    "last_seen_at": now,
                    "missed_heartbeats": 0,
                    "created_at": now - 86400 * 30,
                }
                for n in range(nodes)
            ),
        )
        _bulk(
            db,
            tables["tenant"],
            (
                {
                    "name": f"tenant-{t:05}",
                    "bundle": "tenants.hello",
                    "memory_mb": 256,
                    "cpus": 0.5,
                    "sync_interval": 1.0,
                    "agents": agents,
                    "wake_agents": 0,
                    "state": "active",
                    "created_at": now - 86400 * 30 + t,
                    "admin_token": secrets.token_hex(8),
                }
                for t in range(tenants)
            ),
        )
        _bulk(
            db,
            tables["agent"],
            (
                {
                    "id": f"tenant-{t:05}/{i}",
                    "tenant": f"tenant-{t:05}",
                    "ordinal": i,
                    "generation": 1,
                    "node": f"node-{(t * agents + i) % nodes:04}",
                    "state": "running",
                    "url": f"http://10.1.0.1:{20000 + (t * agents + i) % 40000}",
                    "access_key": f"LF{t}{i}",
                    "secret_key": "s",
                    "agent_token": "a",
                    "admin_token": "b",
                    "updated_at": now,
                    "probed_at": now,
                    "ready": True,
                    "local_txid": 1000,
                    "replica_txid": 1000,
                    "lag_txids": 0,
                    "seconds_since_sync": 0.5,
                }
                for t in range(tenants)
                for i in range(agents)
            ),
        )
        _bulk(db, tables["operation"], (_operation(rng, o, tenants, now) for o in range(operations)))
        _bulk(
            db,
            tables["event"],
            (
                {
                    "at": now - 86400 * 30 + e * (86400 * 30 / events),
                    "kind": EVENT_KINDS[e % len(EVENT_KINDS)],
                    "tenant": f"tenant-{e % tenants:05}",
                    "node": f"node-{e % nodes:04}",
                    "agent": e % agents,
                    "operation": None,
                    "message": "generated",
                }
                for e in range(events)
            ),
        )
    with engine.connect() as db:  # a fleet DB that grew by itself has statistics; a bulk-loaded one gets them now
        db.execute(sqlalchemy.text("ANALYZE"))  # (autovacuum came ~2 min later: the first walks ran on seq scans)
        db.commit()
    engine.dispose()
    return time.perf_counter() - started


def _operation(rng: random.Random, o: int, tenants: int, now: float) -> dict[str, Any]:
    created = now - 86400 * 30 + o * (86400 * 30 / 20_000) + rng.random()
    steps = [
        {"at": created + k, "step": step, "message": "generated", "agent": 0}
        for k, step in enumerate(("agent.planned", "agent.started", "operation.succeeded"))
    ]
    return {
        "id": f"{o:016x}",
        "kind": KINDS[o % len(KINDS)],
        "tenant": f"tenant-{rng.randrange(tenants):05}",
        "node": None,
        "state": "succeeded",
        "params": {"agents": 4},
        "steps": steps,
        "result": {"agents": 4},
        "error": None,
        "attempts": 1,
        "lock_token": None,
        "locked_until": None,
        "created_at": created,
        "updated_at": created + 3,
        "finished_at": created + 3,
    }


def _bulk(db: Any, table: sqlalchemy.Table, rows: Iterator[dict[str, Any]], chunk: int = 5000) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == chunk:
            db.execute(table.insert(), batch)
            batch = []
    if batch:
        db.execute(table.insert(), batch)


# -- the databases --------------------------------------------------------------------------------------------------


def fresh_database(backend: str, workdir: Path) -> str:
    """A migrated, empty fleet DB of `backend`: a new SQLite file, or the bench's own PostgreSQL database wiped."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'fleet.db'}"
    else:
        url = os.environ.get("LITEFLEET_BENCH_POSTGRES_URL") or _bench_postgres()
        reset = sqlalchemy.create_engine(url)
        with reset.begin() as connection:
            connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        reset.dispose()
    migrate(url)
    return url


def _bench_postgres() -> str:
    """infra/setup-postgres.sh's server, and a database of the bench's own in it (created once, as root)."""
    shared = subprocess.run(
        [str(REPO / "infra/setup-postgres.sh")], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    exists = subprocess.run(
        ["su", "postgres", "-c", "psql -qtAc \"select 1 from pg_database where datname='litefleet_bench'\""],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "1" not in exists:
        subprocess.run(
            ["su", "postgres", "-c", "psql -qc 'create database litefleet_bench owner litefleet'"], check=True
        )
    return shared.rsplit("/", 1)[0] + "/litefleet_bench"


# -- measuring ------------------------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2), "n": len(ordered)}


def emit(backend: str, figure: str, **values: Any) -> None:
    print(json.dumps({"backend": backend, "figure": figure, **values}), flush=True)


class Server:
    """`create_app` over the fleet DB under uvicorn in a child process (no reconciler, health monitor or observer:
    this measures the API and the DB, not engines), built as `litefleet serve` builds it: the collector off during
    the build, then the heap frozen (unfrozen, a full collection paused a page 85-125 ms)."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir = url, workdir
        self.port = 18700 + random.randrange(1000)
        self.token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, bare: bool = False) -> float:
        """Seconds from the process start to the first 200 from /healthz; `bare`: a FastAPI app with only that
        route under the same uvicorn (the baseline: Python, FastAPI and uvicorn start)."""
        env = {
            **os.environ,
            "LITEFLEET_DATABASE_URL": self.url,
            "LITEFLEET_STATE_DIR": str(self.workdir / "state"),
            "LITEFLEET_API_TOKEN": self.token,
        }
        app = (
            "from fastapi import FastAPI; app = FastAPI(); app.get('/healthz')(lambda: {'status': 'ok'})"
            if bare
            else "import gc; gc.disable(); from control_plane.app import create_app;"
            " from control_plane.settings import Settings; app = create_app(Settings(), background=False);"
            " gc.freeze(); gc.enable()"  # as `litefleet serve` does (control_plane/app.py `serve`)
        )
        code = f"import uvicorn; {app}; uvicorn.run(app, host='127.0.0.1', port={self.port}, log_level='warning')"
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
        with httpx.Client(timeout=1) as poller:  # one client: a new one per poll costs ~50 ms of CPU
            while time.perf_counter() - started < 120:
                try:
                    if poller.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                if self.process.poll() is not None:
                    raise RuntimeError("the control plane exited")
                time.sleep(0.02)
        raise RuntimeError("no /healthz in 120 s")

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def walk(client: httpx.Client, path: str, max_pages: int | None = None, **params: Any) -> tuple[list[float], int]:
    """Milliseconds of each page of a full walk (or the first `max_pages`), and the rows seen."""
    timings, rows, cursor = [], 0, None
    while True:
        started = time.perf_counter()
        answer = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        timings.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        page = answer.json()
        rows += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor or (max_pages is not None and len(timings) >= max_pages):
            return timings, rows


def timed_ms(call: Callable[[], Any], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_api(backend: str, url: str, workdir: Path, sizes: dict[str, int]) -> None:
    starts: list[float] = []
    bare: list[float] = []
    for _ in range(3):
        for bucket, is_bare in ((starts, False), (bare, True)):
            server = Server(url, workdir)
            bucket.append(server.start(bare=is_bare))
            server.stop()
    p50, floor_s = statistics.median(starts), statistics.median(bare)
    emit(
        backend,
        "healthz_s",
        p50=round(p50, 2),
        baseline_bare_fastapi_s=round(floor_s, 2),
        ratio=round(p50 / floor_s, 2),
        runs=[round(s, 2) for s in starts],
    )
    server = Server(url, workdir)
    server.start()
    try:
        rss_before = server.rss_mib()
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {server.token}"}, timeout=60) as client:
            rng = random.Random(1)
            get_tenant = timed_ms(
                lambda: client.get(f"/v1/tenants/tenant-{rng.randrange(sizes['tenants']):05}").raise_for_status(), 200
            )
            get_node = timed_ms(
                lambda: client.get(f"/v1/nodes/node-{rng.randrange(sizes['nodes']):04}").raise_for_status(), 200
            )
            emit(backend, "baseline_get_ms", tenant=percentiles(get_tenant), node=percentiles(get_node))
            floor = statistics.median(get_tenant)
            for name, path, params in (
                ("tenants", "/v1/tenants", {"limit": 100}),
                ("nodes", "/v1/nodes", {"limit": 100}),
                ("operations", "/v1/operations", {"limit": 100}),
                ("operations_of_a_tenant", "/v1/operations", {"limit": 100, "tenant": "tenant-00042"}),
                ("events", "/v1/events", {"limit": 100}),
                ("events_of_a_node", "/v1/events", {"limit": 100, "node": "node-0007"}),
            ):
                walk(client, path, max_pages=3, **params)  # warm
                started = time.perf_counter()
                timings, rows = walk(client, path, **params)
                stats = percentiles(timings)
                emit(
                    backend,
                    f"{name}_page_ms",
                    **stats,
                    rows=rows,
                    walk_s=round(time.perf_counter() - started, 2),
                    ratio_to_get=round(stats["p50"] / floor, 2),
                    target_p99_ms=50,
                )
        emit(backend, "rss_mib", after_healthz=rss_before, after_walks=server.rss_mib())
    finally:
        server.stop()


def bench_in_process(backend: str, url: str) -> None:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            names = list(session.exec(select(tenant_service.Tenant.name).order_by(col(tenant_service.Tenant.name))))
        middle = len(names) // 2
        page_names = names[middle : middle + 100]
        cursor = paging.encode("tenants", names[middle - 1])

        def n_plus_one() -> None:
            with Session(engine) as session:
                for name in page_names:  # the list as it was: a query per tenant
                    tenant = session.get(tenant_service.Tenant, name)
                    assert tenant is not None
                    session.exec(select(Agent).where(Agent.tenant == name).order_by(col(Agent.ordinal))).all()

        def paged() -> None:
            with Session(engine) as session:
                tenant_service.list_tenants(session, 100, cursor)

        old, new = percentiles(timed_ms(n_plus_one, 20)), percentiles(timed_ms(paged, 20))
        emit(backend, "n_plus_one_page_ms", before=old, now=new, ratio=round(old["p50"] / new["p50"], 1))
        emit(backend, "claim_pass_s", **claim_pass(engine))
        with Session(engine) as session:
            started = time.perf_counter()
            loads = node_loads(session, "tenant-00001")
            loaded = time.perf_counter() - started
            for _ in range(40):
                chosen = choose_node(loads.values(), "tenant-00001", 256)
                loads[chosen.name] = loads[chosen.name].plus(256, True)
            emit(
                backend,
                "plan_batch_s",
                seconds=round(time.perf_counter() - started, 3),
                node_loads_s=round(loaded, 3),
                target_s=1.0,
            )
    finally:
        engine.dispose()


def claim_pass(engine: Engine) -> dict[str, Any]:
    """The reconciler's pass (one batch per lane, as many as it has workers) and, on the same queue put back, every
    due operation claimed one read at a time (the baseline: the reconciler before `claim_batch`)."""
    now = time.time()
    with Session(engine) as session:
        for n in range(100):
            session.add(Operation(kind=OperationKind.failover, node=f"node-{n * 10:04}", created_at=now + n))
            session.add(Operation(kind=OperationKind.scale, tenant=f"tenant-{n * 97 + 1:05}", created_at=now + n))
        session.commit()
    workers, node_workers = Settings().workers, Settings().node_workers
    started = time.perf_counter()
    tenant_ops = claim_batch(engine, lease=600, only="tenant", node_wide_limit=node_workers, limit=workers)
    node_ops = claim_batch(engine, lease=600, only="node", node_wide_limit=node_workers, limit=node_workers)
    batch_s = time.perf_counter() - started
    _put_back(engine)
    started = time.perf_counter()
    claimed, each = 0, []
    while True:
        one = time.perf_counter()
        taken = claim(engine, lease=600, node_wide_limit=100)
        each.append((time.perf_counter() - one) * 1000)
        if taken is None:
            break
        claimed += 1
    one_by_one_s = time.perf_counter() - started
    _put_back(engine)
    started = time.perf_counter()
    everything = claim_batch(engine, lease=600, node_wide_limit=100, limit=1000)
    everything_s = time.perf_counter() - started
    with Session(engine) as session:  # leave the fleet DB as generated
        for op in session.exec(select(Operation).where(col(Operation.created_at) >= now)):
            session.delete(op)
        session.commit()
    return {
        "pass_s": round(batch_s, 3),
        "pass_claimed": len(tenant_ops) + len(node_ops),
        "all_due_in_one_batch_s": round(everything_s, 3),
        "all_due_claimed": len(everything),
        "baseline_one_per_read_s": round(one_by_one_s, 3),
        "baseline_claimed": claimed,
        "baseline_claim_ms": percentiles(each),
        "target_s": 1.0,
    }


def _put_back(engine: Engine) -> None:
    with Session(engine) as session:
        for op in session.exec(select(Operation).where(col(Operation.state) == OperationState.running)):
            op.state, op.lock_token, op.locked_until, op.attempts = OperationState.pending, None, None, 0
            session.add(op)
        session.commit()


def bench_health(backend: str, url: str, sizes: dict[str, int]) -> None:
    """Heartbeat and probe rounds of the real HealthMonitor, its nodes and agents pointed at the fake fleet server
    (the generated rows get its loopback addresses; nothing after this figure reads them)."""
    nodes = sizes["nodes"]
    server = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "fake_fleet_server.py"), str(nodes)], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        engine = make_engine(url)
        node_table, agent_table = SQLModel.metadata.tables["node"], SQLModel.metadata.tables["agent"]
        with engine.begin() as db:
            for n in range(nodes):
                address = node_address(n)
                db.execute(
                    node_table.update()
                    .where(node_table.c.name == f"node-{n:04}")
                    .values(engine_url=f"tcp://{address}:{ENGINE_PORT}", address=address, tls=None)
                )
                db.execute(
                    agent_table.update()
                    .where(agent_table.c.node == f"node-{n:04}")
                    .values(url=f"http://{address}:{AGENT_PORT}", agent_token="bench-token")
                )
        settings = Settings()
        fleet = Fleet(engine, settings, storage=_Bucket(), credentials=cast(Any, None))  # type: ignore[arg-type]
        monitor = HealthMonitor(engine, fleet, settings)
        rounds: dict[str, list[float]] = {"heartbeat": [], "probe": []}
        cpu: dict[str, list[float]] = {"heartbeat": [], "probe": []}
        for name, call, times in (("heartbeat", monitor.heartbeat, 4), ("probe", monitor.probe, 2)):
            for attempt in range(times):  # the first round makes 1,000 drivers (each negotiates its API version once)
                used, started = time.process_time(), time.perf_counter()
                call()
                if attempt:
                    rounds[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - used)
        monitor.stop()
        with Session(engine) as session:
            running = session.exec(select(Agent).where(col(Agent.probed_at).is_not(None))).all()
            probed = sum(1 for agent in running if agent.ready)
        engine.dispose()
        emit(
            backend,
            "heartbeat_round_s",
            nodes=nodes,
            heartbeat_p50=round(statistics.median(rounds["heartbeat"]), 3),
            heartbeat_cpu_s=round(statistics.median(cpu["heartbeat"]), 2),
            probe_s=round(statistics.median(rounds["probe"]), 3),
            probe_cpu_s=round(statistics.median(cpu["probe"]), 2),
            probe_cpu_ms_per_agent=round(statistics.median(cpu["probe"]) / max(1, probed) * 1000, 2),
            agents_probed_ready=probed,
            interval_s=settings.heartbeat_interval,
            parallelism=settings.health_parallelism,
        )
    finally:
        server.terminate()
        server.wait(10)


class _Bucket:
    """What the probe round reads of the object store: only its bucket's name (to list this fleet's containers)."""

    bucket = "litefleet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="bench", choices=["bench", "generate"])
    parser.add_argument("url", nargs="?", help="generate: the fleet DB to fill (migrated first)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--small", action="store_true", help="a tenth of the sizes (a quick look)")
    parser.add_argument("--no-api", action="store_true", help="only the in-process figures (no server)")
    args = parser.parse_args()
    scale = 10 if args.small else 1
    sizes = {
        "nodes": 1000 // scale,
        "tenants": 10_000 // scale,
        "agents": 4,
        "operations": 20_000 // scale,
        "events": 100_000 // scale,
    }
    if args.command == "generate":
        if not args.url:
            parser.error("generate needs the fleet DB's URL")
        migrate(args.url)
        print(json.dumps({"figure": "generate_s", "seconds": round(generate(args.url, **sizes), 2), **sizes}))
        return
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="litefleet-scale-") as tmp:
            url = fresh_database(backend, Path(tmp))
            emit(backend, "generate_s", seconds=round(generate(url, **sizes), 2), **sizes)
            if not args.no_api:
                bench_api(backend, url, Path(tmp), sizes)
            bench_in_process(backend, url)
            bench_health(backend, url, sizes)


if __name__ == "__main__":
    main()
