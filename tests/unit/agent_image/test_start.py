"""A faster agent start (issue 14): what the container's short-lived processes import, and the start-phase marks
`bench/agent_start_profile.py` reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import agent_image
from agent_image import _phases
from tests.unit.agent_image.agent_process import REPO


def imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement`."""
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        check=True,
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "statement",
    ["import agent_image.container.secrets_in", "import agent_image.contract", "import agent_image._store"],
)
def test_the_secrets_writer_and_the_entrypoints_helpers_do_not_import_the_runtime(statement: str) -> None:
    """The secrets writer runs through `docker exec` on every start: it must not pay for the runtime, structlog or
    asyncio (it did, ~110 ms, through the package's eager exports)."""
    modules = imported_by(statement)
    assert not {"agent_image._runtime", "agent_image._durable", "structlog", "asyncio"} & modules


def test_the_agent_server_does_not_import_prometheus_before_a_scrape() -> None:
    assert "prometheus_client" not in imported_by("import agent_image.__main__, agent_image.server")


def test_every_public_name_still_resolves_and_is_the_private_modules_object() -> None:
    from agent_image._runtime import Runtime

    for name in agent_image.__all__:
        assert getattr(agent_image, name) is not None, name
    assert agent_image.Runtime is Runtime
    assert set(agent_image.__all__) <= set(dir(agent_image))
    with pytest.raises(AttributeError):
        _ = agent_image.NoSuchName


def test_a_mark_names_its_phase_the_wall_clock_and_the_process_age() -> None:
    """As the container's processes log it (configure_logging: JSON lines on stderr)."""
    code = (
        "import time; time.sleep(0.2)\n"
        "from agent_image.logs import configure_logging; configure_logging()\n"
        "from agent_image._phases import mark; mark('fence_checked', extra=1)\n"
    )
    began = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        check=True,
    )
    (event,) = [json.loads(line) for line in done.stderr.splitlines() if "start_phase" in line]
    assert event["event"] == "agent.start_phase" and event["phase"] == "fence_checked" and event["extra"] == 1
    assert began < event["at"] < time.time()
    assert 0.2 <= event["process_s"] < 60  # the process's age, its own start included
    age = _phases.process_age()
    assert age is not None and age > 0
