"""Scoped S3 identities: one per tenant, one per incarnation, each limited to its own prefix (SeaweedFS identities
added and revoked at runtime through `weed shell`)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from control_plane.storage.replicas import ObjectStorage
from control_plane.storage.seaweed import EmbeddedStore, ObjectStoreError


@dataclass(frozen=True)
class TenantCredentials:
    tenant: str
    access_key: str
    secret_key: str = field(repr=False)


class SeaweedCredentials:
    """S3 identities in the embedded store, each limited to one tenant's prefix or to one incarnation.

    An incarnation's key (`issue_incarnation`) can read its whole agent prefix (CURRENT, older generations to
    restore from) but write only its own `gen-g/`: a zombie cannot touch CURRENT or a newer generation's replica."""

    def __init__(self, store: EmbeddedStore, storage: ObjectStorage) -> None:
        self.store = store
        self.storage = storage

    def issue(self, tenant: str) -> TenantCredentials:
        """A fresh key pair for `tenant` (replacing any previous one: re-running rotates, never widens)."""
        scope = f"{self.storage.bucket}/{self.storage.tenant_prefix(tenant)}*"
        return self._configure(tenant, f"litefleet-tenant-{tenant}", {verb: scope for verb in _VERBS})

    def issue_incarnation(self, tenant: str, agent: int, generation: int) -> TenantCredentials:
        """A fresh key pair for generation `generation` of agent `agent` (rotates on re-run, never widens)."""
        agent_scope = f"{self.storage.bucket}/{self.storage.agent_prefix(tenant, agent)}*"
        own = f"{self.storage.bucket}/{self.storage.replica_prefix(tenant, agent, generation)}*"
        scopes = {"Read": agent_scope, "List": agent_scope, "Write": own, "Tagging": own}
        # An incarnation's identity is new, or left by an attempt that crashed before any container got its key:
        # adding this key to it keeps the same scope, so one shell session is enough.
        return self._configure(tenant, self._incarnation_user(tenant, agent, generation), scopes, replace=False)

    def issue_observer(self) -> TenantCredentials:
        """A read-only key for the observer: Read + List on every tenant's prefix, no Write (rotates on re-run)."""
        scope = f"{self.storage.bucket}/{self.storage.root}/tenants/*"
        return self._configure("*", "litefleet-observer", {"Read": scope, "List": scope})

    def revoke(self, tenant: str) -> None:
        """Remove the tenant's identity. Safe to re-run: deleting a missing user is not an error."""
        self._delete(f"litefleet-tenant-{tenant}")

    def revoke_incarnation(self, tenant: str, agent: int, generation: int) -> None:
        self._delete(self._incarnation_user(tenant, agent, generation))

    @staticmethod
    def _incarnation_user(tenant: str, agent: int, generation: int) -> str:
        return f"litefleet-{tenant}-{agent}-g{generation}"

    def _configure(self, tenant: str, user: str, scopes: dict[str, str], *, replace: bool = True) -> TenantCredentials:
        creds = TenantCredentials(tenant, "LF" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
        actions = ",".join(f"{verb}:{scope}" for verb, scope in scopes.items())
        # Each shell session costs ~0.25 s: look once, then replace (or create) the identity in one more.
        delete = f"s3.configure -user={user} -delete -apply\n" if replace and self._exists(user) else ""
        self.store.shell(
            delete + f"s3.configure -user={user} -access_key={creds.access_key} "
            f"-secret_key={creds.secret_key} -actions={actions} -apply"
        )
        return creds

    def _exists(self, user: str) -> bool:
        # The listing holds every identity's keys: it is only searched here, never logged or returned.
        return re.search(rf'"name":\s*"{re.escape(user)}"', self.store.shell("s3.configure")) is not None

    def _delete(self, user: str) -> None:
        try:
            self.store.shell(f"s3.configure -user={user} -delete -apply")
        except ObjectStoreError:
            if self._exists(user):
                raise


_VERBS = ("Read", "Write", "List", "Tagging")
