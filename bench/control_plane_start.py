"""Control-plane start -> serving `/healthz`, against a bare FastAPI app under uvicorn started the same way.

    .venv/bin/python bench/control_plane_start.py [--runs 5]

Figures (one JSON line each; median of --runs, each a fresh process on a fleet DB already migrated):
  control_plane_start_s   `create_app` over the fleet DB (settings, token, migrations check, routers) under uvicorn,
                          from `exec` to the first 200 of /healthz (no engines, no store: what the API costs itself)
  baseline_start_s        the floor: a FastAPI app with only /healthz under uvicorn, same interpreter
  import_app_s            `import control_plane.app` alone (python -X importtime has the breakdown)
  serve_restart_s         the real thing restarted: `litefleet serve` over a migrated fleet DB and a running
                          embedded SeaweedFS (fleet built, bucket checked, reconciler, health monitor, observer and
                          lag sampler started), from `exec` to the first 200 of /healthz
  serve_restart_api_s     the same, to the first 200 of an authenticated API call that reads the fleet DB
                          (`GET /v1/nodes`: FastAPI builds the routes it walks past on a first request)
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
import time
from pathlib import Path

import httpx

from control_plane.settings import Settings, api_token
from control_plane.storage.seaweed import EmbeddedStore, embedded_store, free_address

REPO = Path(__file__).resolve().parents[1]

CONTROL_PLANE = """
import sys, uvicorn
from control_plane.app import create_app
from control_plane.settings import Settings, api_token
uvicorn.run(create_app(Settings(), background=False), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
BASELINE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
app.get("/healthz")(lambda: {"status": "ok"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", ws="none")
"""


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_to_healthz(script: str, env: dict[str, str], path: str = "/healthz", token: str | None = None) -> float:
    """Seconds from starting `script` to the first 200 of `path`."""
    port = _port()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", script, str(port)], env=env, cwd=REPO)
    try:  # one client: each new one builds an SSL context (~50 ms of CPU), which would compete with the start
        with httpx.Client(timeout=5, headers=headers) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"exited with {process.returncode}")
                try:
                    if client.get(f"http://127.0.0.1:{port}{path}").status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(10)


SERVE = """
import os, sys
os.environ["LITEFLEET_API_PORT"] = sys.argv[1]
from control_plane.cli import main
sys.argv = ["litefleet", "serve"]
main()
"""


def serve_env(state: str) -> tuple[dict[str, str], EmbeddedStore]:
    """A running embedded store on free loopback ports and the environment `litefleet serve` needs to use it."""
    address = free_address("127.0.0.1")
    env = {
        **os.environ,
        "LITEFLEET_STATE_DIR": state,
        "PYTHONPATH": str(REPO),
        "LITEFLEET_STORE_IP": address.ip,
        "LITEFLEET_STORE_S3_PORT": str(address.s3_port),
        "LITEFLEET_STORE_MASTER_PORT": str(address.master_port),
        "LITEFLEET_STORE_VOLUME_PORT": str(address.volume_port),
        "LITEFLEET_STORE_FILER_PORT": str(address.filer_port),
    }
    settings = Settings(
        state_dir=Path(state),
        store_ip=address.ip,
        store_s3_port=address.s3_port,
        store_master_port=address.master_port,
        store_volume_port=address.volume_port,
        store_filer_port=address.filer_port,
    )
    store = embedded_store(settings)
    store.up()
    return env, store


def import_app(env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import control_plane.app"], env=env, cwd=REPO, check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lf-start-") as state:
        env = {**os.environ, "LITEFLEET_STATE_DIR": state, "PYTHONPATH": str(REPO)}
        start_to_healthz(CONTROL_PLANE, env)  # first start: migrations run, the token is written
        figures: dict[str, list[float]] = {
            "control_plane_start_s": [],
            "baseline_start_s": [],
            "import_app_s": [],
            "serve_restart_s": [],
            "serve_restart_api_s": [],
        }
        with tempfile.TemporaryDirectory(prefix="lf-serve-") as served:
            serving, store = serve_env(served)
            try:
                start_to_healthz(SERVE, serving)  # first start: migrations, token, bucket, observer key
                token = api_token(Settings(state_dir=Path(served)), create=False)
                for _ in range(args.runs):  # interleaved: all see the same load
                    figures["control_plane_start_s"].append(start_to_healthz(CONTROL_PLANE, env))
                    figures["baseline_start_s"].append(start_to_healthz(BASELINE, env))
                    figures["import_app_s"].append(import_app(env))
                    figures["serve_restart_s"].append(start_to_healthz(SERVE, serving))
                    api = start_to_healthz(SERVE, serving, "/v1/nodes", token)
                    figures["serve_restart_api_s"].append(api)
            finally:
                store.down()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        print(json.dumps({"figure": name, "p50": round(value, 3), "runs": args.runs}))
    for name in ("control_plane_start_s", "serve_restart_s", "serve_restart_api_s"):
        ratio = medians[name] / medians["baseline_start_s"]
        print(json.dumps({"figure": name.removesuffix("_s") + "_ratio", "value": round(ratio, 2)}))


if __name__ == "__main__":
    main()
