"""The Docker driver against the real engine: verbs that are safe to repeat, and to race."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import docker.errors

from control_plane.drivers import DockerDriver


def _remove(driver: DockerDriver, name: str, errors: list[BaseException]) -> None:
    try:
        driver.remove(name)
    except BaseException as exc:  # collected: the test's assertion names it
        errors.append(exc)


def test_two_removers_racing_both_succeed_and_leave_nothing(docker_client: Any, agent_image: str) -> None:
    for attempt in range(5):
        name = f"lf-race-{secrets.token_hex(3)}-{attempt}"
        docker_client.containers.run(
            agent_image, entrypoint=["sleep", "60"], name=name, detach=True, volumes={name: {"bind": "/data"}}
        )
        driver = DockerDriver("unix:///var/run/docker.sock")
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_remove, args=(driver, name, errors)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert driver.inspect(name) is None
        try:
            docker_client.volumes.get(name)
            raise AssertionError(f"volume {name} survived")
        except docker.errors.NotFound:
            pass
        driver.remove(name)  # and once more, on nothing: harmless
