"""One tenant agent incarnation as a Docker container: its identity, limits, labels, volume and port.

The container gets exactly what `agent_image.contract` defines and nothing else (agent_image/SECURITY-NOTES.md):
an environment without secrets (`ContainerEnv.to_env()`), no capabilities, a read-only root, a tmpfs at
/run/litefleet for its secrets, its own named volume for the database. The secrets (its S3 key scoped to its own
generation, its agent token, its tenant's admin token) are written into the running container by `deliver_secrets`
(`docker exec` + stdin), after every start: `run_agent` and `DockerDriver.restart` both call it. The container has no
Docker restart policy: a restart Docker did by itself would wait for secrets nobody sends; a stopped agent is
started again by the control plane (the health monitor's repair), which delivers them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets as _secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent_image.contract import POOLED, AgentSecrets, ContainerEnv, Promotion
from control_plane.drivers import agent_http
from control_plane.drivers.agent_http import AgentExited, AgentNotReady
from control_plane.drivers.names import incarnation_name as incarnation_name  # its public home since the pool
from control_plane.drivers.network import Isolation
from control_plane.drivers.runtimes import DEFAULT_RUNTIME, Runtime, pids_limit
from control_plane.drivers.sdk import errors as docker_errors
from control_plane.storage.credentials import TenantCredentials

AGENT_PORT = 8080
LABEL = "io.litefleet"
ISOLATION_LABEL = f"{LABEL}.isolation"
SECRETS_WRITER = ["/opt/litefleet/bin/python3", "-m", "agent_image.container.secrets_in"]
FOLLOWER = ["/opt/litefleet/bin/python3", "-m", "agent_image.container.follower"]
CLAIM_WRITER = ["/opt/litefleet/bin/python3", "-m", "agent_image.container.pool", "claim"]
POOL_LABEL = f"{LABEL}.pool"
POOL_PREFIX = "lfwarm-"
TMPFS = {
    "/tmp": "rw,size=16m,mode=1777",
    "/run/litefleet": "rw,noexec,nosuid,nodev,size=1m,uid=10001,gid=10001,mode=0700",
}


def _hardening() -> dict[str, Any]:
    """How every container of the agent image is created, an incarnation or a pool member: a read-only root with
    tmpfs scratch, no capability, no privilege gain, no restart by the engine (see the module docstring: restarts go
    through the control plane), and the host reachable by name. Fresh each call: the engine client gets its own."""
    return {
        "read_only": True,
        "tmpfs": dict(TMPFS),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "restart_policy": {"Name": "no"},
        "extra_hosts": {"host.docker.internal": "host-gateway"},
    }


class PoolMemberTaken(RuntimeError):
    """A claim found the pool container taken by another claim (its pool name gone, or renamed again after ours),
    or the incarnation's name taken (`name_taken`): this claim changed nothing of the container."""

    def __init__(self, message: str, *, name_taken: bool = False) -> None:
        super().__init__(message)
        self.name_taken = name_taken


class SecretsNotDelivered(RuntimeError):
    """`secrets_in` did not write the incarnation's secrets file (its exit code and stderr, never the secrets)."""

    code = "secrets_not_delivered"


