"""`python -m tests.browser.fake_control_plane`: the real control plane (API, dashboard, reconciler, health
monitor, token from LITEFLEET_API_TOKEN) serving a fleet of fakes instead of Docker engines and object storage.
Agents take LITEFLEET_FAKE_AGENT_DELAY seconds to start and to stop, so an operation's steps arrive over seconds
and a browser can watch them come in; they report a small varying replication lag, and the agents of
LITEFLEET_FAKE_STALLED_TENANT report a lag that keeps growing, as when their object store stalls."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import uvicorn

from control_plane.app import create_app
from control_plane.db.engine import make_engine
from control_plane.drivers.agent_http import Readiness
from control_plane.drivers.agent_spec import AgentSpec
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import FakeAgents, FakeEngines, FakeReplicas, fake_fleet


class SlowReplicas(FakeReplicas):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def agent_started(self, spec: AgentSpec) -> None:
        time.sleep(self.delay)
        super().agent_started(spec)

    def agent_stopped(self, spec: AgentSpec) -> None:
        time.sleep(self.delay)
        super().agent_stopped(spec)


class LaggingAgents(FakeAgents):
    def __init__(self, engines: FakeEngines, stalled: str | None) -> None:
        super().__init__(engines)
        self.stalled = stalled
        self.since = time.time()

    def readyz(self, url: str, token: str, timeout: float = 2.0) -> Readiness | None:
        answer = super().readyz(url, token, timeout)
        if answer is None or answer.local_txid is None:
            return answer
        name = url.rpartition("/")[2]  # lf-<tenant>-<agent>-g<generation>
        if self.stalled and name.startswith(f"lf-{self.stalled}-"):
            # its writes go on, its replica does not follow: the store-side lag grows, no sync is confirmed
            behind = time.time() - self.since
            lag = int(behind * 3)
            return replace(answer, local_txid=answer.local_txid + lag, lag_txids=lag, seconds_since_sync=behind)
        # the replica holds what the agent reports (the store confirms each sync), its own view wobbles a little
        lag = (int(time.time() * 2) + len(name)) % 4
        return replace(answer, lag_txids=lag, seconds_since_sync=0.5)


def main() -> None:
    settings = Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    replicas = SlowReplicas(float(os.environ.get("LITEFLEET_FAKE_AGENT_DELAY", "0.5")))
    fleet, engines = fake_fleet(make_engine(settings.fleet_database_url), settings, replicas)
    fleet.agents_api = LaggingAgents(engines, os.environ.get("LITEFLEET_FAKE_STALLED_TENANT"))
    app = create_app(settings, fleet)
    app.state.probe_engine = lambda engine_url: None  # fake-* engine URLs: nothing to ping
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")


if __name__ == "__main__":
    main()
