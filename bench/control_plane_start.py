"""Control-plane start -> serving `/healthz`, against a bare FastAPI app under uvicorn started the same way.

    .venv/bin/python bench/control_plane_start.py [--runs 5]

Figures (one JSON line each; median of --runs, each a fresh process on a fleet DB already migrated):
  control_plane_start_s   `create_app` over the fleet DB (settings, token, migrations check, routers) under uvicorn,
                          from `exec` to the first 200 of /healthz (no engines, no store: what the API costs itself)
  baseline_start_s        the floor: a FastAPI app with only /healthz under uvicorn, same interpreter
  import_app_s            `import control_plane.app` alone (python -X importtime has the breakdown)
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

REPO = Path(__file__).resolve().parents[1]

CONTROL_PLANE = """
import sys, uvicorn
from control_plane.app import create_app
from control_plane.settings import Settings
uvicorn.run(create_app(Settings(), background=False), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
BASELINE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
app.get("/healthz")(lambda: {"status": "ok"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_to_healthz(script: str, env: dict[str, str]) -> float:
    port = _port()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", script, str(port)], env=env, cwd=REPO)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(10)


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
        figures: dict[str, list[float]] = {"control_plane_start_s": [], "baseline_start_s": [], "import_app_s": []}
        for _ in range(args.runs):  # interleaved: both see the same load
            figures["control_plane_start_s"].append(start_to_healthz(CONTROL_PLANE, env))
            figures["baseline_start_s"].append(start_to_healthz(BASELINE, env))
            figures["import_app_s"].append(import_app(env))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        print(json.dumps({"figure": name, "p50": round(value, 3), "runs": args.runs}))
    ratio = medians["control_plane_start_s"] / medians["baseline_start_s"]
    print(json.dumps({"figure": "control_plane_start_ratio", "value": round(ratio, 2)}))


if __name__ == "__main__":
    main()
