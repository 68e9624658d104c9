"""The agent image on a node is the content the control plane built: a tag moved on the node (to other content)
is put back by the next `ensure_image`, which every start calls, so agents never run an image swapped under
their tag."""

from __future__ import annotations

import io

import docker

from control_plane.drivers import DockerDriver
from infra.testbed import Testbed


def test_a_tag_moved_on_a_node_is_put_back_before_the_next_start(testbed: Testbed, image: str) -> None:
    node = testbed.nodes[-1]
    driver = DockerDriver(node.engine_url, tls=node.tls)
    driver.ensure_image(image)
    wanted = docker.from_env().images.get(image).id
    remote = node.client()
    assert remote.images.get(image).id == wanted

    impostor = remote.images.build(fileobj=_dockerfile(image), tag=image, rm=True)[0]  # same tag, other content
    assert impostor.id != wanted and remote.images.get(image).id == impostor.id

    assert driver.ensure_image(image) > 0  # copied again
    assert remote.images.get(image).id == wanted
    assert driver.ensure_image(image) == 0.0  # and left alone once it matches


def _dockerfile(base: str) -> io.BytesIO:
    return io.BytesIO(f"FROM {base}\nLABEL io.litefleet.test=impostor\n".encode())
