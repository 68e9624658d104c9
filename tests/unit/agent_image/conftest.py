from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from agent_image import Runtime
from tests.unit.agent_image import features_bundle


@pytest.fixture
def open_runtime(tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Open (and recover) runtimes on one database file; all are closed at the end."""
    opened: list[Runtime] = []

    def open_(bundle: ModuleType = features_bundle, **kwargs: object) -> Runtime:
        runtime = Runtime(str(tmp_path / "agent.db"), bundle, **kwargs)  # type: ignore[arg-type]
        opened.append(runtime)
        runtime.recover()
        return runtime

    features_bundle.calls.clear()
    features_bundle.gate.clear()
    features_bundle.peak[0] = 0
    yield open_
    features_bundle.gate.set()
    for runtime in opened:
        runtime.close(timeout=5)


@pytest.fixture
def runtime(open_runtime: Callable[..., Runtime]) -> Runtime:
    return open_runtime()
