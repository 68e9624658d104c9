"""Headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) against a control plane
subprocess with a real API token over a fleet of fakes (tests/browser/fake_control_plane.py): no Docker needed.

Screenshots land in var/artifacts/dashboard/ (the path is printed). A missing browser skips these tests, or fails
them with LITEFLEET_REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.timing import poll

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "artifacts" / "dashboard"
# ENVIRONMENT.md: without the background-networking flags Chromium floods this closed network with connections
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


@dataclass
class Plane:
    url: str
    token: str
    log: Path

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(
            method, self.url + path, headers={"authorization": f"Bearer {self.token}"}, timeout=60, **kwargs
        )
        assert answer.status_code < 300, answer.text
        return answer.json()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "LITEFLEET_STATE_DIR": str(tmp_path / "state"),
        "LITEFLEET_DATABASE_URL": "",
        "LITEFLEET_API_PORT": str(port),
        "LITEFLEET_API_TOKEN": token,
        "LITEFLEET_HEARTBEAT_INTERVAL": "0.5",
        "LITEFLEET_MOVE_PARALLELISM": "1",
        "LITEFLEET_READY_TIMEOUT": "10",
        "LITEFLEET_DRAIN_TIMEOUT": "1",
        "LITEFLEET_FAKE_AGENT_DELAY": "0.5",
        "LITEFLEET_FAKE_STALLED_TENANT": "globex",
    }
    env.pop("LITEFLEET_DATABASE_URL")
    log = tmp_path / "control-plane.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.browser.fake_control_plane"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in poll(30, 0.1):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                pytest.fail(f"control plane exited: {log.read_text()[-2000:]}")
        else:
            pytest.fail(f"control plane did not start: {log.read_text()[-2000:]}")
        yield Plane(url, token, log)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = f"no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get("LITEFLEET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LITEFLEET_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {ARTIFACTS}")
    return ARTIFACTS
