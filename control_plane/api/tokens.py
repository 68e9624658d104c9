"""`/v1/tenants/{name}/tokens`: a tenant's API tokens (admin only): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from control_plane.api.deps import SessionDep, require_admin
from control_plane.db.models import ApiTokenCreate, ApiTokenCreated, ApiTokenPublic
from control_plane.services import tokens

router = APIRouter(prefix="/v1/tenants/{name}/tokens", tags=["tokens"], dependencies=[Depends(require_admin)])


@router.post("", status_code=201)
def create_token(name: str, session: SessionDep, body: ApiTokenCreate | None = None) -> ApiTokenCreated:
    return tokens.create_token(session, name, body or ApiTokenCreate())


@router.get("")
def list_tokens(name: str, session: SessionDep) -> list[ApiTokenPublic]:
    return tokens.list_tokens(session, name)


@router.delete("/{token_id}", status_code=204)
def revoke_token(name: str, token_id: str, session: SessionDep) -> None:
    tokens.revoke_token(session, name, token_id)
