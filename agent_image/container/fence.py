"""Generation fencing from the inside (invariant 1, one writer per agent).

The control plane writes `CURRENT=g` before it starts generation g. An incarnation refuses to start unless
CURRENT names its generation (`check_fence`), and stops itself when CURRENT moves on, disappears, or its key is
refused (`FenceWatch`). It can only ever have written to its own replica path (`.../gen-g/`), which the new
generation never reads again."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent_image import contract
from agent_image._poll import retry_until
from agent_image.container._periodic import Periodic
from agent_image.container.identity import AgentIdentity
from agent_image.container.s3 import S3Error
from agent_image.contract import StartRefused

log = structlog.get_logger("agent_image.fence")
STORE_PATIENCE = 30.0  # seconds a starting container retries an unreachable store


def current_generation(identity: AgentIdentity) -> int | None:
    """The generation CURRENT names, or None when there is no CURRENT (the agent was deleted)."""
    body = identity.s3().get(identity.bucket, identity.current_key)
    if body is None:
        return None
    try:
        return int(body.decode().strip())
    except ValueError:
        raise S3Error(200, f"CURRENT holds {body[:40]!r}, not a generation number") from None


def check_fence(identity: AgentIdentity) -> None:
    """Refuse to start unless CURRENT names this generation. Retries an unreachable store for a while."""
    try:
        named = retry_until(
            lambda: current_generation(identity), seconds=STORE_PATIENCE, interval=1, errors=(OSError, S3Error)
        )
    except (OSError, S3Error) as exc:
        raise StartRefused(
            "store_unreachable", contract.EXIT_STORE_UNREACHABLE, f"cannot read CURRENT: {exc}"
        ) from None
    if named != identity.generation:
        raise StartRefused(
            "stale_generation",
            contract.EXIT_STALE_GENERATION,
            f"CURRENT names generation {named}, this container is generation {identity.generation}: refusing to run",
        )


class FenceWatch(Periodic):
    """Re-reads CURRENT every `identity.fence_interval` seconds and calls `on_superseded` once when it names
    another generation, is gone, or our key is refused (revoked at fail-over). An unreachable store is not a
    verdict: the agent keeps running and logs it."""

    def __init__(self, identity: AgentIdentity, on_superseded: Callable[[int | None], None]) -> None:
        self.identity = identity
        self.on_superseded = on_superseded
        self.superseded_by: int | None = None
        self.superseded = False
        super().__init__("litefleet-fence", identity.fence_interval, self.check)

    def check(self) -> bool:
        """True while this generation is still CURRENT (or the store cannot be asked)."""
        try:
            named = current_generation(self.identity)
        except S3Error as exc:
            if exc.status not in (401, 403):
                log.warning("fence.unreachable", error=str(exc))
                return True
            named = None  # our key was revoked: the control plane has retired this incarnation
        except OSError as exc:
            log.warning("fence.unreachable", error=str(exc))
            return True
        if named == self.identity.generation:
            return True
        self.superseded, self.superseded_by = True, named
        log.warning("fence.superseded", current=named)
        self.on_superseded(named)
        return False
