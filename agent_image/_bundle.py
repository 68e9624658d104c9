"""A bundle is a Python module or package of decorated functions; this finds its workflows, queues and version.

A bundle module may declare:
    __version__ = "2"                      # the bundle's version (default "0")
    COMPATIBLE_VERSIONS = {"1"}            # older versions whose in-flight workflows this code can resume
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from agent_image._errors import UnknownWorkflow
from agent_image._specs import WORKFLOW_ATTR, Queue, WorkflowSpec


@dataclass(frozen=True)
class Bundle:
    name: str
    version: str
    workflows: dict[str, WorkflowSpec]
    compatible_versions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_module(cls, module: ModuleType) -> Bundle:
        workflows: dict[str, WorkflowSpec] = {}
        for value in vars(module).values():
            spec = getattr(value, WORKFLOW_ATTR, None)
            if isinstance(spec, WorkflowSpec):
                workflows[spec.name] = spec
        version = str(getattr(module, "__version__", "0"))
        compatible = frozenset(str(v) for v in getattr(module, "COMPATIBLE_VERSIONS", ()))
        return cls(module.__name__, version, workflows, compatible)

    @property
    def queues(self) -> dict[str, Queue]:
        return {spec.queue.name: spec.queue for spec in self.workflows.values() if spec.queue is not None}

    def spec(self, workflow: Callable[..., Any] | str) -> WorkflowSpec:
        """The workflow named `workflow` (or the decorated function itself); UnknownWorkflow otherwise."""
        if not isinstance(workflow, str):
            spec = getattr(workflow, WORKFLOW_ATTR, None)
            if not isinstance(spec, WorkflowSpec):
                raise UnknownWorkflow(f"{workflow!r} is not decorated with @workflow")
            workflow = spec.name
        try:
            return self.workflows[workflow]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise UnknownWorkflow(
                f"no workflow {workflow!r} in bundle {self.name} version {self.version} (it has: {known})"
            ) from None

    def cannot_resume(self, name: str, started_under: str) -> str | None:
        """Why a workflow `name` started under bundle version `started_under` cannot resume here, or None."""
        if started_under != self.version and started_under not in self.compatible_versions:
            return (
                f"started under bundle version {started_under}; this agent runs version {self.version}, "
                f"which does not list {started_under} in COMPATIBLE_VERSIONS"
            )
        if name not in self.workflows:
            return f"workflow {name!r} is not in bundle version {self.version}"
        return None


def load_bundle(target: str) -> Bundle:
    """Load a bundle from a module name (`tenants.hello`) or a path to a `.py` file or package folder."""
    if os.path.exists(target):
        path = os.path.abspath(target)
        if os.path.isdir(path):
            init = os.path.join(path, "__init__.py")
            if not os.path.exists(init):
                raise ImportError(f"bundle folder {target} has no __init__.py")
            name, location, search = os.path.basename(path), init, [path]
        else:
            name, location, search = os.path.splitext(os.path.basename(path))[0], path, None
        module_name = f"litefleet_bundle_{name}"
        spec = importlib.util.spec_from_file_location(module_name, location, submodule_search_locations=search)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load bundle from {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    bundle = Bundle.from_module(module)
    if not bundle.workflows:
        raise ImportError(f"bundle {target} defines no @workflow functions")
    return bundle