@dataclass(frozen=True)
class AgentSpec:
    tenant: str
    agent: int
    generation: int
    bundle: str
    image: str
    replica_url: str
    s3_endpoint: str  # as the container reaches it (the engine's bridge gateway, not 127.0.0.1)
    credentials: TenantCredentials = field(repr=False)
    agent_token: str = field(repr=False)  # per incarnation: the router's and the health monitor's key
    admin_token: str = field(repr=False)  # per tenant: /admin/* (drain)
    restore_from_url: str | None = None
    s3_region: str = "us-east-1"
    sync_interval: float = 1.0
    monitor_interval: float = 1.0
    fence_interval: float = 5.0
    lease_timeout: float = 15.0  # seconds without a confirmed CURRENT before the agent stops acknowledging writes
    durability: str = "local"  # the tenant's default `?durability=` (local | replicated)
    memory_mb: int = 256
    cpus: float = 1.0
    pids: int = 256  # the agent's own; `pids_limit` adds the sandbox's threads under runsc
    runtime: str = DEFAULT_RUNTIME.value  # the tenant's OCI runtime (drivers/runtimes.py)
    publish_ip: str = "127.0.0.1"
    network: str | None = None  # set by the driver to the tenant's own network when `isolation` is given
    isolation: Isolation | None = None  # None: the engine's default bridge, no rules (tests, a local engine)
    fleet: str = "litefleet"  # which control plane owns it (its bucket): another fleet's containers are not ours
    follow: bool = False  # a warm move's follower of `restore_from_url` until promoted (agent_image follower.py)
    follow_interval: float = 0.25
    follower_memory_mb: int = 0  # a follower's memory on top of `memory_mb` until promoted (`restore -f` grows)

    @property
    def name(self) -> str:
        return incarnation_name(self.tenant, self.agent, self.generation)

    @property
    def pids_limit(self) -> int:
        return pids_limit(self.runtime, self.pids)

    @property
    def container_memory_mb(self) -> int:
        """The container's memory limit at creation: a follower's allowance on top until `limit_memory` lowers it."""
        return self.memory_mb + (self.follower_memory_mb if self.follow else 0)

    @property
    def claimable(self) -> bool:
        """Whether a warm pool container can become this incarnation: a new agent (nothing to restore, no follower)
        on runc, which is what the pool runs, with an empty volume."""
        return self.restore_from_url is None and not self.follow and self.runtime == Runtime.runc

    @property
    def volume(self) -> str:
        return self.name

    def environment(self) -> dict[str, str]:
        """The container's environment: the contract's, which holds no secret (`docker inspect` shows it)."""
        return ContainerEnv(
            tenant=self.tenant,
            agent=self.agent,
            generation=self.generation,
            bundle=self.bundle,
            replica_url=self.replica_url,
            restore_from_url=self.restore_from_url,
            s3_endpoint=self.s3_endpoint,
            s3_region=self.s3_region,
            sync_interval=self.sync_interval,
            monitor_interval=self.monitor_interval,
            fence_interval=self.fence_interval,
            lease_timeout=self.lease_timeout,
            durability=self.durability,
            follow=self.follow,
            follow_interval=self.follow_interval,
            serving_memory_mb=self.memory_mb if self.follow and self.follower_memory_mb else None,
        ).to_env()

    def secrets(self) -> AgentSecrets:
        """The incarnation's secrets file, delivered by `deliver_secrets` after each start."""
        return AgentSecrets(
            agent_token=self.agent_token,
            admin_token=self.admin_token,
            access_key=self.credentials.access_key,
            secret_key=self.credentials.secret_key,
        )

    def labels(self) -> dict[str, str]:
        labels = {
            f"{LABEL}.managed": "true",
            f"{LABEL}.fleet": self.fleet,
            f"{LABEL}.tenant": self.tenant,
            f"{LABEL}.agent": str(self.agent),
            f"{LABEL}.generation": str(self.generation),
        }
        if self.isolation is not None:  # a restart or removal finds what to ensure or release from the container
            labels[ISOLATION_LABEL] = self.isolation.to_label()
        return labels


@dataclass(frozen=True)
class PoolSpec:
    """A warm pool container: the agent image, no identity, no secret, no tenant network (it runs no tenant code
    until claimed), the default limits. Its volume is named like it; a claim renames the container, not the volume."""

    image: str
    fleet: str = "litefleet"
    publish_ip: str = "127.0.0.1"
    memory_mb: int = 256
    cpus: float = 1.0
    pids: int = 256
    name: str = field(default_factory=lambda: f"{POOL_PREFIX}{_secrets.token_hex(6)}")

    def labels(self) -> dict[str, str]:
        # not `managed`: an unclaimed container is no incarnation; list_managed finds claimed ones by their name
        return {POOL_LABEL: "true", f"{LABEL}.fleet": self.fleet}


def run_pool(client: Any, spec: PoolSpec) -> Any:
    """Create and start one pool container (never pulling): `run_agent`'s hardening, with LITEFLEET_POOLED=1 as its
    whole contract environment. It waits, unbounded and idle, for `deliver_claim`."""
    client.images.get(spec.image)
    container = client.containers.run(
        spec.image,
        name=spec.name,
        detach=True,
        environment={POOLED: "1"},
        stdin_open=True,  # the claim's fast channel: `attach_claim`
        network="none",  # no network until claimed (and then not even "none", below)
        labels=spec.labels(),
        volumes={spec.name: {"bind": "/data", "mode": "rw"}},
        ports={f"{AGENT_PORT}/tcp": (spec.publish_ip, None)},
        mem_limit=f"{spec.memory_mb}m",
        nano_cpus=int(spec.cpus * 1e9),
        pids_limit=spec.pids,
        **_hardening(),
    )
    # not even "none": a claim is then one connect (Docker refuses another network beside "none", and taking
    # "none" away is an engine call the claim would wait for). Its namespace keeps only its loopback, as on "none".
    client.api.disconnect_container_from_network(container.id, "none")
    return container


