"""The docker SDK, imported on first use: its exception classes (`errors`) and `docker_client()`.

`import docker.errors` runs the whole SDK's `__init__` (~0.8 s: requests, paramiko, ...). The modules that only
name its exceptions (in `except` clauses, evaluated when an exception reaches them) use `errors.NotFound` from
here instead, so importing the control plane, and starting to serve its API, does not pay for the SDK."""

from __future__ import annotations

from typing import Any


class _Errors:
    def __getattr__(self, name: str) -> Any:
        import docker.errors

        return getattr(docker.errors, name)


errors = _Errors()


def docker_client() -> Any:
    """`docker.from_env()`, importing the SDK only now."""
    import docker

    return docker.from_env()
