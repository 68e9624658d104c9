"""Generation fencing from the inside (invariant 1, one writer per agent).

The control plane writes `CURRENT=g` before it starts generation g. An incarnation refuses to start unless
CURRENT names its generation (`check_fence`), and stops itself when CURRENT moves on, disappears, or its key is
refused (`FenceWatch`). It can only ever have written to its own replica path (`.../gen-g/`), which the new
generation never reads again."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent_image import contract
from agent_image._phases import mark
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
    mark("fence_checked")


class FenceWatch(Periodic):
    """Re-reads CURRENT every `identity.fence_interval` seconds and calls `on_superseded` once when it names
    another generation, is gone, or our key is refused (revoked at fail-over). An unreachable store is not a
    verdict: the agent keeps running and logs it.

    It is also the incarnation's lease (issue 11, invariant 6): `confirmed_at` is when the last read that found
    CURRENT naming this generation *was sent* (the monotonic clock before the request, so a slow answer does not
    stretch the lease). `held()` is False when that is older than `lease_timeout` (or never happened): the agent
    then stops acknowledging writes, so a frozen-then-thawed or partitioned agent cannot acknowledge anything a
    successor started after `CURRENT` moved will not have — provided the control plane waits `lease_timeout` after
    moving CURRENT before the successor serves. The first check runs at once (`immediately`)."""

    def __init__(
        self,
        identity: AgentIdentity,
        on_superseded: Callable[[int | None], None],
        *,
        read_current: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.on_superseded = on_superseded
        self.read_current = read_current or (lambda: current_generation(identity))
        self.clock = clock
        self.lease_timeout = identity.effective_lease_timeout
        self.confirmed_at: float | None = None
        self.last_error: str | None = None
        self.superseded_by: int | None = None
        self.superseded = False
        super().__init__("litefleet-fence", identity.fence_interval, self.check, immediately=True)

    def check(self) -> bool:
        """True while this generation is still CURRENT (or the store cannot be asked)."""
        sent = self.clock()
        try:
            named = self.read_current()
        except S3Error as exc:
            if exc.status not in (401, 403):
                return self._unconfirmed(str(exc))
            named = None  # our key was revoked: the control plane has retired this incarnation
        except OSError as exc:
            return self._unconfirmed(str(exc))
        if named == self.identity.generation:
            if self.confirmed_at is None:
                mark("lease_confirmed")
            if self.last_error is not None:
                log.info("fence.confirmed_again", after=self.last_error)
            self.confirmed_at, self.last_error = sent, None
            return True
        self.superseded, self.superseded_by = True, named
        log.warning("fence.superseded", current=named)
        self.on_superseded(named)
        return False

    def _unconfirmed(self, error: str) -> bool:
        self.last_error = error
        log.warning("fence.unreachable", error=error, lease_held=self.held())
        return True

    def seconds_since_confirmed(self) -> float | None:
        return None if self.confirmed_at is None else max(0.0, self.clock() - self.confirmed_at)

    def held(self) -> bool:
        """True while the last confirmation is younger than the lease timeout (and this is still CURRENT)."""
        since = self.seconds_since_confirmed()
        return not self.superseded and since is not None and since <= self.lease_timeout

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the next check is at most one fence interval away."""
        return max(1, math.ceil(self.interval))

    def status(self) -> dict[str, Any]:
        since = self.seconds_since_confirmed()
        return {
            "state": "confirmed" if self.held() else "superseded" if self.superseded else "unconfirmed",
            "generation": self.identity.generation,
            "seconds_since_confirmed": None if since is None else round(since, 3),
            "timeout": self.lease_timeout,
            "last_error": self.last_error,
        }