def claim_pool(
    client: Any,
    container: Any,
    spec: AgentSpec,
    complete: Callable[[], AgentSpec] | None = None,
    *,
    again: bool = False,
    pool_name: str | None = None,
    network_made: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Turn a running pool container into `spec`'s incarnation: its name, its limits, its tenant's network
    (`spec.network`, else the default bridge; once `network_made()` returns) as its only network, then its identity
    and secrets (those of `complete()`, called
    only then, else of `spec`) on its stdin. Docker cannot change labels or environment after creation: the name
    carries the identity (`parse_incarnation_name`), the claim record on the volume the rest. Not idempotent by
    itself: `DockerDriver.claim` looks for the name first. With `again` (a claim cut short, found under its new
    name): the same steps, the rename skipped and the identity re-sent by exec (its stdin may be closed already).
    Returns the seconds each part took (its log line). The rename goes from `pool_name` (the name the caller found
    the container under; default its name now) and raises PoolMemberTaken when that name is gone or the
    incarnation's name is taken: the container is left as it was."""
    seconds: dict[str, float] = {}
    mark = time.monotonic()

    def took(step: str) -> None:
        nonlocal mark
        now = time.monotonic()
        seconds[step], mark = round(now - mark, 3), now

    if container.name != spec.name:
        # by its pool name, not its id: the engine renames a name once, so of two control planes racing for one
        # pool container only the first gets it; the other changed nothing, and starts its incarnation cold
        source = pool_name or container.name
        try:
            client.api.rename(source, spec.name)
        except docker_errors.APIError as exc:
            if exc.status_code in (404, 409):
                message = f"{source} -> {spec.name}: {exc.explanation}"
                raise PoolMemberTaken(message, name_taken=exc.status_code == 409) from None
            raise
        # the engine looks a name up before it locks the container, so a second rename that looked it up in that
        # moment renames it again: whoever's name it holds now has it, and the other backs off having changed nothing
        _still_ours(container, spec.name)
    took("rename")
    _limit(client, container, spec)
    took("limits")
    network_made()  # the caller may still be creating the tenant's network
    took("network_made")
    target = spec.network or "bridge"
    joined = set(container.attrs.get("NetworkSettings", {}).get("Networks") or {})
    if "none" in joined:  # made by an earlier control plane, which left it on "none"
        client.api.disconnect_container_from_network(container.id, "none")
        joined.discard("none")
    if target not in joined:
        client.networks.get(target).connect(container)
    for other in sorted(joined - {target}):  # one made on the default bridge by an earlier control plane
        client.networks.get(other).disconnect(container)
    took("network")
    full = spec if complete is None else complete()
    took("secrets")
    _still_ours(container, spec.name)  # the identity goes only into a container under this incarnation's name
    if container.attrs.get("Config", {}).get("OpenStdin") and not again:
        attach_claim(client, container.id, full)
        took("claim_attach")
    else:  # made by an earlier control plane, before pool containers listened on their stdin
        deliver_claim(client, container.id, full)
        took("claim_exec")
    return seconds


def _limit(client: Any, container: Any, spec: AgentSpec) -> None:
    """The incarnation's memory, CPU and process limits on a running container (a pool container idles with the
    pool's)."""
    memory = spec.memory_mb * 2**20
    limits = {
        "Memory": memory,
        "MemorySwap": 2 * memory,
        "NanoCpus": int(spec.cpus * 1e9),
        "PidsLimit": spec.pids_limit,
    }
    response = client.api._post_json(client.api._url("/containers/{0}/update", container.id), data=limits)
    client.api._raise_for_status(response)  # the SDK's `update` knows neither NanoCpus nor PidsLimit


def _still_ours(container: Any, name: str) -> None:
    """Raises PoolMemberTaken unless the container is (still) named `name` (it reloads its attributes)."""
    container.reload()
    if container.name != name:
        raise PoolMemberTaken(f"{container.name} took the pool container {name} was claiming")


def attach_claim(client: Any, container_id: str, spec: AgentSpec, timeout: float = 30.0) -> None:
    """The first claim of a pool container, on its stdin (`agent_image.container.pool`): attach to its stdin and
    stdout through the engine, send the claim line, read the waiting entrypoint's answer. No process is started in
    the container (an exec of Python costs ~0.35-0.75 s on a busy node; an attach ~0.05 s). The secrets travel only
    on the engine's connection, as with `docker exec`. Raises SecretsNotDelivered when the answer is not 0 or does
    not come in `timeout`."""
    from agent_image.container.pool import Claim

    line = Claim(spec.environment(), spec.secrets()).to_json()
    try:
        with _attached(client, container_id) as raw:
            raw.settimeout(timeout)
            raw.sendall(line.encode() + b"\n")
            answer = _AttachStream(raw).line(time.monotonic() + timeout) or b""
    except docker_errors.APIError as exc:  # (before OSError: the SDK's errors are OSErrors too)
        raise SecretsNotDelivered(f"cannot attach to {container_id[:12]}: {exc.explanation}") from None
    except OSError as exc:
        raise SecretsNotDelivered(f"claim of {container_id[:12]} failed: {type(exc).__name__}") from None
    try:
        outcome = json.loads(answer)
        code, said = int(outcome["claim"]), str(outcome.get("error", ""))[:300]
    except (ValueError, KeyError, TypeError):
        raise SecretsNotDelivered(f"claim of {container_id[:12]}: no answer ({answer[:100]!r})") from None
    if code != 0:
        raise SecretsNotDelivered(f"claim of {container_id[:12]} refused ({code}): {said}")


@contextlib.contextmanager
def _attached(client: Any, container_id: str) -> Iterator[Any]:
    """The container's stdin and stdout through an engine attach: the raw socket, closed on the way out. Raises
    docker's APIError when the engine refuses the attach (the container is not running)."""
    params = {"stdin": 1, "stdout": 1, "stderr": 0, "stream": 1, "logs": 0}
    sock = client.api.attach_socket(container_id, params=params)
    try:
        yield getattr(sock, "_sock", sock)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


class _AttachStream:
    """The lines a container writes on stdout, from the engine's multiplexed attach stream (frames of an 8-byte
    header, stream type and length, then the payload)."""

    LIMIT = 1 << 20  # bytes read at most: what the container writes there may be anything, of any size

    def __init__(self, raw: Any) -> None:
        self.raw, self.frames, self.stdout, self.read = raw, b"", b"", 0

    def line(self, deadline: float) -> bytes | None:
        """The next stdout line; None when the stream ended, `deadline` passed or LIMIT bytes were read first."""
        while b"\n" not in self.stdout:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.read > self.LIMIT:
                return None
            self.raw.settimeout(remaining)
            try:
                chunk = self.raw.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.read += len(chunk)
            self.frames += chunk
            while len(self.frames) >= 8 and len(self.frames) >= 8 + int.from_bytes(self.frames[4:8], "big"):
                size = int.from_bytes(self.frames[4:8], "big")
                if self.frames[0] == 1:
                    self.stdout += self.frames[8 : 8 + size]
                self.frames = self.frames[8 + size :]
        line, _, self.stdout = self.stdout.partition(b"\n")
        return line


def deliver_claim(client: Any, container_id: str, spec: AgentSpec, timeout: float = 30.0) -> None:
    """The claim (`agent_image.container.pool`): the incarnation's environment and secrets, one JSON line on stdin.
    Safe to repeat: the same claim writes the same bytes. Raises SecretsNotDelivered."""
    from agent_image.container.pool import Claim

    claim = Claim(spec.environment(), spec.secrets())
    _exec_line(client, container_id, CLAIM_WRITER, claim.to_json(), "claim", timeout)


def run_agent(client: Any, spec: AgentSpec) -> Any:
    """Create and start the incarnation's container (never pulling), then deliver its secrets. Not idempotent by
    itself: callers look for an existing container by name or labels first (`find_agent`)."""
    container = create_agent(client, spec)
    deliver_secrets(client, container.id, spec.secrets())
    return container


def create_agent(client: Any, spec: AgentSpec) -> Any:
    """`run_agent` without the secrets: the container starts and waits for them (its entrypoint reads them before
    anything else). Not idempotent by itself, as `run_agent`."""
    client.images.get(spec.image)  # raises ImageNotFound here instead of letting the SDK try a registry
    return client.containers.run(
        spec.image,
        name=spec.name,
        detach=True,
        environment=spec.environment(),
        labels=spec.labels(),
        volumes={spec.volume: {"bind": "/data", "mode": "rw"}},
        ports={f"{AGENT_PORT}/tcp": (spec.publish_ip, None)},
        mem_limit=f"{spec.container_memory_mb}m",
        nano_cpus=int(spec.cpus * 1e9),
        pids_limit=spec.pids_limit,
        runtime=spec.runtime,
        network=spec.network,
        stdin_open=spec.follow,  # a follower's promotion comes there first (`deliver_promotion`)
        **_hardening(),
    )


def deliver_secrets(client: Any, container_id: str, secrets: AgentSecrets, timeout: float = 30.0) -> None:
    """Write the incarnation's secrets file in its running container: `docker exec` of the image's writer with the
    JSON on stdin as one line (never an argument or exec environment: `exec inspect` and /proc would show it).
    Safe to repeat: the same document replaces the file with the same bytes. Raises SecretsNotDelivered."""
    _exec_line(client, container_id, SECRETS_WRITER, secrets.to_json(), "secrets", timeout)


def limit_memory(client: Any, container_id: str, memory_mb: int) -> None:
    """Set a running container's memory limit (a promoted follower's, down to its agent's); `container_id` may be
    its name. Raises docker's NotFound when it is gone. Safe to repeat."""
    memory = memory_mb * 2**20
    response = client.api._post_json(
        client.api._url("/containers/{0}/update", container_id), data={"Memory": memory, "MemorySwap": 2 * memory}
    )
    client.api._raise_for_status(response)


def deliver_promotion(
    client: Any, container_id: str, secrets: AgentSecrets, promotion: Promotion, *, attach: bool = False
) -> None:
    """Hand a follower its own secrets and its promotion (the secrets line, then the order line); returns once the
    follower is promoted (its restore exited, the copy checked), within the order's timeout. With `attach` (a
    follower created with stdin open) first on its stdin (`_attach_promotion`), else, or when it does not take
    them there, by exec (`follower promote`, same lines on the exec's stdin). Safe to repeat: the same bytes are
    written again, a promoted follower answers at once. Raises SecretsNotDelivered."""
    order = dataclasses.replace(promotion, nonce=promotion.nonce or _secrets.token_hex(8))
    line = secrets.to_json() + "\n" + order.to_json()
    if attach and _attach_promotion(client, container_id, line, order.timeout + 15, order.nonce):
        return
    _exec_line(client, container_id, [*FOLLOWER, "promote"], line, "promotion", order.timeout + 15)


PROMOTION_ACK_TIMEOUT = 3.0  # seconds for a follower to take the promotion on its stdin before it goes by exec


def _attach_promotion(client: Any, container_id: str, line: str, timeout: float, nonce: str) -> bool:
    """The promotion on the follower's stdin (`agent_image.container.follower`): no process started in the container
    (an exec of Python is ~0.3 s inside a move's downtime; an attach ~0.05 s). True once it answered promoted; False
    when it did not take the lines within PROMOTION_ACK_TIMEOUT (its stdin is closed: an earlier delivery promoted
    it; or it is not reading yet: restarted, still importing), so the caller goes by exec. Raises
    SecretsNotDelivered when it refused the lines or failed after taking them."""
    accepted = False
    deadline = time.monotonic() + PROMOTION_ACK_TIMEOUT
    try:
        with _attached(client, container_id) as raw:
            stream = _AttachStream(raw)
            raw.settimeout(PROMOTION_ACK_TIMEOUT)
            raw.sendall(line.encode() + b"\n")
            while (answer := stream.line(deadline)) is not None:
                try:
                    outcome = json.loads(answer)
                    said = str(outcome.get("error", ""))[:300]
                except (ValueError, AttributeError):
                    continue  # not an answer
                if outcome.get("nonce") != nonce:
                    continue  # not an answer to this order (tenant code may write to a promoted container's stdout)
                if "accepted" in outcome:
                    if outcome["accepted"] != 0:
                        raise SecretsNotDelivered(f"promotion of {container_id[:12]} refused: {said}")
                    accepted, deadline = True, time.monotonic() + timeout
                elif "promoted" in outcome:  # also what a second delivery hears while the first one is applied
                    if outcome["promoted"] != 0:
                        raise SecretsNotDelivered(f"follower {container_id[:12]} failed its promotion: {said}")
                    return True
    except docker_errors.APIError:  # (before OSError: the SDK's errors are OSErrors too)
        return False  # the attach was refused: the exec says why
    except OSError as exc:
        raise SecretsNotDelivered(f"promotion of {container_id[:12]} failed: {type(exc).__name__}") from None
    if accepted:
        raise SecretsNotDelivered(f"follower {container_id[:12]} took its promotion and did not answer in {timeout:g}s")
    return False


def follower_status(client: Any, container_id: str) -> dict[str, Any] | None:
    """The follower's `{"txid": N|null, "promoted": bool}`, None when it cannot be asked (not running)."""
    try:
        exec_id = client.api.exec_create(container_id, [*FOLLOWER, "status"], stdout=True, stderr=False)["Id"]
        output = client.api.exec_start(exec_id)
    except docker_errors.APIError:
        return None
    try:
        answer = json.loads(output.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return answer if isinstance(answer, dict) else None


def _exec_line(client: Any, container_id: str, argv: list[str], line: str, what: str, timeout: float) -> None:
    try:
        exec_id = client.api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True)["Id"]
        sock = client.api.exec_start(exec_id, socket=True)
    except docker_errors.APIError as exc:  # the container is not running (it exited before the delivery)
        raise SecretsNotDelivered(f"cannot deliver {what} to {container_id[:12]}: {exc.explanation}") from None
    raw = getattr(sock, "_sock", sock)
    output = b""
    try:
        raw.settimeout(timeout)
        raw.sendall(line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # until the writer exits and the engine closes the stream
            chunk = raw.recv(4096)
            if not chunk:
                break
            output += chunk
    except (TimeoutError, OSError) as exc:
        raise SecretsNotDelivered(f"{what} delivery to {container_id[:12]} failed: {type(exc).__name__}") from None
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    code = _exec_exit_code(client, exec_id, deadline=time.monotonic() + 5)
    if code != 0:
        # the writer's stderr names a field or a path, never a value; the multiplexed stream has 8-byte headers
        said = output.decode(errors="replace").strip()[-300:]
        raise SecretsNotDelivered(f"{what} writer in {container_id[:12]} exited {code}: {said!r}")


def _exec_exit_code(client: Any, exec_id: str, deadline: float) -> int | None:
    while True:
        state = client.api.exec_inspect(exec_id)
        if not state.get("Running") or time.monotonic() > deadline:
            code = state.get("ExitCode")
            return None if state.get("Running") else code
        time.sleep(0.02)


def find_agent(client: Any, spec: AgentSpec) -> Any | None:
    found = client.containers.list(all=True, filters={"name": f"^{spec.name}$"})
    return found[0] if found else None


def agent_url(container: Any, *, reload: bool = True) -> str | None:
    """The agent's HTTP address as published on the node; None while the port has no binding (a container
    between restarts, or one whose node's network just came back: seen in CI, `Ports` without the agent port).
    `reload=False`: the caller has just reloaded the container's attributes (one engine call fewer)."""
    if reload:
        container.reload()
    bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{AGENT_PORT}/tcp") or []
    if not bindings:
        return None
    return f"http://{bindings[0]['HostIp']}:{bindings[0]['HostPort']}"


def wait_ready(container: Any, token: str, timeout: float = 30.0) -> str:
    """Poll the agent's `/readyz` (with `token`) until it answers 200; fail early (with its last log lines) if it
    exits. Start it after `deliver_secrets`: the agent does not serve before it has its secrets."""

    def exited() -> None:
        container.reload()
        if container.status == "exited":
            raise AgentExited(f"{container.name} exited: {_last_lines(container)}")

    try:
        return agent_http.wait_ready(
            lambda: agent_url(container), token=token, timeout=timeout, check=exited, interval=0.02, what=container.name
        )
    except AgentExited:
        raise
    except AgentNotReady as exc:
        raise AgentNotReady(f"{exc}: {_last_lines(container)}") from None


def _last_lines(container: Any, n: int = 3) -> str:
    return " | ".join(container.logs(tail=n).decode(errors="replace").strip().splitlines())
