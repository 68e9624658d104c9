"""Compute drivers: one per node engine. `DockerDriver` speaks to a Docker Engine by URL (the docker SDK).

Everything the control plane does to a node goes through these few verbs, each safe to repeat: running an
incarnation that already exists returns it, stopping a stopped one or removing a removed one is a no-op."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import requests
import structlog

from agent_image.contract import AgentSecrets, Promotion
from control_plane.drivers.agent_spec import (
    ISOLATION_LABEL,
    LABEL,
    POOL_LABEL,
    POOL_PREFIX,
    AgentSpec,
    PoolMemberTaken,
    PoolSpec,
    SecretsNotDelivered,
    agent_url,
    claim_pool,
    create_agent,
    deliver_promotion,
    deliver_secrets,
    find_agent,
    follower_status,
    limit_memory,
    run_pool,
)
from control_plane.drivers.base import EngineUnreachable, Incarnation, PoolMember
from control_plane.drivers.engine_client import engine_client
from control_plane.drivers.names import parse_incarnation_name
from control_plane.drivers.network import (
    Isolation,
    TenantNetwork,
    build_helper_image,
    create_tenant_network,
    ensure_tenant_network,
    install_tenant_rules,
    release_tenant_network,
)
from control_plane.drivers.runtimes import Runtime, engine_runtimes, reap_failed_start
from control_plane.pki import EngineTLS
from control_plane.timing import poll

log = structlog.get_logger("control_plane.drivers")
# a claim's network creation and rules install, beside its move; sized past the claims that run at once, so one
# slow engine's installs (up to a minute each) do not hold a healthy node's claim behind them
_BESIDE = ThreadPoolExecutor(32, thread_name_prefix="litefleet-claim")


@contextlib.contextmanager
def _engine(engine_url: str) -> Iterator[None]:
    """Turn "the engine does not answer" (no connection, a timeout) into EngineUnreachable. Errors the engine
    answers with (docker.errors.APIError) are the engine's answer and pass through."""
    try:
        yield
    except requests.exceptions.RequestException as exc:
        raise EngineUnreachable(f"engine {engine_url} does not answer: {type(exc).__name__}") from None


