"""Which engine URLs the control plane may use, decided before any connection (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from control_plane.drivers.engine_client import (
    EngineTLSInvalid,
    EngineUnreachable,
    EngineURLScheme,
    InsecureEngineURL,
    _client_kwargs,
    _EngineAPIClient,
    engine_client,
    is_loopback,
)
from control_plane.pki import EngineTLS, client_cert, init_ca


@pytest.fixture
def tls(tmp_path: Path) -> EngineTLS:
    return client_cert(init_ca(tmp_path), "cp")


@pytest.mark.parametrize(
    "url",
    ["tcp://10.99.0.11:2375", "tcp://node-a.example:2375", "tcp://0.0.0.0:2375", "tcp://[fd00::1]:2375"],
)
def test_plain_tcp_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(InsecureEngineURL) as refused:
        engine_client(url)
    assert refused.value.code == "insecure_engine_url"
    assert "10.99" not in str(refused.value) and "example" not in str(refused.value)  # no echo


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:2375", "tcp://127.8.9.1:1", "tcp://localhost:2375", "tcp://[::1]:1"])
def test_plain_tcp_on_loopback_is_allowed(url: str) -> None:
    assert _client_kwargs(url, tls=None, insecure=False) == {"base_url": url}


def test_plain_tcp_with_insecure_is_allowed() -> None:
    assert _client_kwargs("tcp://10.99.0.11:2375", tls=None, insecure=True) == {"base_url": "tcp://10.99.0.11:2375"}


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:2375",
        "https://10.0.0.1:2376",
        "tcp+tls://10.0.0.1:2376",
        "npipe:////./pipe/docker_engine",
        "fd://",
        "file:///etc/passwd",
        "10.0.0.1:2375",
        "",
        "tcp://10.0.0.1:2376/v1.41/containers",
        "tcp://10.0.0.1:2376?x=1",
        "tcp://10.0.0.1:notaport",
        "tcp://:2376",
        "unix://",
    ],
)
def test_other_schemes_and_shapes_are_refused(url: str) -> None:
    with pytest.raises(EngineURLScheme) as refused:
        engine_client(url, insecure=True)
    assert refused.value.code == "engine_url_scheme"
    assert isinstance(refused.value, EngineUnreachable)  # every caller already handles this one


def test_tls_configures_client_cert_and_our_ca(tls: EngineTLS) -> None:
    kwargs = _client_kwargs("tcp://10.99.0.11:2376", tls=tls, insecure=False)
    config = kwargs["tls"]
    assert config.cert == (str(tls.cert), str(tls.key)) and config.ca_cert == str(tls.ca) and config.verify is True


def test_incomplete_tls_credentials_are_refused(tls: EngineTLS) -> None:
    tls.key.unlink()
    with pytest.raises(EngineTLSInvalid) as refused:
        engine_client("tcp://10.99.0.11:2376", tls=tls)
    assert refused.value.code == "engine_tls_invalid" and "key" in str(refused.value)
    assert str(tls.key) not in str(refused.value)


@pytest.mark.parametrize("url", ["unix:///var/run/docker.sock", "ssh://root@10.0.0.1"])
def test_tls_credentials_belong_to_tcp_only(tls: EngineTLS, url: str) -> None:
    with pytest.raises(EngineTLSInvalid):
        engine_client(url, tls=tls)


def test_unix_and_ssh_are_allowed() -> None:
    assert _client_kwargs("unix:///run/x.sock", tls=None, insecure=False) == {"base_url": "unix:///run/x.sock"}
    kwargs = _client_kwargs("ssh://root@10.0.0.1:22", tls=None, insecure=False)
    assert kwargs == {"base_url": "ssh://root@10.0.0.1:22", "use_ssh_client": False}


def test_a_refused_connection_says_nothing_about_what_it_met() -> None:
    with pytest.raises(EngineUnreachable) as failed:
        engine_client("tcp://127.0.0.1:9", timeout=2)  # nothing listens on the discard port
    assert failed.value.code == "engine_unreachable"
    assert "refused" not in str(failed.value).lower() and "127.0.0.1" not in str(failed.value)


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("localhost.example") and not is_loopback("0.0.0.0")


def test_the_session_ignores_ca_bundles_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tls: EngineTLS, tmp_path: Path
) -> None:
    """REQUESTS_CA_BUNDLE would replace our CA with the system's (every engine then fails verification)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "system-bundle.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "system-bundle.pem"))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    client = _EngineAPIClient(version="1.41", **_client_kwargs("tcp://10.99.0.11:2376", tls=tls, insecure=False))
    assert client.trust_env is False
    client.trust_env = True  # requests.Session.__init__ does this; it must not stick
    assert client.trust_env is False
    settings = client.merge_environment_settings("https://10.99.0.11:2376/_ping", {}, None, None, None)
    assert settings["verify"] == str(tls.ca) and not settings["proxies"]
    # the plain requests behaviour, for contrast: the environment wins
    plain = requests.Session()
    plain.verify = str(tls.ca)
    assert plain.merge_environment_settings("https://x/", {}, None, None, None)["verify"] == str(
        tmp_path / "system-bundle.pem"
    )
