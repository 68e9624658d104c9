"""`litefleet tokens create|list|revoke` against a control plane serving HTTP (uvicorn on loopback), and what a
tenant's token can do with the rest of the CLI."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from control_plane.app import create_app
from control_plane.cli import commands
from control_plane.db.models import Tenant
from control_plane.settings import Settings
from control_plane.timing import poll
from tests.unit.agent_image.agent_process import free_port

ADMIN = "admin-token-for-the-cli-tests-012345"


@pytest.fixture
def api_url(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(Settings(state_dir=tmp_path, database_url=url, api_token=ADMIN), background=False)  # type: ignore[arg-type]
    with Session(engine) as session:
        session.add(Tenant(name="acme"))
        session.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in poll(20, 0.05):
        if server.started:
            break
    monkeypatch.setattr(commands, "configure_logging", lambda: None)  # would log to the runner's closed stderr
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def litefleet(api_url: str, token: str, *args: str) -> tuple[int, str, str]:
    env = {"LITEFLEET_API_URL": api_url, "LITEFLEET_API_TOKEN": token}
    result = CliRunner().invoke(commands.app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_tokens_create_list_revoke_from_the_cli(api_url: str) -> None:
    code, out, err = litefleet(api_url, ADMIN, "tokens", "create", "acme", "--name", "ci")
    assert code == 0, err
    token = out.strip()
    token_id = token.split("_")[1]
    assert token.startswith("lft_") and "shown once" in err and token_id in err

    code, out, _ = litefleet(api_url, ADMIN, "tokens", "list", "acme")
    secret = token.split("_", 2)[2]  # the secret itself may hold "_": split once past the id
    assert code == 0 and token_id in out and "ci" in out and token not in out and secret[:16] not in out

    code, out, _ = litefleet(api_url, token, "tenants", "get", "acme")  # the tenant's own token, through the CLI
    assert code == 0 and "acme" in out
    code, _, err = litefleet(api_url, token, "nodes", "ls")
    assert code == 2 and "forbidden" in err
    code, _, err = litefleet(api_url, token, "tokens", "create", "acme")  # only the admin makes tokens
    assert code == 2 and "forbidden" in err

    code, out, _ = litefleet(api_url, ADMIN, "tokens", "revoke", "acme", token_id)
    assert code == 0 and "revoked" in out
    code, _, err = litefleet(api_url, token, "tenants", "get", "acme")
    assert code == 2 and "unauthorized" in err
    code, _, err = litefleet(api_url, ADMIN, "tokens", "revoke", "acme", "0123456789ab")
    assert code == 2 and "token_not_found" in err
    code, _, err = litefleet(api_url, ADMIN, "tokens", "create", "nobody")
    assert code == 2 and "tenant_not_found" in err
