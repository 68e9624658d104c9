"""The control plane's hands: start, stop and remove one agent incarnation, each step safe to repeat.

An incarnation is (tenant, ordinal, generation) on one node. The order is always the fence's: CURRENT moves to
g before generation g starts, the old incarnation is stopped (its final sync proven) before the new one starts,
and the old container goes only after the new one is ready."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from agent_image.contract import EXIT_REPLICA_CORRUPT
from control_plane.db.models import Agent, AgentState, Node, Tenant
from control_plane.drivers.agent_http import AgentApi, AgentHttp, AgentNotReady, wait_ready
from control_plane.drivers.agent_spec import AgentSpec, SecretsNotDelivered, incarnation_name
from control_plane.drivers.base import Driver, EngineUnreachable, Incarnation
from control_plane.drivers.network import IsolationFailed, tenant_isolation
from control_plane.drivers.runtimes import updates_in_place
from control_plane.errors import OperationFailed, ReplicaCorrupt
from control_plane.fleet import pool
from control_plane.fleet.fence import advance_current, fence_out, retreat_current
from control_plane.fleet.placement import choose_node, node_loads
from control_plane.fleet.proof import stop_until_proof
from control_plane.fleet.steps import StepLog
from control_plane.pki import credential_set
from control_plane.settings import Settings
from control_plane.storage.credentials import TenantCredentials
from control_plane.storage.ports import CredentialStore, ReplicaStore
from control_plane.timing import poll


@dataclass
class Fleet:
    engine: Engine
    settings: Settings
    storage: ReplicaStore
    credentials: CredentialStore
    make_driver: Callable[[str], Driver] | None = None  # None: a DockerDriver with the node's credentials
    agents_api: AgentApi = field(default_factory=AgentHttp)
    _drivers: dict[str, Driver] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # a follower's key, kept (in memory only) for its promotion: minting one is a `weed shell` session, which
    # would otherwise fall inside the move's downtime
    _follower_keys: dict[tuple[str, int, int], TenantCredentials] = field(default_factory=dict)

    # -- reads ------------------------------------------------------------------------------------------------------

    def driver(self, node: Node) -> Driver:
        """The node's driver, made on first use. Made outside the lock: a DockerDriver asks its engine for its API
        version, and a heartbeat round that meets 1,000 new nodes (a restarted control plane) must not make them
        one after another (~5 ms each, past the ping timeout). Two threads racing for a new node may each make
        one; the first kept wins."""
        key = f"{node.engine_url} {node.tls} {node.insecure}"  # re-registered with other credentials: new driver
        with self._lock:
            found = self._drivers.get(key)
        if found is None:
            made = self._new_driver(node)
            with self._lock:
                found = self._drivers.setdefault(key, made)
        return found

    def _new_driver(self, node: Node) -> Driver:
        if self.make_driver is not None:  # tests: one fake engine per URL
            return self.make_driver(node.engine_url)
        from control_plane.drivers import DockerDriver  # on first use: the SDK's import is most of a start

        tls = credential_set(self.settings.engine_pki_dir, node.tls)
        return DockerDriver(node.engine_url, tls=tls, insecure=node.insecure)

    def node(self, name: str) -> Node:
        with Session(self.engine) as session:
            node = session.get(Node, name)
            if node is None:
                raise OperationFailed(f"node {name} is not registered")
            return node

    def tenant(self, name: str) -> Tenant:
        with Session(self.engine) as session:
            tenant = session.get(Tenant, name)
            if tenant is None:
                raise OperationFailed(f"tenant {name} does not exist")
            return tenant

    def agents(self, tenant: str) -> list[Agent]:
        with Session(self.engine) as session:
            return list(session.exec(select(Agent).where(Agent.tenant == tenant).order_by(col(Agent.ordinal))))

    def agent(self, tenant: str, ordinal: int) -> Agent:
        with Session(self.engine) as session:
            agent = session.get(Agent, f"{tenant}/{ordinal}")
            if agent is None:
                agent = Agent(id=f"{tenant}/{ordinal}", tenant=tenant, ordinal=ordinal)
                session.add(agent)
                session.commit()
                session.refresh(agent)
            return agent

    def place(self, tenant: Tenant, exclude: AbstractSet[str] = frozenset()) -> Node:
        """A node for one more agent of `tenant`. Placed agents count (running, starting, stopping), and so do the
        places unfinished operations reserved for agents that have not started there yet, and each node's warm
        pool (`node_loads`). The caller records its choice with `placement.reserve`, which checks it again."""
        with Session(self.engine) as session:
            loads = node_loads(session, tenant.name)
        return choose_node(loads.values(), tenant.name, tenant.memory_mb, exclude, runtime=tenant.runtime)

    def forget_unplaced(self, tenant: str, ordinal: int) -> None:
        """Delete the agent's row if it was never placed (generation 0, no node): what `agent()` made for an
        ordinal whose start then found no node must not stay behind as a `starting` agent. Safe to re-run: a row
        that is gone or was placed meanwhile is left as it is."""
        with Session(self.engine) as session:
            agent = session.get(Agent, f"{tenant}/{ordinal}")
            if agent is not None and agent.generation == 0 and agent.node is None:
                session.delete(agent)
                session.commit()

    def set_agent(self, tenant: str, ordinal: int, **values: Any) -> None:
        with Session(self.engine) as session:
            agent = session.get(Agent, f"{tenant}/{ordinal}")
            if agent is None:
                agent = Agent(id=f"{tenant}/{ordinal}", tenant=tenant, ordinal=ordinal)
            for key, value in values.items():
                setattr(agent, key, value)
            agent.updated_at = time.time()
            session.add(agent)
            session.commit()

    # -- incarnations -----------------------------------------------------------------------------------------------

    def start(
        self,
        ctx: StepLog,
        tenant: Tenant,
        ordinal: int,
        generation: int,
        node: Node,
        restore_from: int | None,
        *,
        replicated: bool = True,
    ) -> float:
        """Run generation `generation` of the agent on `node` until it is ready and (with `replicated`, the default)
        its replica holds a transaction; returns the seconds from container start to ready. `restore_from` is
        replaced by the newest earlier generation with a replica when its own replica is empty (`restore_source`).

        Re-running is safe: CURRENT only ever moves forward to `generation`; an existing container of that
        incarnation is reused (started again if it stopped), not duplicated; the agent row is written last.

        A new agent writes CURRENT, its key and its row on a thread of its own while a warm pool container moves to
        the tenant's network, or a cold one is created and started: the claim, or the start, asks for them
        (`complete`) before the container gets its identity or its secrets, and the agent does nothing before it
        has them, so CURRENT still moves before the agent starts, and every start waits for them.
        """
        if tenant.runtime not in (node.runtimes or []):  # an explicit target (evacuate --to) that lacks it
            raise OperationFailed(f"node {node.name} has no {tenant.runtime} runtime for tenant {tenant.name}")
        if restore_from is not None:
            found = self.restore_source(tenant.name, ordinal, restore_from)
            if found != restore_from:
                ctx.step(
                    "agent.restore_source",
                    f"gen {restore_from}'s replica is empty (it served before its first replica): "
                    f"gen {generation} restores gen {found}'s",
                    agent=ordinal,
                    generation=found,
                )
                restore_from = found

        def fence() -> tuple[TenantCredentials, str, str]:
            return self._take_generation(tenant.name, ordinal, generation, node)

        with ThreadPoolExecutor(1, thread_name_prefix="litefleet-fence") as beside:  # its exit waits for the fence
            fenced = beside.submit(fence) if restore_from is None else None
            done = None if fenced is not None else fence()

            def complete() -> AgentSpec:
                found = done if fenced is None else fenced.result()
                assert found is not None
                creds, agent_token, admin_token = found
                return self._spec(tenant, ordinal, generation, node, restore_from, creds, agent_token, admin_token)

            return self._started(
                ctx, tenant, ordinal, generation, node, restore_from, fenced is not None, complete, replicated
            )

    def _started(
        self,
        ctx: StepLog,
        tenant: Tenant,
        ordinal: int,
        generation: int,
        node: Node,
        restore_from: int | None,
        fenced_beside: bool,
        complete: Callable[[], AgentSpec],
        replicated: bool,
    ) -> float:
        """`start` once CURRENT, the key and the row are written or being written (`complete()` waits for them)."""
        driver = self.driver(node)
        copied = driver.ensure_image(self.settings.image)
        if copied:
            ctx.step("image.copied", f"agent image copied to {node.name} in {copied}s", node=node.name)
        name = incarnation_name(tenant.name, ordinal, generation)
        started = time.monotonic()
        incarnation = driver.inspect(name)
        try:
            claimed = created = None
            if fenced_beside and incarnation is None:  # a new agent: its key and CURRENT are being made meanwhile
                unkeyed = TenantCredentials(tenant.name, "", "")  # `complete()` brings the key, at the claim's end
                skeleton = self._spec(tenant, ordinal, generation, node, restore_from, unkeyed, "", "")
                if self.settings.warm_pool_size:  # a warm container takes its identity and secrets
                    claimed = pool.claim(driver, skeleton, complete)
                if claimed is None:  # cold: created and started, its secrets delivered once `complete()` has them
                    created = driver.run(skeleton, complete)
            spec = complete()
            agent_token = spec.agent_token
            if claimed is not None:
                incarnation = claimed
                ctx.step(
                    "agent.claimed", f"gen {generation} claimed a warm pool container", agent=ordinal, node=node.name
                )
            elif created is not None:
                incarnation = created
            elif incarnation is None:
                incarnation = driver.run(spec)  # creates, starts and delivers the secrets
            elif incarnation.status != "running":
                # the incarnation stopped outside an operation (a crash, `docker stop`): its volume holds the newest
                # state and CURRENT still names it, so start the same container again (secrets delivered again)
                driver.restart(name, spec.secrets())
                ctx.step(
                    "agent.restarted",
                    f"gen {generation} was {incarnation.status} (exit {incarnation.exit_code}); started it again",
                    agent=ordinal,
                    node=node.name,
                )
            else:
                # running: a re-run of this start, maybe after a crash between `run` and the delivery (same bytes),
                # or between a pool container's rename and its claim (`run` sends the claim again, then)
                driver.run(spec)
                driver.restart(name, spec.secrets())
        except (SecretsNotDelivered, IsolationFailed) as exc:
            raise OperationFailed(str(exc)) from None
        url = self._wait_ready(driver, incarnation, agent_token, replicated=replicated)
        seconds = round(time.monotonic() - started, 3)
        self.set_agent(tenant.name, ordinal, state=AgentState.running, url=url)
        source = f"restored from gen-{restore_from}" if restore_from else "new database"
        ctx.step(
            "agent.started",
            f"gen {generation} ready on {node.name} in {seconds}s ({source})",
            agent=ordinal,
            node=node.name,
            generation=generation,
            seconds=seconds,
        )
        return seconds

    def restore_source(self, tenant: str, ordinal: int, generation: int) -> int:
        """The generation a successor of `generation` restores from: `generation` itself when its replica holds a
        transaction, else the newest earlier one whose replica does (`generation` when none does: the start then
        fails on the missing replica, as before, rather than starting empty).

        An empty replica means `generation` never completed its first sync: a moved agent is routed once ready
        and replicates after (`promote`, `runners/move.py` `move`), and its node may be lost in between. Its
        predecessor's replica holds everything the predecessor committed (the move proved its final sync before
        the cutover) and so everything the empty generation started from; what that generation acknowledged
        before its node was lost is inside the fail-over's loss window (invariant 3). Reads only: safe to repeat."""
        for candidate in (generation, generation - 1):  # one step back is what a move leaves; no older gap is ours
            if candidate >= 1 and self.storage.replica_txid(tenant, ordinal, candidate) >= 1:
                return candidate
        return generation

    # -- warm moves: a follower first, promoted after the source's proven stop -------------------------------------

    def follow(self, ctx: StepLog, tenant: Tenant, ordinal: int, generation: int, node: Node, source: int) -> None:
        """Create generation `generation` on `node` as a *follower* of generation `source`'s replica while `source`
        still serves. Nothing the fence guards moves: CURRENT and the agent row are left alone (the row still names
        `source`), the follower's key can write only its own, still empty, gen path and it writes nothing before
        its promotion; its tokens are throw-away (it serves nothing), the promotion delivers the real ones.

        Re-running is safe: a follower that runs is reused (found by its name); one that stopped is removed and
        created afresh (it held only a copy)."""
        if tenant.runtime not in (node.runtimes or []):
            raise OperationFailed(f"node {node.name} has no {tenant.runtime} runtime for tenant {tenant.name}")
        driver = self.driver(node)
        name = incarnation_name(tenant.name, ordinal, generation)
        found = driver.inspect(name)
        if found is not None and found.status == "running":
            return
        if found is not None:
            driver.remove(name)
        copied = driver.ensure_image(self.settings.image)
        if copied:
            ctx.step("image.copied", f"agent image copied to {node.name} in {copied}s", node=node.name)
        creds = self.credentials.issue_incarnation(tenant.name, ordinal, generation)
        with self._lock:
            self._follower_keys[(tenant.name, ordinal, generation)] = creds
        spec = self._spec(
            tenant, ordinal, generation, node, source, creds, secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        )
        spec = dataclasses.replace(
            spec,
            follow=True,
            follow_interval=self.settings.warm_follow_interval,
            follower_memory_mb=self._follower_allowance_mb(tenant),
        )
        try:
            driver.run(spec)
        except (SecretsNotDelivered, IsolationFailed) as exc:
            raise OperationFailed(str(exc)) from None
        ctx.step("agent.following", f"gen {generation} follows gen {source} on {node.name}", agent=ordinal)

    def catch_up(self, ctx: StepLog, tenant: str, ordinal: int, generation: int, node: Node, source: int) -> int:
        """Wait (up to `warm_catchup_timeout`) until the follower applied what `source`'s replica held when the wait
        began; returns the txid it applied. Raises OperationFailed when it does not, ReplicaCorrupt when the
        follower's rebuilt copy failed its integrity check. Re-running only waits again."""
        target = self.storage.replica_txid(tenant, ordinal, source)
        driver = self.driver(node)
        name = incarnation_name(tenant, ordinal, generation)
        started, applied = time.monotonic(), None
        for _ in poll(self.settings.warm_catchup_timeout, 0.1):
            applied = driver.follower_txid(name)
            if applied is not None and applied >= target:
                seconds = round(time.monotonic() - started, 3)
                ctx.step(
                    "agent.caught_up",
                    f"gen {generation} follower at txid {applied} (replica of gen {source}: {target}) in {seconds}s",
                    agent=ordinal,
                    txid=applied,
                    seconds=seconds,
                )
                return applied
            found = driver.inspect(name)
            if found is not None and found.exit_code == EXIT_REPLICA_CORRUPT:
                raise ReplicaCorrupt(
                    f"gen {source}'s replica fails its integrity check (rebuilt by follower {name}); gen {source} "
                    "keeps serving from its own database: check it and the replica before moving it"
                )
            if found is None or found.status != "running":
                status = "gone" if found is None else f"{found.status} (exit {found.exit_code})"
                raise OperationFailed(f"follower {name} is {status}")
        raise OperationFailed(
            f"follower {name} applied txid {applied}, not gen {source}'s {target}, within "
            f"{self.settings.warm_catchup_timeout:g}s"
        )

    def promote(
        self, ctx: StepLog, tenant: Tenant, ordinal: int, generation: int, node: Node, source: int, txid: int
    ) -> float:
        """Make the follower generation `generation` of the agent, after `source` stopped with its final sync proven
        at `txid`: CURRENT moves to `generation` first (the fence: the follower checks it before it writes), then its
        own secrets and the promotion go through docker exec; it applies the tail up to `txid` and starts
        replicating to its own path. Returns seconds from the promotion to ready: ready, not replicated (the row
        says `running` and the router sends it requests before its first snapshot reached `gen-<generation>/`;
        the caller waits for that with `await_replica`, see `runners/move.py` `move` for why this is safe). A
        follower that is gone (its node restarted, removed by hand) is replaced by a cold start, which is as safe
        at this point.

        Re-running is safe: CURRENT only moves forward to `generation`; the secrets are the row's (the same on a
        re-run); a promoted follower ignores a repeated order; the row is written `running` last."""
        name = incarnation_name(tenant.name, ordinal, generation)
        driver = self.driver(node)
        fenced = time.monotonic()
        creds, agent_token, admin_token = self._take_generation(tenant.name, ordinal, generation, node)
        spec = self._spec(tenant, ordinal, generation, node, source, creds, agent_token, admin_token)
        started = time.monotonic()
        try:
            incarnation = driver.promote(name, spec.secrets(), txid, self.settings.warm_promote_timeout)
        except (SecretsNotDelivered, IsolationFailed) as exc:
            raise OperationFailed(str(exc)) from None
        if incarnation is None:  # asked in the same engine call as the promotion: no inspect of its own first
            ctx.step("agent.follower_gone", f"gen {generation} follower is gone: cold start", agent=ordinal)
            return self.start(ctx, tenant, ordinal, generation, node, source, replicated=False)
        # the promotion returned once the follower's restore exited: its memory allowance ends now, beside the
        # entrypoint's fence check and Litestream start; the follower runs no tenant code before its cgroup shows
        # the lowered limit (`SERVING_MEMORY_MB`), so /readyz is awaited meanwhile. A limit that was not lowered
        # fails the move (the follower never serves: it gives up waiting and exits)
        ordered = time.monotonic()
        with ThreadPoolExecutor(1, thread_name_prefix="litefleet-limit") as beside:
            lowered = beside.submit(self._end_allowance_before_serving, ctx, tenant, ordinal, generation, node)

            def limited() -> None:  # a limit that failed ends the wait at once
                if lowered.done():
                    lowered.result()

            try:
                url = self._wait_ready(driver, incarnation, agent_token, replicated=False, check=limited)
            finally:
                lowered.result()  # raises OperationFailed when the limit could not be lowered: before the row
        seconds = round(time.monotonic() - started, 3)
        self.set_agent(tenant.name, ordinal, state=AgentState.running, url=url)
        ctx.step(
            "agent.promoted",
            f"gen {generation} promoted on {node.name} in {seconds}s (gen {source} closed at txid {txid})",
            agent=ordinal,
            node=node.name,
            generation=generation,
            seconds=seconds,
            txid=txid,
            current_s=round(started - fenced, 3),  # CURRENT, the row's secrets
            order_s=round(ordered - started, 3),  # the promotion (attach, else exec): the tail, the check
            ready_s=round(time.monotonic() - ordered, 3),  # the agent's start, the limit lowered beside it
            limit_s=lowered.result(),
        )
        return seconds

    def _end_allowance_before_serving(
        self, ctx: StepLog, tenant: Tenant, ordinal: int, generation: int, node: Node
    ) -> float:
        """`end_follower_allowance` of a promotion (a refusal fails the move); the seconds it took."""
        began = time.monotonic()
        self.end_follower_allowance(ctx, tenant, ordinal, generation, node, before_serving=True)
        return round(time.monotonic() - began, 3)

    def end_follower_allowance(
        self, ctx: StepLog, tenant: Tenant, ordinal: int, generation: int, node: Node, *, before_serving: bool = False
    ) -> None:
        """Lower a promoted follower's memory limit to its tenant's (`docker update`): its `restore -f` had the
        `warm_follower_memory_mb` allowance on top, and has exited once the promotion returned. A limit that cannot
        be lowered `before_serving` (the promotion, before the router switches) fails the move, which rolls back:
        the source serves again rather than tenant code keeping the allowance (fail closed). On a re-run after the
        new generation served, it is reported only. Re-running sets the same limit again."""
        if not self._follower_allowance_mb(tenant):
            return
        name = incarnation_name(tenant.name, ordinal, generation)
        try:
            self.driver(node).limit_memory(name, tenant.memory_mb)
        except Exception as exc:
            if before_serving:
                raise OperationFailed(
                    f"gen {generation}'s follower memory allowance could not be lowered: {exc}"
                ) from None
            ctx.step(  # a move that served already is not failed over one update
                "agent.memory_not_lowered",
                f"gen {generation} keeps its follower's memory allowance: {type(exc).__name__}: {exc}",
                agent=ordinal,
                node=node.name,
            )

    def _follower_allowance_mb(self, tenant: Tenant) -> int:
        """A follower's memory on top of its agent's: `warm_follower_memory_mb`, or none when the tenant's runtime
        cannot lower a running container's limit (runsc), as tenant code would otherwise keep it."""
        return self.settings.warm_follower_memory_mb if updates_in_place(tenant.runtime) else 0

    def await_replica(self, ctx: StepLog, tenant: str, ordinal: int, generation: int, node: Node) -> float:
        """Wait (up to `ready_timeout`) until the running incarnation's replica holds a transaction (its first
        snapshot reached `gen-<generation>/`); returns the seconds waited. Raises OperationFailed when it does not
        (the incarnation keeps serving). Re-running only asks again."""
        agent = self.agent(tenant, ordinal)
        if agent.generation != generation or agent.agent_token is None:
            raise OperationFailed(f"{tenant}/{ordinal} is not gen {generation} any more: no replica to wait for")
        driver = self.driver(node)
        name = incarnation_name(tenant, ordinal, generation)
        incarnation = driver.inspect(name)
        if incarnation is None:
            raise OperationFailed(f"{name} is gone before its first replica")
        started = time.monotonic()
        first = None if incarnation.url is None else self.agents_api.readyz(incarnation.url, agent.agent_token)
        self._wait_ready(driver, incarnation, agent.agent_token, replicated=True)
        seconds = round(time.monotonic() - started, 3)
        ctx.step(
            "agent.replicated",
            f"gen {generation}'s first replica is in the store ({seconds}s after it was routed)",
            agent=ordinal,
            generation=generation,
            seconds=seconds,
            # routed while its replica was still empty (the first snapshot may also beat the agent's start)
            routed_unreplicated=first is not None and not first.replicated,
        )
        return seconds

    def stop(self, ctx: StepLog, agent: Agent, *, drain: bool, until_proof: bool = False) -> dict[str, Any]:
        """Stop the agent's current incarnation with a proven final sync and return its shutdown record.
        `until_proof` (a move's cutover): return once the stop's new record is in the store, while the container
        may still be exiting (`proof.stop_until_proof`); else once the container exited.

        Re-running is safe: an exited container is not stopped again; the record in object storage is the proof,
        and it is checked against the replica's newest transaction every time."""
        if agent.node is None or agent.generation == 0:
            raise OperationFailed(f"agent {agent.id} has no incarnation to stop")
        node = self.node(agent.node)
        driver = self.driver(node)
        name = incarnation_name(agent.tenant, agent.ordinal, agent.generation)
        self.set_agent(agent.tenant, agent.ordinal, state=AgentState.stopping)
        if drain and agent.url:
            self._drain(ctx, agent)
        began = time.monotonic()
        incarnation = (agent.tenant, agent.ordinal, agent.generation)
        try:
            if until_proof:
                stopped, record = stop_until_proof(driver, self.storage, name, incarnation, self.settings.stop_timeout)
            else:
                stopped = driver.stop(name, timeout=self.settings.stop_timeout)
        except EngineUnreachable as exc:
            raise OperationFailed(f"cannot stop {name}: {exc}") from None
        exited = time.monotonic()
        if until_proof:  # the record was read once it appeared: the replica is final from then on
            replica_txid = self.storage.replica_txid(*incarnation)
        else:
            with ThreadPoolExecutor(max_workers=1) as beside:  # the container exited: both reads are final, at once
                listed = beside.submit(self.storage.replica_txid, *incarnation)
                record = self.storage.read_shutdown(*incarnation)
                replica_txid = listed.result()
        if record is None or not record.get("proven"):
            why = "no shutdown record" if record is None else record.get("error")
            exit_code = None if stopped is None else stopped.exit_code
            raise OperationFailed(f"final sync of {name} not proven ({why}; exit code {exit_code})")
        if replica_txid < int(record["txid"]):
            raise OperationFailed(
                f"replica of {name} ends at txid {replica_txid}, the agent closed at {record['txid']}"
            )
        ctx.step(
            "agent.stopped",
            f"gen {agent.generation} stopped, replica holds txid {record['txid']}",
            agent=agent.ordinal,
            node=agent.node,
            generation=agent.generation,
            txid=record["txid"],
            stop_s=round(exited - began, 3),  # SIGTERM, drain, final sync, the record (the exit, unless until_proof)
            proof_s=round(time.monotonic() - exited, 3),  # the shutdown record against the replica
        )
        return record

    def finish_stop(self, ctx: StepLog, tenant: str, ordinal: int, generation: int, node_name: str) -> None:
        """After a move's cutover: the source's container, whose stop returned on its proof (`until_proof`), is
        stopped for good (`docker stop`: a no-op once it exited, SIGKILL `stop_timeout` after SIGTERM otherwise), so
        a source that wrote its record and did not exit (tenant code can write its own record) is bounded as before.
        An engine that does not answer is left to the removal. Re-running is a no-op."""
        try:
            stopped = self.driver(self.node(node_name)).stop(
                incarnation_name(tenant, ordinal, generation), self.settings.stop_timeout
            )
        except EngineUnreachable:
            return
        if stopped is not None and stopped.exit_code not in (None, 0):
            ctx.step(
                "agent.source_stopped",
                f"gen {generation} exited {stopped.exit_code} after its proof",
                agent=ordinal,
                node=node_name,
            )

    def reinstate(
        self,
        ctx: StepLog,
        tenant: Tenant,
        ordinal: int,
        generation: int,
        node: Node,
        abandoned: tuple[int, str] | None = None,
    ) -> float:
        """Start generation `generation` again in place: the same container and volume on `node` (its database
        holds everything it committed, replicated or not), after the `abandoned` (generation, node) successor a
        failed move may have begun is removed, its key revoked and CURRENT given back. Returns seconds to ready.

        Re-running is safe: removing a removed container and revoking a revoked key are no-ops, CURRENT steps back
        only from the abandoned generation, stopping a stopped container is a no-op, and `start` reuses the existing
        container."""
        if abandoned is not None and abandoned[0] != generation:
            successor, where = abandoned
            # a successor left running on an engine that does not answer sees CURRENT move away, has no key: it stops
            with contextlib.suppress(EngineUnreachable):
                self.driver(self.node(where)).remove(incarnation_name(tenant.name, ordinal, successor))
            fence_out(self.credentials, tenant.name, ordinal, successor)
            # it never served (never `running`): its replica holds nothing the old one lacks, and a retry that
            # reuses its number must restore the old generation, not this one (the entrypoint tries its own first)
            self.storage.purge_generation(tenant.name, ordinal, successor)
            retreat_current(self.storage, tenant.name, ordinal, successor, generation)
        agent = self.agent(tenant.name, ordinal)
        if agent.generation != generation:  # the row names the successor, with its keys: forget them
            self.set_agent(
                tenant.name, ordinal, generation=generation, access_key=None, secret_key=None, agent_token=None
            )
        self.set_agent(tenant.name, ordinal, node=node.name)
        # a move's stop returned on its proof (`until_proof`): its container may still be exiting; let it finish
        # (a no-op once exited) so the start below restarts it rather than waiting on a server that is going away
        with contextlib.suppress(EngineUnreachable):  # the start below says so
            self.driver(node).stop(incarnation_name(tenant.name, ordinal, generation), self.settings.stop_timeout)
        # a container that is gone restores its own replica first, else its predecessor's (the entrypoint's order)
        return self.start(ctx, tenant, ordinal, generation, node, generation - 1 or None)

    def remove(self, ctx: StepLog, tenant: str, ordinal: int, generation: int, node_name: str) -> None:
        """Remove an incarnation's container and volume and revoke its key. Re-running is a no-op."""
        node = self.node(node_name)
        try:
            self.driver(node).remove(incarnation_name(tenant, ordinal, generation))
        except EngineUnreachable as exc:
            raise OperationFailed(f"cannot remove gen {generation} of {tenant}/{ordinal}: {exc}") from None
        with self._lock:  # its key is revoked next: nothing may be handed it any more
            self._follower_keys.pop((tenant, ordinal, generation), None)
        fence_out(self.credentials, tenant, ordinal, generation)
        ctx.step("agent.removed", f"gen {generation} container and volume removed", agent=ordinal, node=node_name)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _take_generation(
        self, tenant: str, ordinal: int, generation: int, node: Node
    ) -> tuple[TenantCredentials, str, str]:
        """What comes before generation `generation` may run, for a start and a promotion alike: CURRENT moves to it
        (the fence), its secrets (`_secrets`), its row `starting` on `node`; returns the secrets. Safe to repeat."""
        advance_current(self.storage, tenant, ordinal, generation)
        found = self._secrets(tenant, ordinal, generation)
        self.set_agent(tenant, ordinal, generation=generation, node=node.name, state=AgentState.starting)
        return found

    def _secrets(self, tenant: str, ordinal: int, generation: int) -> tuple[TenantCredentials, str, str]:
        """The incarnation's S3 key, agent token and tenant admin token: the ones recorded on the agent row when it
        already names this generation (a re-run, a restart: the container must get the same ones again), else
        freshly minted and recorded before any container can hold them. Re-running is safe for that reason. The key
        of this generation's follower (`follow`, same scope) is used instead of minting one when this process has it.
        """
        agent = self.agent(tenant, ordinal)
        if agent.generation == generation and agent.access_key and agent.secret_key and agent.agent_token:
            admin = agent.admin_token or self._tenant_admin_token(tenant)
            return TenantCredentials(tenant, agent.access_key, agent.secret_key), agent.agent_token, admin
        with self._lock:
            followed = self._follower_keys.pop((tenant, ordinal, generation), None)
        creds = followed or self.credentials.issue_incarnation(tenant, ordinal, generation)
        agent_token, admin_token = secrets.token_urlsafe(32), self._tenant_admin_token(tenant)
        self.set_agent(
            tenant,
            ordinal,
            generation=generation,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
            agent_token=agent_token,
            admin_token=admin_token,
        )
        return creds, agent_token, admin_token

    def _tenant_admin_token(self, tenant: str) -> str:
        """The tenant's admin token, minted once (the first writer wins: agents started in parallel share it)."""
        with Session(self.engine) as session:
            session.execute(
                update(Tenant)
                .where(col(Tenant.name) == tenant)
                .where(col(Tenant.admin_token).is_(None))
                .values(admin_token=secrets.token_urlsafe(32))
            )
            session.commit()
            row = session.get(Tenant, tenant)
            if row is None or row.admin_token is None:
                raise OperationFailed(f"tenant {tenant} does not exist")
            return row.admin_token

    def _spec(
        self,
        tenant: Tenant,
        ordinal: int,
        generation: int,
        node: Node,
        restore_from: int | None,
        creds: TenantCredentials,
        agent_token: str,
        admin_token: str,
    ) -> AgentSpec:
        s3_endpoint = node.labels.get("litefleet.s3-endpoint", self.settings.containers_s3_endpoint)
        return AgentSpec(
            tenant=tenant.name,
            agent=ordinal,
            generation=generation,
            bundle=tenant.bundle,
            image=self.settings.image,
            replica_url=self.storage.replica_url(tenant.name, ordinal, generation),
            restore_from_url=None
            if restore_from is None
            else self.storage.replica_url(tenant.name, ordinal, restore_from),
            s3_endpoint=s3_endpoint,
            credentials=creds,
            agent_token=agent_token,
            admin_token=admin_token,
            sync_interval=tenant.sync_interval,
            monitor_interval=tenant.sync_interval,
            fence_interval=self.settings.fence_interval,
            lease_timeout=self.settings.agent_lease_timeout,
            durability=tenant.durability,
            memory_mb=tenant.memory_mb,
            cpus=tenant.cpus,
            runtime=tenant.runtime,
            publish_ip=node.address,
            isolation=tenant_isolation(s3_endpoint, node.address) if self.settings.tenant_networks else None,
            fleet=self.storage.bucket,
        )

    def _wait_ready(
        self,
        driver: Driver,
        incarnation: Incarnation,
        token: str,
        *,
        replicated: bool,
        check: Callable[[], None] = lambda: None,
    ) -> str:
        """Wait for /readyz (and with `replicated` the first replica: replica txid >= 1); fail with the agent's
        reason if it exits, or with what `check()` raises (called every round)."""
        url = incarnation.url  # as the engine gave it: no engine call before the first /readyz
        inspected = time.monotonic() if url is not None else 0.0

        def alive() -> None:
            nonlocal url, inspected
            check()
            if url is not None and time.monotonic() - inspected < 0.5:
                return  # its address is known: /readyz is polled every round, the engine (several calls) less often
            inspected = time.monotonic()
            current = driver.inspect(incarnation.name)
            if current is None:
                raise OperationFailed(f"{incarnation.name} disappeared while starting")
            if current.status == "exited":
                raise OperationFailed(f"{incarnation.name} exited with code {current.exit_code}")
            url = current.url

        try:
            return wait_ready(
                lambda: url,
                token=token,
                timeout=self.settings.ready_timeout,
                replicated=replicated,
                check=alive,
                agents=self.agents_api,
                what=incarnation.name,
            )
        except AgentNotReady as exc:
            raise OperationFailed(str(exc)) from None

    def _drain(self, ctx: StepLog, agent: Agent) -> None:
        """Stop taking work and wait (up to the drain timeout) for in-flight workflows to finish."""
        assert agent.url is not None
        admin_token = agent.admin_token or self._tenant_admin_token(agent.tenant)
        try:
            in_flight = self.agents_api.drain(agent.url, admin_token)
            for _ in poll(self.settings.drain_timeout, 0.25):
                if not in_flight:
                    break
                in_flight = self.agents_api.in_flight(agent.url, admin_token)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            ctx.step(
                "agent.drain_skipped",
                f"drain call failed ({type(exc).__name__}); stopping at a step boundary",
                agent=agent.ordinal,
            )
            return
        ctx.step(
            "agent.drained",
            f"{in_flight} workflows still in flight, parked at a step boundary"
            if in_flight
            else "no workflows in flight",
            agent=agent.ordinal,
            in_flight=in_flight,
        )
