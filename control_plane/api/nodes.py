"""`/v1/nodes`: register, list, cordon, drain, remove."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from control_plane.api.deps import ProbeDep, SessionDep, TimeoutQuery, WaitQuery, accepted, require_admin
from control_plane.api.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery, rows_answer
from control_plane.db.models import MoveStrategy, NodeCreate, NodePublic, NodeState, OperationPublic, Page
from control_plane.services import nodes

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], dependencies=[Depends(require_admin)])


@router.post("", status_code=201)
def register_node(body: NodeCreate, session: SessionDep, probe: ProbeDep) -> NodePublic:
    return nodes.register_node(session, body, probe)


@router.get("", response_model=Page[NodePublic])
def list_nodes(session: SessionDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None) -> Response:
    return rows_answer(*nodes.node_rows(session, limit, cursor))


@router.get("/{name}")
def get_node(name: str, session: SessionDep) -> NodePublic:
    return nodes.get_node(session, name)


@router.post("/{name}/cordon")
def cordon_node(name: str, session: SessionDep) -> NodePublic:
    return nodes.set_node_state(session, name, NodeState.cordoned)


@router.post("/{name}/uncordon")
def uncordon_node(name: str, session: SessionDep) -> NodePublic:
    return nodes.set_node_state(session, name, NodeState.ready)


@router.post("/{name}/drain", status_code=202, response_model=OperationPublic)
def drain_node(
    name: str,
    session: SessionDep,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 600,
    strategy: MoveStrategy | None = None,
) -> JSONResponse:
    return accepted(session, nodes.drain_node(session, name, strategy), wait, timeout)


@router.delete("/{name}", status_code=204)
def remove_node(name: str, session: SessionDep) -> None:
    nodes.remove_node(session, name)
