"""Node engines over mutual TLS, on a real namespaced engine of the test bed (needs root and Docker).

The bed here has its own names and subnet (lfx, 10.96.0) so it never meets the demo's (lf), the e2e suite's (lft)
or the benchmark's (lfb). Fails, not skips, when LITEFLEET_REQUIRE_DOCKER=1 and it cannot run."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.drivers import DockerDriver
from control_plane.drivers.engine_client import EngineUnreachable, InsecureEngineURL, _EngineAPIClient, engine_client
from control_plane.pki import client_cert, init_ca
from control_plane.settings import Settings, api_token
from infra.testbed import Testbed, TestbedNode

pytestmark = pytest.mark.docker


def _require(reason: str) -> None:
    if os.environ.get("LITEFLEET_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LITEFLEET_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    if os.geteuid() != 0:
        _require("the test bed needs root (network namespaces, dockerd)")
    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:
        _require(f"no local Docker engine: {exc}")
    testbed = Testbed(Path(f"/var/lib/litefleet-testbed-lfx-{secrets.token_hex(3)}"), prefix="lfx", subnet="10.96.0")
    started = time.monotonic()
    try:
        testbed.up(1)
        print(f"test bed with 1 TLS engine up in {time.monotonic() - started:.2f}s")
        yield testbed
    finally:
        testbed.down()
        with contextlib.suppress(OSError):
            testbed.state_dir.rmdir()


@pytest.fixture(scope="module")
def node(bed: Testbed) -> TestbedNode:
    return bed.nodes[0]


def test_the_engine_answers_with_our_client_certificate(node: TestbedNode, monkeypatch: pytest.MonkeyPatch) -> None:
    # this machine sets these; pointing them at the system bundle is what broke the SDK's own TLS
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert node.engine_url == f"tcp://{node.ip}:2376"
    client = engine_client(node.engine_url, tls=node.tls, timeout=10)
    with contextlib.closing(client):
        assert client.ping() is True
        assert client.version()["ApiVersion"]
    DockerDriver(node.engine_url, tls=node.tls).ping()
    assert DockerDriver(node.engine_url, tls=node.tls).list_managed() == []


def test_the_plain_sdk_with_the_environment_fails_where_ours_works(node: TestbedNode) -> None:
    """The pitfall, shown: the docker SDK as documented, with REQUESTS_CA_BUNDLE set, does not verify our CA."""
    if not os.environ.get("REQUESTS_CA_BUNDLE") and not os.environ.get("CURL_CA_BUNDLE"):
        pytest.skip("the environment sets no CA bundle here")  # nothing to show; ours is covered above
    tls = docker.tls.TLSConfig(client_cert=(str(node.tls.cert), str(node.tls.key)), ca_cert=str(node.tls.ca))
    with pytest.raises(docker.errors.DockerException, match="CERTIFICATE_VERIFY_FAILED"):
        docker.DockerClient(base_url=node.engine_url, tls=tls, timeout=10)


def _handshake(node: TestbedNode, cert: tuple[Path, Path] | None) -> bytes:
    """Open TLS to the engine (verifying it against the bed's CA), send GET /_ping, return what came back."""
    context = ssl.create_default_context(cafile=str(node.tls.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with (
        socket.create_connection((node.ip, 2376), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=node.ip) as tls,
    ):
        tls.sendall(f"GET /_ping HTTP/1.1\r\nHost: {node.ip}\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(4096)


def test_the_engine_refuses_a_client_without_a_certificate(node: TestbedNode) -> None:
    assert b"200 OK" in _handshake(node, (node.tls.cert, node.tls.key))  # the same route, with our certificate
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(node, None)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{node.ip}:2376/_ping", verify=ssl.create_default_context(cafile=str(node.tls.ca)))
    # our own client class (environment ignored, the bed's CA trusted), only without the client certificate
    no_cert = _EngineAPIClient(
        base_url=node.engine_url, tls=docker.tls.TLSConfig(ca_cert=str(node.tls.ca), verify=True), version="1.41"
    )
    with pytest.raises(requests.exceptions.ConnectionError) as refused:
        no_cert.ping()
    assert "CERTIFICATE_VERIFY_FAILED" not in str(refused.value)  # we trusted the engine; it refused us


def test_the_engine_refuses_a_certificate_from_another_ca(node: TestbedNode, tmp_path: Path) -> None:
    stranger = client_cert(init_ca(tmp_path / "other-ca"), "stranger")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(node, (stranger.cert, stranger.key))


def test_plain_http_gets_no_api(node: TestbedNode) -> None:
    answer = httpx.get(f"http://{node.ip}:2376/containers/json", timeout=10)
    assert answer.status_code == 400 and "[" not in answer.text
    with pytest.raises(EngineUnreachable):
        engine_client(node.engine_url, insecure=True, timeout=5)  # our client, told to speak plain HTTP
    with pytest.raises(OSError), socket.create_connection((node.ip, 2375), timeout=5):
        pass  # no plain listener at all


def test_a_plain_tcp_url_is_refused_by_our_policy_before_connecting(node: TestbedNode) -> None:
    with pytest.raises(InsecureEngineURL) as refused:
        engine_client(f"tcp://{node.ip}:2376")
    assert refused.value.code == "insecure_engine_url" and node.ip not in str(refused.value)
    with pytest.raises(InsecureEngineURL):
        DockerDriver(f"tcp://{node.ip}:2376")


def test_nodes_register_with_a_named_credential_set(bed: Testbed, node: TestbedNode, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'fleet.db'}", pki_dir=bed.pki_dir)
    api = TestClient(
        create_app(settings, background=False),
        headers={"authorization": f"Bearer {api_token(settings, create=False)}"},
    )
    plain = api.post("/v1/nodes", json={"name": "plain", "engine_url": node.engine_url, "address": node.ip})
    assert (plain.status_code, plain.json()["code"]) == (422, "insecure_engine_url")
    body: dict[str, Any] = {"name": "n1", "engine_url": node.engine_url, "address": node.ip, "tls": node.tls_name}
    registered = api.post("/v1/nodes", json=body)
    assert registered.status_code == 201, registered.text
    assert registered.json()["tls"] == node.tls_name and not registered.json()["insecure"]