class DockerDriver:
    def __init__(
        self, engine_url: str, *, timeout: float = 60.0, tls: EngineTLS | None = None, insecure: bool = False
    ) -> None:
        self.engine_url, self._tls, self._insecure = engine_url, tls, insecure
        self.client = engine_client(engine_url, tls=tls, insecure=insecure, timeout=timeout)
        self._pinger: docker.DockerClient | None = None

    def ping(self, timeout: float = 3.0) -> None:
        """A heartbeat: a short timeout of its own, so an unreachable node costs seconds, not the API timeout. The
        pinging client is kept (a keep-alive connection: a ping is one request, where a new client per ping cost
        ~5 ms of CPU, 5 s a round over 1,000 nodes); after a failed ping it is dropped and the next one connects
        afresh (an engine that restarted, a connection a partition broke)."""
        try:
            pinger = self._pinger
            if pinger is None:
                version = self.client.api.api_version  # negotiated once
                pinger = engine_client(
                    self.engine_url, tls=self._tls, insecure=self._insecure, timeout=timeout, version=version
                )
                self._pinger = pinger
            pinger.ping()
        except Exception as exc:  # whatever the transport raises (ssh://, TLS): the node is unreachable
            log.debug("engine.ping_failed", engine=self.engine_url, error=type(exc).__name__, exc_info=True)
            dropped, self._pinger = self._pinger, None
            if dropped is not None:
                with contextlib.suppress(Exception):
                    dropped.close()
            raise EngineUnreachable(f"engine {self.engine_url} does not answer") from None

    def runtimes(self) -> list[str]:
        """The OCI runtimes this engine offers (`docker info` Runtimes): what placement matches tenants against."""
        with _engine(self.engine_url):
            return engine_runtimes(self.client.info())

    def ensure_image(self, image: str) -> float:
        """Make sure `image` is on this engine *with the content the control plane built*: copied from the local
        engine when it is missing, and copied again when the node's tag points at other content (image ids are
        content digests; a tag can be moved on a node). Returns the seconds spent copying (0 when it was there).
        Without a local engine to compare with, the node's image is used as it is."""
        with _engine(self.engine_url):
            try:
                found = self.client.images.get(image).id
            except docker.errors.ImageNotFound:
                found = None
            try:
                local = docker.from_env(timeout=600).images.get(image)
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                if found is None:
                    raise
                return 0.0
            if found == local.id:
                return 0.0
            if found is not None:
                log.warning("image.replaced", image=image, engine=self.engine_url, found=found, wanted=local.id)
            started = time.monotonic()
            self.client.images.load(local.save(named=image))
            seconds = round(time.monotonic() - started, 2)
            log.info("image.copied", image=image, engine=self.engine_url, seconds=seconds)
            return seconds

    def run(self, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation:
        """Create and start the incarnation, then deliver its secrets, or return it as it is when a container of
        that name exists (an exited one is reported, not restarted: the caller decides; a running one gets its
        secrets again, same bytes). `complete()` gives `spec` with its secrets (default: `spec` has them); it is
        called once the container started, which waits for the secrets before it does anything (the caller's key
        mint and CURRENT write overlap the network and the container's start). When it raises, the container is
        removed (it holds no secret) and the error raised."""
        with _engine(self.engine_url):
            existing = find_agent(self.client, spec)
            if existing is not None:
                full = spec if complete is None else complete()
                if POOL_LABEL in existing.labels and existing.status == "running":
                    # a claim cut short after its rename: finish it as a claim does (the tenant's network and its
                    # rules first, as its only network, its limits) before the identity goes in again (same bytes)
                    claim_pool(self.client, existing, self._isolated(full), again=True)
                elif complete is not None and existing.status == "running":
                    deliver_secrets(self.client, existing.id, full.secrets())
                return _incarnation(existing)
            with self._reaping(spec.runtime, spec.name, spec.image):
                container = create_agent(self.client, self._isolated(spec))
            try:
                full = spec if complete is None else complete()
            except BaseException:
                self._remove_quietly(container, spec.name)
                raise
            deliver_secrets(self.client, container.id, full.secrets())
            return _incarnation(container)

    def inspect(self, name: str) -> Incarnation | None:
        with _engine(self.engine_url):
            container = self._get(name)
            return None if container is None else _incarnation(container, reload=False)

    def restart(self, name: str, secrets: AgentSecrets) -> Incarnation | None:
        """Start an existing, stopped incarnation again (same container, same volume, same generation) and deliver
        its secrets again: the start emptied its tmpfs. A running one gets them again too (harmless: same bytes),
        which also finishes a start whose delivery was interrupted."""
        return self._started_then(name, lambda container: deliver_secrets(self.client, container.id, secrets))

    def _started_then(self, name: str, deliver: Callable[[Any], None]) -> Incarnation | None:
        """The existing container `name`, started first when it is not running (its network's rules again, a failed
        runsc start reaped), then `deliver` into it (given the container). None when it is gone."""
        with _engine(self.engine_url):
            container = self._get(name)
            if container is None:
                return None
            if container.status != "running":
                self._ensure_isolation(_labels(container))  # a rebooted node kept the network, not the rules
                with self._reaping(_runtime_of(container), name, container.attrs["Config"]["Image"]):
                    container.start()
            deliver(container)
            return _incarnation(container)

    def stop(self, name: str, timeout: float) -> Incarnation | None:
        """SIGTERM, wait up to `timeout` for the drain and final sync, then SIGKILL (docker stop semantics)."""
        with _engine(self.engine_url):
            container = self._get(name)
            if container is None:
                return None
            if container.status in ("running", "restarting", "paused"):
                if _restart_policy(container) != "no":  # a stop must not come back by itself
                    container.update(restart_policy={"Name": "no"})  # (never needed for runsc: it has no `update`)
                container.stop(timeout=int(timeout))
                container.wait(timeout=int(timeout) + 30)
            return _incarnation(container)

    def signal_stop(self, name: str) -> Incarnation | None:
        """SIGTERM a running container without waiting for its exit (`proof.stop_until_proof` waits for its
        record instead); it will not come back by itself. Returns the container as it was before the signal, None
        when it is gone; one that is not running is not signalled (`stop` handles it). Safe to repeat: a stopping
        agent drops a second SIGTERM."""
        with _engine(self.engine_url):
            container = self._get(name)
            if container is None or container.status != "running":
                return None if container is None else _incarnation(container, reload=False)
            before = _incarnation(container, reload=False)  # as signalled (after the kill it may have exited)
            if _restart_policy(container) != "no":  # a stop must not come back by itself
                container.update(restart_policy={"Name": "no"})
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # exited meanwhile (409)
                container.kill(signal="SIGTERM")
            return before

    def remove(self, name: str) -> None:
        """Remove the container and its volume. Docker may still be busy with it (a removal in progress, a
        volume in use by a container being removed): it answers 409 and we try again, for up to a minute."""
        busy: docker.errors.APIError | None = None
        labels: dict[str, str] | None = None  # kept across retries: the container may be gone by the second try
        volumes = {name}
        with _engine(self.engine_url):
            for _ in poll(60, 0.2):
                try:
                    container = self._get(name)
                    if container is not None:
                        labels = _labels(container)
                        # by its id, or a claimed pool container (it keeps the volume of its pool name)
                        volumes |= {m["Name"] for m in container.attrs.get("Mounts", []) if m.get("Name")}
                        with contextlib.suppress(docker.errors.NotFound):
                            container.remove(force=True)
                    for volume in sorted(volumes):
                        with contextlib.suppress(docker.errors.NotFound):
                            self.client.volumes.get(volume).remove(force=True)
                    if labels is not None:
                        self._release_isolation(labels)
                    else:  # removed by an earlier call that stopped before the release: finish it
                        self._release_leftover_networks(name)
                    return
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    busy = exc
        assert busy is not None
        raise busy

    def follower_txid(self, name: str) -> int | None:
        """The last transaction a follower applied to its copy (its `<db>-txid` file, read by exec); None when it
        has applied none yet, is not running, or is gone."""
        with _engine(self.engine_url):
            container = self._get(name)
            if container is None or container.status != "running":
                return None
            status = follower_status(self.client, container.id)
        txid = None if status is None else status.get("txid")
        return txid if isinstance(txid, int) else None

    def promote(self, name: str, secrets: AgentSecrets, txid: int, timeout: float) -> Incarnation | None:
        """Promote a follower: its own secrets and the order to apply up to `txid` and start as the agent (on its
        stdin through an attach when it was created with stdin open, else or when it does not take them there by one
        docker exec). A follower that stopped is started again first (it follows afresh, then takes the order).
        Safe to repeat: same bytes; a promoted agent ignores the order. None when the container is gone."""
        order = Promotion(txid, timeout)

        def deliver(container: Any) -> None:
            opened = bool(container.attrs.get("Config", {}).get("OpenStdin"))
            deliver_promotion(self.client, container.id, secrets, order, attach=opened)

        return self._started_then(name, deliver)

    def limit_memory(self, name: str, memory_mb: int) -> bool:
        """Lower (or raise) a container's memory limit in place: a promoted follower's allowance ends (`docker
        update`, by name: one engine call inside a move's downtime). False when the container is gone. Safe to
        repeat."""
        with _engine(self.engine_url):
            try:
                limit_memory(self.client, name, memory_mb)
            except docker.errors.NotFound:
                return False
            return True

    def list_managed(self, fleet: str | None = None) -> list[Incarnation]:
        """litefleet's containers on this engine (only `fleet`'s, when given), claimed pool containers included."""
        with _engine(self.engine_url):
            found = []
            for kind in (f"{LABEL}.managed=true", f"{POOL_LABEL}=true"):
                labels = [kind] + ([f"{LABEL}.fleet={fleet}"] if fleet else [])
                found += self.client.containers.list(all=True, filters={"label": labels})
            fetched = (container for container in found if not container.name.startswith(POOL_PREFIX))
            return [_incarnation(container, reload=False) for container in fetched]

    # -- the warm pool (agent_image/container/pool.py) -------------------------------------------------------------

    def start_pool(self, spec: PoolSpec) -> PoolMember:
        """Create and start one pool container (its name is new each time: refilling twice makes two, which the
        refill's count absorbs; it never duplicates an incarnation)."""
        with _engine(self.engine_url):
            return self._member(run_pool(self.client, spec))

    def list_pool(self, fleet: str) -> list[PoolMember]:
        """The fleet's unclaimed pool containers on this node (a claimed one is an incarnation: `list_managed`)."""
        with _engine(self.engine_url):
            labels = [f"{POOL_LABEL}=true", f"{LABEL}.fleet={fleet}"]
            containers = self.client.containers.list(all=True, filters={"label": labels})
            members = [self._member(c) for c in containers if c.name.startswith(POOL_PREFIX)]
            return sorted(members, key=lambda member: member.name)

    def _member(self, container: Any) -> PoolMember:
        """A pool container; its image is named `<tag> (outdated)` when the node's tag now points at other content
        (`ensure_image` copied a new build under the same tag): the refill replaces it, a claim passes it over."""
        member = _member(container)
        try:
            current = self.client.images.get(member.image).id
        except docker.errors.ImageNotFound:
            current = None
        if container.attrs.get("Image") != current:
            return dataclasses.replace(member, image=f"{member.image} (outdated)")
        return member

    def claim(self, name: str, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation | None:
        """Make the running pool container `name` the NEW incarnation `spec` (no restore: its volume is empty), or
        answer None when it cannot serve (gone, stopped, another image or runtime, taken meanwhile): the caller then
        starts the incarnation cold. A claim that fails halfway removes the container (it may hold a half-made
        identity) and answers None; when `complete()` raises, the container is removed and the error raised.
        `complete()` gives `spec` with its secrets (default: `spec` has them). It is called only once the container
        is on its network with its limits, just before the identity goes in: the caller's key mint and CURRENT write
        overlap the network move. When the tenant's network cannot be made, the container is removed and the error
        raised, as when `complete()` raises.
        Safe to repeat: when `spec`'s incarnation exists it is returned as it is."""
        if not spec.claimable:
            return None
        with _engine(self.engine_url), contextlib.ExitStack() as closing:
            started = time.monotonic()
            isolated, created, rules = self._network_for_claim(spec)  # beside the checks, the rename, the limits
            for future in (rules, created):
                if future is not None:
                    closing.callback(future.exception)  # never leave before the helper's exec ended
            existing = find_agent(self.client, spec)
            if existing is not None:
                return _incarnation(existing)
            container = self._get(name)
            if (
                container is None
                or POOL_LABEL not in container.labels
                or not container.name.startswith(POOL_PREFIX)
                or container.status != "running"
                or self._member(container).image != spec.image  # the tag's current content only
            ):
                return None

            def network() -> None:
                if created is not None:
                    try:
                        created.result()
                    except BaseException as exc:  # the container holds the claim's name: it is removed
                        raise _SecretsFailed(exc) from exc

            def ready() -> AgentSpec:  # the tenant's rules are in place before anything of the tenant's runs
                if rules is not None:
                    rules.result()
                return spec if complete is None else complete()

            try:
                seconds = claim_pool(
                    self.client, container, isolated, _Completed(ready), pool_name=name, network_made=network
                )
            except PoolMemberTaken as exc:  # not ours to remove: another claim has it, or it is left as it was
                log.info("pool.taken", container=name, incarnation=spec.name, error=str(exc)[:300])
                existing = find_agent(self.client, spec) if exc.name_taken else None
                return None if existing is None else _incarnation(existing)  # the incarnation made meanwhile
            except _SecretsFailed as failed:  # no tenant network, or no key: it holds no identity, nothing is lost
                self._remove_quietly(container, spec.name)
                raise failed.error from None
            except (docker.errors.APIError, SecretsNotDelivered) as exc:
                log.warning("pool.claim_failed", container=name, incarnation=spec.name, error=str(exc)[:300])
                self._remove_if_named(container, spec.name)
                return None
            log.info(
                "pool.claimed",
                container=name,
                incarnation=spec.name,
                engine=self.engine_url,
                seconds=round(time.monotonic() - started, 3),
                **seconds,
            )
            return _incarnation(container)

    # -- tenant network isolation (control_plane/drivers/network.py) ----------------------------------------------

    def _isolated(self, spec: AgentSpec) -> AgentSpec:
        """`spec` attached to its tenant's own network, after that network and its rules are in place on this node
        (unchanged when it asks for no isolation)."""
        if spec.isolation is None:
            return spec
        network = TenantNetwork(spec.fleet, spec.tenant)
        ensure_tenant_network(self.client, network, spec.isolation, self._helper())
        return dataclasses.replace(spec, network=network.name)

    def _network_for_claim(self, spec: AgentSpec) -> tuple[AgentSpec, Future[None] | None, Future[None] | None]:
        """As `_isolated`, for a claim: the network is created on a thread (the first future) while the claim checks
        and renames the pool container, and its rules are installed after it on another (the second) while the
        container moves onto it. The container runs nothing of the tenant's until the claim's identity goes in,
        which waits for the rules (fail closed: an IsolationFailed removes it)."""
        if spec.isolation is None:
            return spec, None, None
        network = TenantNetwork(spec.fleet, spec.tenant)
        isolation = spec.isolation
        created = _BESIDE.submit(create_tenant_network, self.client, network, isolation)

        def install() -> None:
            helper = self._helper()
            created.result()
            install_tenant_rules(self.client, network, isolation, helper)

        return dataclasses.replace(spec, network=network.name), created, _BESIDE.submit(install)

    def _ensure_isolation(self, labels: dict[str, str]) -> None:
        raw = labels.get(ISOLATION_LABEL)
        if raw:  # "": a claimed container on a network made before networks carried their isolation
            network = TenantNetwork(labels.get(f"{LABEL}.fleet", ""), labels.get(f"{LABEL}.tenant", ""))
            ensure_tenant_network(self.client, network, Isolation.from_label(raw), self._helper())

    def _release_isolation(self, labels: dict[str, str]) -> None:
        """After a removal: the tenant's network and rules go when this was its last container on the node."""
        if ISOLATION_LABEL in labels:
            network = TenantNetwork(labels.get(f"{LABEL}.fleet", ""), labels.get(f"{LABEL}.tenant", ""))
            release_tenant_network(self.client, network, self._helper())

    def _release_leftover_networks(self, name: str) -> None:
        """Release the networks of the tenant named in `name` (`lf-<tenant>-<agent>-g<gen>`) that no container of
        theirs uses any more. Only networks litefleet created carry these labels; a name of another shape is skipped."""
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != "lf":
            return
        tenant = "-".join(parts[1:-2])
        labels = [f"{LABEL}.managed-network=true", f"{LABEL}.tenant={tenant}"]
        for found in self.client.networks.list(filters={"label": labels}):
            network = TenantNetwork(found.attrs.get("Labels", {}).get(f"{LABEL}.fleet", ""), tenant)
            if network.name == found.name:
                release_tenant_network(self.client, network, self._helper())

    def _helper(self) -> str:
        """The network helper image on this node: built on the local engine once, copied like the agent image."""
        tag = build_helper_image(docker.from_env(timeout=600))
        self.ensure_image(tag)
        return tag

    @contextlib.contextmanager
    def _reaping(self, runtime: str, name: str, image: str) -> Iterator[None]:
        """A runsc start the engine refused leaks the sandbox on the node (drivers/runtimes.py): reap it, and
        remove the never-started container (the caller's retry creates it afresh), then raise the engine's error."""
        try:
            yield
        except docker.errors.APIError:
            if runtime == Runtime.runsc and reap_failed_start(self.client, name, image):
                log.warning("runsc.start_failed", container=name, engine=self.engine_url, reaped=True)
            raise

    def _remove_quietly(self, container: Any, name: str) -> None:
        """`_remove_if_named` on the way out of a failure: its own failure is logged, the failure is what is raised."""
        try:
            self._remove_if_named(container, name)
        except Exception as exc:
            log.warning("agent.remove_failed", container=name, engine=self.engine_url, error=str(exc)[:300])

    def _remove_if_named(self, container: Any, name: str) -> None:
        """Remove a claim's container that failed halfway (it may hold a half-made identity), only while it is
        under the claim's name: under another, another claim has it (and its agent may serve)."""
        with contextlib.suppress(docker.errors.APIError):
            container.reload()
            if container.name == name:
                self.remove(container.id)

    def _get(self, name: str) -> Any | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None


class _SecretsFailed(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Completed:
    """A claim's complete spec, asked for when the claim is sent (`DockerDriver.claim`); a failure to make it (the
    key mint, CURRENT) is told apart from a failed delivery."""

    def __init__(self, make: Callable[[], AgentSpec]) -> None:
        self.make = make

    def __call__(self) -> AgentSpec:
        try:
            return self.make()
        except Exception as exc:
            raise _SecretsFailed(exc) from exc


def _restart_policy(container: Any) -> str:
    return str((container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no")


def _runtime_of(container: Any) -> str:
    return str(container.attrs.get("HostConfig", {}).get("Runtime") or Runtime.runc.value)


def _exit_code(container: Any) -> int | None:
    state = container.attrs.get("State", {})
    return None if state.get("Running") else state.get("ExitCode")


def _labels(container: Any) -> dict[str, str]:
    """The container's litefleet labels; for a claimed pool container, the ones it would carry had it been created
    for its incarnation (identity from its name, isolation from its tenant network's labels)."""
    labels = dict(container.labels)
    parsed = parse_incarnation_name(container.name)
    if POOL_LABEL not in labels or parsed is None:
        return labels
    tenant, agent, generation = parsed
    labels |= {f"{LABEL}.tenant": tenant, f"{LABEL}.agent": str(agent), f"{LABEL}.generation": str(generation)}
    network = TenantNetwork(labels.get(f"{LABEL}.fleet", ""), tenant)
    if network.name in (container.attrs.get("NetworkSettings", {}).get("Networks") or {}):
        labels[ISOLATION_LABEL] = _network_isolation(container.client, network.name)
    return labels


def _network_isolation(client: Any, name: str) -> str:
    try:
        return str(client.networks.get(name).attrs.get("Labels", {}).get(ISOLATION_LABEL, ""))
    except docker.errors.NotFound:
        return ""


def _member(container: Any) -> PoolMember:
    container.reload()
    return PoolMember(name=container.name, image=str(container.attrs["Config"]["Image"]), status=container.status)


def _incarnation(container: Any, *, reload: bool = True) -> Incarnation:
    """What the engine says of `container`, read again first (`reload=False`: it was fetched just now: `_get`,
    `containers.list`, one engine call fewer)."""
    if reload:
        container.reload()
    labels = _labels(container)
    url = agent_url(container, reload=False) if container.status == "running" else None
    return Incarnation(
        name=container.name,
        tenant=labels.get(f"{LABEL}.tenant", ""),
        agent=int(labels.get(f"{LABEL}.agent", -1)),
        generation=int(labels.get(f"{LABEL}.generation", 0)),
        status=container.status,
        exit_code=_exit_code(container),
        url=url,
    )
