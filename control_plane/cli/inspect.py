"""`litefleet inspect TENANT`: a tenant's workflows (status, steps, events, errors) as the observer sees them now
or at a past time, with where each answer came from and how fresh it is. Everything through the /v1 client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control_plane.client import FleetClient, table

PROBLEMS = ("ERROR", "BLOCKED")


def collect(
    client: FleetClient, tenant: str, *, agent: int | None, at: str | None, workflow: str | None, details: int
) -> dict[str, Any]:
    """The listing (`/history?at=` for a past time, else the workflow list) and the full record of `workflow`, or
    of up to `details` workflows in ERROR or BLOCKED."""
    if at is not None:
        listing: dict[str, Any] = client.request("GET", f"/v1/tenants/{tenant}/history", at=at, agent=agent)
    else:
        listing = client.request("GET", f"/v1/tenants/{tenant}/workflows", limit=1000)
        if agent is not None:
            listing["workflows"] = [w for w in listing["workflows"] if w.get("agent") == agent]
            listing["agents"] = [a for a in listing["agents"] if a.get("agent") == agent]
    rows = _workflows(listing)
    wanted = [workflow] if workflow else [w["id"] for w in rows if w["status"] in PROBLEMS][:details]
    found = {w["id"]: w for w in rows}
    listing["details"] = [
        client.request(
            "GET",
            f"/v1/tenants/{tenant}/history/{workflow_id}",
            at=at,
            agent=found.get(workflow_id, {}).get("agent", agent),
        )
        for workflow_id in wanted
    ]
    return listing


def _workflows(listing: dict[str, Any]) -> list[dict[str, Any]]:
    if "workflows" in listing:
        rows: list[dict[str, Any]] = listing["workflows"]
        return rows
    return [w for entry in listing["agents"] for w in entry["workflows"]]


def _where(entry: dict[str, Any]) -> dict[str, Any]:
    fresh = entry.get("freshness") or {}
    return {
        "agent": entry.get("agent"),
        "source": entry.get("source"),
        "kind": fresh.get("kind"),
        "generation": fresh.get("generation"),
        "txid": fresh.get("txid"),
        "as_of": fresh.get("as_of"),
        "seconds_behind": fresh.get("seconds_behind"),
        "counts": entry.get("counts"),
    }


def render(listing: dict[str, Any], tenant: str, echo: Callable[[str], None]) -> None:
    when = listing.get("at") or "now"
    echo(f"{tenant} as of {when}: {listing.get('counts') or {}}")
    echo(
        table(
            [_where(entry) for entry in listing["agents"]],
            ["agent", "source", "kind", "generation", "txid", "as_of", "seconds_behind", "counts"],
        )
    )
    for missing in listing.get("unavailable", []):
        echo(f"  agent {missing['agent']}: {missing['reason']}")
    rows = [{**w, "error": (w.get("error") or {}).get("message")} for w in _workflows(listing)]
    echo("")
    echo(table(rows, ["id", "name", "status", "agent", "updated_at", "result", "error"]))
    for detail in listing.get("details", []):
        fresh = detail.get("freshness") or {}
        echo("")
        echo(
            f"workflow {detail['id']} ({detail['name']}) {detail['status']} on agent {detail['agent']} "
            f"[{fresh.get('kind')} of generation {fresh.get('generation')}, txid {fresh.get('txid')}]"
        )
        if detail.get("error"):
            echo(f"  error: {detail['error']['type']}: {detail['error']['message']}")
        if detail["steps"]:
            steps = [{**s, "error": (s.get("error") or {}).get("message")} for s in detail["steps"]]
            echo(table(steps, ["seq", "kind", "name", "attempts", "output", "error", "finished_at"]))
        if detail["events"]:
            echo(table(detail["events"], ["key", "value", "at"]))
        for entry in detail["errors"]:
            error = entry["error"]
            echo(f"  {entry['at']} {entry['kind']} {entry['name'] or ''}: {error['type']}: {error['message']}")
