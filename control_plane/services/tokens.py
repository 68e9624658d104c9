"""Who is calling: the operator (the admin token) or one tenant (one of its API tokens), and the tenants' tokens:
create (the secret is shown once), list, revoke.

A tenant token reads `lft_<id>_<secret>`. The id is public (listings, revocation); the control plane keeps only
the SHA-256 of the whole token, so the fleet DB does not hold a working token. Every request looks its token up in
the fleet DB (no cache): a revocation is in effect for the next request, on every control-plane replica."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlmodel import Session, col, select

from control_plane.db.models import ApiToken, ApiTokenCreate, ApiTokenCreated, ApiTokenPublic, Tenant, TenantState
from control_plane.errors import Forbidden, TenantBusy, TenantNotFound, TokenNotFound, Unauthorized
from control_plane.services.operations import event

PREFIX = "lft_"
_ID_BYTES = 6  # 12 hex digits: unique enough for a primary key, short enough to read out
_ID = re.compile(rf"[0-9a-f]{{{2 * _ID_BYTES}}}")
_SECRET_BYTES = 32  # 256 bits: a hash without salt or stretching is enough for a random secret this long


@dataclass(frozen=True)
class Principal:
    """The caller of an API route: the admin (`tenant` None), or the holder of one token of `tenant`."""

    tenant: str | None = None
    token_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def may_use(self, tenant: str) -> bool:
        return self.admin or self.tenant == tenant


ADMIN = Principal()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, given: str, admin_token: str) -> Principal:
    """The principal `given` (a bearer token) names; Unauthorized when it names none. The admin token and a token's
    hash are compared in constant time. A token is refused once revoked, while its tenant is being deleted, and
    when its tenant was deleted and created again under the same name (the token is older than the tenant)."""
    if secrets.compare_digest(given.encode(), admin_token.encode()):
        return ADMIN
    refused = Unauthorized("send Authorization: Bearer <an API token>")
    if not given.startswith(PREFIX):
        raise refused
    token_id, _, secret = given[len(PREFIX) :].partition("_")
    if not _ID.fullmatch(token_id) or not secret:
        raise refused  # never a query with what a stranger sent beyond a well-formed id
    row = session.exec(
        select(ApiToken, Tenant)
        .where(ApiToken.id == token_id)
        .where(col(ApiToken.revoked_at).is_(None))
        .where(col(ApiToken.tenant) == col(Tenant.name))
    ).first()
    if row is None or not secrets.compare_digest(_digest(given).encode(), row[0].secret_sha256.encode()):
        raise refused
    token, tenant = row
    if tenant.state == TenantState.deleting or tenant.created_at > token.created_at:
        raise refused
    return Principal(tenant=token.tenant, token_id=token.id)


def require_admin(principal: Principal) -> Principal:
    if not principal.admin:
        raise Forbidden("this route needs the admin token")
    return principal


def require_tenant(principal: Principal, tenant: str) -> Principal:
    """The admin, or a token of `tenant`. Another tenant's token gets the answer a missing tenant gets (404): it
    cannot tell which tenants exist."""
    if not principal.may_use(tenant):
        raise TenantNotFound(f"no tenant named {tenant!r}")
    return principal


def _public(token: ApiToken) -> ApiTokenPublic:
    return ApiTokenPublic.model_validate(token, from_attributes=True)


def _tenant(session: Session, name: str) -> Tenant:
    tenant = session.get(Tenant, name)
    if tenant is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return tenant


def create_token(session: Session, tenant: str, body: ApiTokenCreate) -> ApiTokenCreated:
    """A new token of `tenant`; its secret is in this answer and nowhere else. Not idempotent by design: each call
    is one more credential (a retried call leaves an unused token, which the operator can see and revoke)."""
    if _tenant(session, tenant).state == TenantState.deleting:
        raise TenantBusy(f"tenant {tenant} is being deleted")
    token_id = secrets.token_hex(_ID_BYTES)
    secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    row = ApiToken(id=token_id, tenant=tenant, name=body.name, secret_sha256=_digest(secret))
    session.add(row)
    event(session, "token.created", f"API token {token_id} ({body.name or 'unnamed'})", tenant=tenant)
    session.commit()
    return ApiTokenCreated(**_public(row).model_dump(), token=secret)


def list_tokens(session: Session, tenant: str) -> list[ApiTokenPublic]:
    """Every token of `tenant`, revoked ones too (with `revoked_at`), oldest first; never a secret or a hash."""
    _tenant(session, tenant)
    rows = session.exec(select(ApiToken).where(ApiToken.tenant == tenant).order_by(col(ApiToken.created_at)))
    return [_public(row) for row in rows]


def revoke_token(session: Session, tenant: str, token_id: str) -> None:
    """Revoke one token of `tenant`: refused from the next request on. Idempotent: revoking a revoked token keeps
    its first revocation time and changes nothing."""
    row = session.get(ApiToken, token_id)
    if row is None or row.tenant != tenant:
        raise TokenNotFound(f"tenant {tenant} has no token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = time.time()
        session.add(row)
        event(session, "token.revoked", f"API token {token_id} revoked", tenant=tenant)
        session.commit()
