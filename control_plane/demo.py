"""`make demo`: the whole story on this machine, on the embedded defaults.

Starts SeaweedFS and the control plane (`litefleet up`), adds two more node engines in network namespaces (the
test bed, when running as root), provisions two tenants, runs workflows, scales one up with work in flight,
evacuates it to another node, and prints what happened (operations, downtime, events) and where to look.
Everything keeps running afterwards so you can poke at it with `litefleet`; `litefleet down` and
`python -m infra.testbed down` stop it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from control_plane.cli import local
from control_plane.client import CliError, FleetClient, table
from control_plane.pki import install_credential_set
from control_plane.settings import Settings, api_token

TESTBED_DIR = Path("/var/lib/litefleet-demo-testbed")


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> None:
    settings = Settings()
    say("== 1. litefleet up: agent image, object store, control plane, the local engine as a node")
    for line in local.up(settings):
        say("   " + line)
    token = api_token(settings, create=False)
    api = FleetClient(settings.client_url, timeout=600, token=token)

    if os.geteuid() == 0:
        from infra.testbed import Testbed

        say("\n== 2. two more node engines, each in its own network namespace (infra/testbed.py)")
        bed = Testbed.load(TESTBED_DIR)
        for node in bed.up(2):
            install_credential_set(settings.engine_pki_dir, node.tls_name, node.tls)  # the bed's client cert
            body = {"name": node.name, "engine_url": node.engine_url, "address": node.ip, "tls": node.tls_name}
            answer = api.send("POST", "/v1/nodes", json=body)
            if answer.status_code not in (201, 409):
                sys.exit(f"could not register {node.name}: {answer.text}")
            say(f"   {node.name}: {node.engine_url}")
    say(
        table(
            api.send("GET", "/v1/nodes").json()["items"], ["name", "state", "engine_url", "agents", "capacity_agents"]
        )
    )

    def run(method: str, path: str, what: str, json_body: Any = None, **params: Any) -> dict[str, Any]:
        say(f"\n-- {what}")
        started = time.monotonic()
        try:
            op = api.wait(method, path, json_body=json_body, **params)
        except CliError as exc:
            sys.exit(f"refused: {exc}")
        for step in op["steps"]:
            agent = f" agent {step['agent']}" if step.get("agent") is not None else ""
            say(f"   {step['step']}{agent}: {step['message']}")
        say(f"   => {op['kind']} {op['state']} in {time.monotonic() - started:.1f}s {op.get('error') or ''}")
        if op["state"] != "succeeded":
            sys.exit(1)
        return op

    say("\n== 3. provision")
    for name, agents in (("acme", 2), ("globex", 1)):
        if api.send("GET", f"/v1/tenants/{name}").status_code == 200:
            run("DELETE", f"/v1/tenants/{name}", f"remove {name} from an earlier demo run", purge=True)
        run("POST", "/v1/tenants", f"create {name} with {agents} agents", {"name": name, "agents": agents})

    say("\n== 4. workflows, routed to the tenant's agents")
    ids = []
    for i in range(6):
        answer = api.send("POST", "/v1/tenants/acme/workflows/count", json={"id": f"job-{i}", "args": [20, 0.1]}).json()
        ids.append(answer["id"])
        say(f"   started {answer['id']} on acme agent {answer['agent']}: count(20 steps, 0.1 s each)")
    greeting = api.send("POST", "/v1/tenants/globex/workflows/greet", json={"args": ["ada"]}).json()
    done = api.send("GET", f"/v1/tenants/globex/workflows/{greeting['id']}", params={"wait": 10}).json()
    say(f"   globex greet('ada') -> {done['result']!r}")

    say("\n== 5. scale acme 2 -> 3 while those workflows run")
    run("POST", "/v1/tenants/acme/scale", "scale acme to 3", {"agents": 3})

    say(
        "\n== 6. evacuate acme's agents off the node that holds most of them (warm: a follower catches up, then the old"
        " generation stops with a proven final sync and the follower is promoted)"
    )
    placements = api.send("GET", "/v1/tenants/acme").json()["placements"]
    busiest = max({p["node"] for p in placements}, key=lambda n: sum(p["node"] == n for p in placements))
    op = run("POST", "/v1/tenants/acme/evacuate", f"evacuate acme from {busiest}", {"from_node": busiest})
    say(f"   downtime per agent (s): {op['result'].get('downtime_s')}")

    say("\n== 7. every workflow finished, wherever it now lives")
    rows = []
    for workflow_id in ids:
        found = api.send("GET", f"/v1/tenants/acme/workflows/{workflow_id}", params={"wait": 60}).json()
        rows.append(
            {"workflow": workflow_id, "agent": found["agent"], "status": found["status"], "result": found["result"]}
        )
    say(table(rows, ["workflow", "agent", "status", "result"]))
    tenant = api.send("GET", "/v1/tenants/acme").json()
    say("\n" + table(tenant["placements"], ["ordinal", "generation", "node", "state", "url"]))

    say("\n== where to look")
    say(f"   API + OpenAPI:   {settings.client_url}/docs")
    say(f"   control plane:   {settings.state_dir}/control-plane.log (JSON lines; grep a tenant or an op id)")
    say("   CLI:             .venv/bin/litefleet tenants get acme | ops ls | events --tenant acme | nodes ls")
    say("   stop everything: .venv/bin/litefleet down; python -m infra.testbed down --state-dir " + str(TESTBED_DIR))


if __name__ == "__main__":
    main()
