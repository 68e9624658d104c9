"""The store-side lag sampler over N running agents: what one measuring round costs.

    .venv/bin/python bench/lag.py [--agents 100] [--rounds 7] [--concurrency 4]

No Docker: an embedded SeaweedFS on 127.0.0.1 holding N replica prefixes (LTX-named objects at levels 0 and 1, as
Litestream writes them), a SQLite fleet DB with N running agents that reported their local txid, and the
`LagSampler` the control plane runs. For each round: wall time from `tick()` until every agent's read finished
and a second `tick()` wrote the result (the time a state change takes to land, beyond the sample interval),
the sampler's CPU, and, as the baseline measured in the same process, the same N positions read one after
another with `ObjectStorage.replica_position` (what a sequential sampler would take). Medians of --rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlmodel import Session, update  # noqa: E402

from control_plane.db.engine import make_engine, migrate  # noqa: E402
from control_plane.db.models import Agent, AgentState  # noqa: E402
from control_plane.observer.lag import LagSampler, LagThresholds  # noqa: E402
from control_plane.storage import ObjectStorage  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402

BUCKET = "litefleet-bench-lag"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="litefleet-bench-lag-") as scratch:
        root = Path(scratch)
        store = EmbeddedStore(root / "store", free_address("127.0.0.1"), BUCKET, "BENCHADMIN", secrets.token_hex(16))
        store.up()
        try:
            storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
            storage.ensure_bucket()
            url = f"sqlite:///{root / 'fleet.db'}"
            migrate(url)
            engine = make_engine(url)
            with Session(engine) as session:
                for i in range(args.agents):
                    tenant = f"lag{i:04d}"
                    prefix = storage.replica_prefix(tenant, 0, 1)
                    for level, low, high in ((0, 1, 40), (0, 41, 42), (1, 1, 40)):
                        key = f"{prefix}{level}/{low:016x}-{high:016x}.ltx"
                        storage.s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
                    session.add(
                        Agent(
                            id=f"{tenant}/0",
                            tenant=tenant,
                            ordinal=0,
                            generation=1,
                            state=AgentState.running,
                            local_txid=42,
                            seconds_since_sync=1.0,
                        )
                    )
                session.commit()
            sampler = LagSampler(engine, storage, LagThresholds(), concurrency=args.concurrency)
            rounds: list[dict[str, float]] = []
            for _ in range(args.rounds):
                with Session(engine) as session:  # the health monitor's probes: every agent reported just now
                    session.execute(update(Agent).values(probed_at=time.time()))
                    session.commit()
                started, cpu0 = time.perf_counter(), cpu()
                sampler.tick()
                sampler.wait(60)
                states = sampler.tick()
                sampled = time.perf_counter() - started
                sampler_cpu = cpu() - cpu0
                sampler.wait(60)  # the reads the second tick started: not beside the baseline
                assert len(states) == args.agents and all(s == "ok" for s in states.values()), states
                started = time.perf_counter()
                for i in range(args.agents):
                    storage.replica_position(f"lag{i:04d}", 0, 1)
                sequential = time.perf_counter() - started
                rounds.append({"round_s": sampled, "cpu_s": sampler_cpu, "sequential_s": sequential})
            sampler.close()
            engine.dispose()
        finally:
            store.down()
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result = {
        "agents": args.agents,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "round_s_p50": round(median["round_s"], 3),
        "cpu_s_p50": round(median["cpu_s"], 3),
        "sequential_s_p50": round(median["sequential_s"], 3),
        "speedup_vs_sequential": round(median["sequential_s"] / median["round_s"], 2),
        "lists_per_s_at_default_interval": round(args.agents / 2.0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
