"""Imports flow one way: from the entry points down to the fleet DB, never back up, never in a circle.

The graph is built from the source with `ast` (every import, also those inside functions), so a lazy import
cannot hide an upward dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import control_plane

PACKAGE = Path(control_plane.__file__).parent

# Top to bottom. A module may import its own layer and any layer below it, nothing above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("control_plane.demo", "control_plane.cli", "control_plane.client")),
    ("composition root", ("control_plane.app", "control_plane.background")),
    ("api", ("control_plane.api", "control_plane.dashboard")),
    ("services", ("control_plane.services",)),
    ("reconciler", ("control_plane.reconciler",)),
    ("fleet", ("control_plane.fleet",)),
    ("drivers", ("control_plane.drivers",)),
    ("observer", ("control_plane.observer",)),
    ("storage", ("control_plane.storage",)),
    (
        "base",
        (
            "control_plane.db",
            "control_plane.settings",
            "control_plane.errors",
            "control_plane.timing",
            "control_plane.pki",
            "control_plane.metrics",
        ),
    ),
    ("package face", ("control_plane",)),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "versions" in path.relative_to(PACKAGE).parts:
            continue  # migration scripts: generated, they import nothing of ours
        found[_module_name(path)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            names = [name for name in names if name in known][:1] or [node.module]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def layer(module: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer index): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                candidate = (len(prefix), index)
                best = candidate if best is None or candidate > best else best
    assert best is not None, f"{module} is on no layer: add it to LAYERS"
    return best[1]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for module, targets in edges.items()
        for target in targets
        if layer(target) < layer(module)
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_on_a_layer() -> None:
    for module in graph():
        layer(module)


def test_no_import_runs_up_a_layer() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_checks_see_what_they_should() -> None:
    """The checker itself: an upward edge and a circle planted in a copy of the graph are reported."""
    edges = graph()
    assert edges["control_plane.app"], "the composition root imports the rooms below it"
    planted = {**edges, "control_plane.db.models": edges["control_plane.db.models"] | {"control_plane.api.deps"}}
    assert upward_imports(planted) == ["control_plane.db.models (base) imports control_plane.api.deps (api)"]
    assert any("control_plane.db.models" in cycle for cycle in cycles(planted))


def test_serving_the_api_imports_neither_the_docker_sdk_nor_boto3() -> None:
    """Each is most of a second of imports; a control plane imports them on first use (a node's driver, the
    object storage's client), so a restart starts serving without them (bench/control_plane_start.py)."""
    probe = "import sys, control_plane.app, control_plane.cli.commands; print(*sorted(sys.modules))"
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not {"docker", "boto3", "botocore.config", "paramiko"} & loaded


def test_litefleet_serve_imports_neither_the_cli_nor_cryptography() -> None:
    """`litefleet serve` goes straight to the app (cli/launch.py: no typer, ~0.5 s) and the PKI imports
    `cryptography` (~0.17 s) only to make or check a certificate, which serving never does."""
    loaded = _loaded_by_serve()
    assert "control_plane.app" in loaded
    assert not {"typer", "control_plane.cli.commands", "cryptography", "docker", "boto3"} & loaded


def test_litefleet_serve_leaves_what_only_the_background_or_a_page_uses_to_them() -> None:
    """Before it answers, a restarted control plane loads neither modules it never uses (rich, pydantic.v1, httpx's
    command line: installed for the CLI and the tests) nor what only the background thread (the reconciler, the
    observer's working parts) or the first dashboard page (Jinja2) needs."""
    loaded = _loaded_by_serve()
    unused = {"rich", "pydantic.v1", "httpx._main"}
    later = {"jinja2", "control_plane.observer.facade", "control_plane.observer.lag", "control_plane.reconciler.worker"}
    assert not (unused | later) & loaded
    assert {"control_plane.observer.models", "sqlmodel", "fastapi"} <= loaded  # the probe did load the app


def _loaded_by_serve() -> set[str]:
    probe = (
        "import sys; from control_plane.cli import launch; launch.leave_out_unserved_modules(); "
        "import control_plane.app; print(*sorted(name for name, module in sys.modules.items() if module))"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(answer.stdout.split())
