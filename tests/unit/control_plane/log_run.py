"""`python -m tests.unit.control_plane.log_run DB_URL`: the control plane's logging as `litefleet serve` configures
it (JSON lines on stderr), then operations run by the reconciler over FakeDriver engines: provision acme on 2
agents, evacuate it from a node, scale it to 1, and a fail-over of a node that went down. Prints nothing on
stdout; every line on stderr is a log line of one of those operations (test_logs.py checks them)."""

from __future__ import annotations

import sys

from sqlmodel import Session

from agent_image.logs import configure_logging
from control_plane.db.engine import make_engine, migrate
from control_plane.db.models import EvacuateRequest, Node, NodeState, Operation, OperationKind, TenantCreate
from control_plane.reconciler.claims import claim
from control_plane.reconciler.runners import runners
from control_plane.reconciler.worker import Reconciler
from control_plane.services import tenants
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import fake_fleet


def main(url: str) -> None:
    configure_logging("DEBUG")
    migrate(url)
    engine = make_engine(url)
    settings = Settings(move_parallelism=2, ready_timeout=5, drain_timeout=1, agent_lease_timeout=0.05)
    settings.agent_lease_margin = 0
    fleet, engines = fake_fleet(engine, settings)
    reconciler = Reconciler(engine, runners(fleet), workers=0, lease=30)
    with Session(engine) as session:
        session.add_all([Node(name=name, engine_url=f"fake-{name}") for name in ("n1", "n2", "n3")])
        session.commit()

    def run(make: object) -> None:
        with Session(engine) as session:
            make(session)  # type: ignore[operator]
        claimed = claim(engine, lease=30)
        assert claimed is not None
        reconciler.run(*claimed)

    run(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=2)))
    run(lambda s: tenants.evacuate_tenant(s, "acme", EvacuateRequest(to_node="n3")))
    run(lambda s: tenants.scale_tenant(s, "acme", 1))
    engines("fake-n3").reachable = False

    def fail_over(session: Session) -> None:
        node = session.get(Node, "n3")
        assert node is not None
        node.state = NodeState.down
        session.add(node)
        session.add(Operation(kind=OperationKind.failover, node="n3", params={"declared_down_at": 1.0}))
        session.commit()

    run(fail_over)


if __name__ == "__main__":
    main(sys.argv[1])
