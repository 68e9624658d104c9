"""`litefleet store up/status/down` as an operator runs it: a real SeaweedFS process, exit codes that mean something."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from control_plane.storage.seaweed import free_address


def _litefleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_store_up_status_down(tmp_path: Path) -> None:
    address = free_address("127.0.0.1")
    s3, master, volume, filer = address.s3_port, address.master_port, address.volume_port, address.filer_port
    env = os.environ | {
        "LITEFLEET_STATE_DIR": str(tmp_path),
        "LITEFLEET_STORE_S3_PORT": str(s3),
        "LITEFLEET_STORE_MASTER_PORT": str(master),
        "LITEFLEET_STORE_VOLUME_PORT": str(volume),
        "LITEFLEET_STORE_FILER_PORT": str(filer),
    }
    try:
        up = _litefleet(env, "store", "up")
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith(f"store up: http://127.0.0.1:{s3} bucket=litefleet pid=")
        secret = (tmp_path / "store" / "admin-secret").read_text().strip()
        assert secret not in up.stdout + up.stderr, "the admin secret leaked into output"
        assert (tmp_path / "store" / "admin-secret").stat().st_mode & 0o077 == 0
        assert _litefleet(env, "store", "status").returncode == 0
    finally:
        down = _litefleet(env, "store", "down")
    assert down.returncode == 0 and down.stdout.strip() == "store down"
    assert _litefleet(env, "store", "status").returncode == 3
