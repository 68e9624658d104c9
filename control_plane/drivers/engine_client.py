"""A docker SDK client for one node engine URL, and the policy on which URLs the control plane may use at all.

    unix:///path          the local engine's socket
    tcp://HOST:PORT       mutual TLS: our client certificate, the engine's certificate checked against our CA.
                          Plain (no TLS) only for a loopback HOST, or when the node is explicitly `insecure`:
                          a plain TCP engine is root on that host for whoever can open a connection to it.
    ssh://[USER@]HOST     the docker SDK over paramiko (`pip install litefleet[ssh]`)

Anything else is refused before any connection is attempted. Errors never say what a connection attempt found
(refused, timed out, a TLS alert, an HTTP answer): an engine URL must not become a probe of the control plane's
network. The details go to the log.

Why the session ignores the environment: `requests` lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on many
machines, ours included) override the CA the SDK was given, so every TLS engine fails verification; it would
also send engine traffic through HTTP(S)_PROXY. An engine client takes nothing from the environment.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.tls
import structlog

from control_plane.drivers.base import EngineUnreachable
from control_plane.pki import EngineTLS

__all__ = [
    "EngineTLSInvalid",
    "EngineURLRefused",
    "EngineURLScheme",
    "EngineUnreachable",
    "InsecureEngineURL",
    "engine_client",
    "is_loopback",
]

log = structlog.get_logger("control_plane.engine_client")

SCHEMES = ("unix", "tcp", "ssh")
_warned: set[str] = set()


class EngineURLRefused(EngineUnreachable):
    """Refused by policy, before any connection was attempted."""

    code = "engine_url_refused"


class EngineURLScheme(EngineURLRefused):
    code = "engine_url_scheme"


class InsecureEngineURL(EngineURLRefused):
    code = "insecure_engine_url"


class EngineTLSInvalid(EngineURLRefused):
    code = "engine_tls_invalid"


class _EngineAPIClient(docker.APIClient):
    """`docker.APIClient` (a `requests.Session`) that never reads the environment: not REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE (they would replace our CA), not proxies, not .netrc. A property, not an assignment after
    construction, because the SDK's first request (API version detection) runs inside its constructor."""

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, _: bool) -> None:  # requests.Session.__init__ sets True; we stay False
        pass


class _EngineClient(docker.DockerClient):
    def __init__(self, **kwargs: Any) -> None:  # DockerClient's own __init__ only builds `self.api`
        self.api = _EngineAPIClient(**kwargs)


def engine_client(
    url: str,
    *,
    tls: EngineTLS | None = None,
    insecure: bool = False,
    timeout: float = 60.0,
    version: str | None = None,
) -> docker.DockerClient:
    """A connected client for the engine at `url` (the API version is negotiated unless `version` is given).

    Raises `EngineURLScheme` / `InsecureEngineURL` / `EngineTLSInvalid` (policy, nothing was contacted) or
    `EngineUnreachable` (the engine did not answer in time, or the TLS handshake failed). Building a client has no
    side effect on the engine, so calling this again (a retry, a second client for pings) is harmless."""
    kwargs = _client_kwargs(url, tls=tls, insecure=insecure)
    try:
        return _EngineClient(timeout=max(1, round(timeout)), version=version or "auto", **kwargs)
    except Exception as exc:  # SDK, requests, ssl, socket and paramiko errors alike: the engine is not usable
        log.warning("engine.unreachable", scheme=urlsplit(url).scheme, error=type(exc).__name__, detail=str(exc))
        raise EngineUnreachable("the engine does not answer (details in the control plane's log)") from None


def _client_kwargs(url: str, *, tls: EngineTLS | None, insecure: bool) -> dict[str, Any]:
    """The SDK arguments for `url`, after the policy checks (no I/O but checking that TLS files exist)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise EngineURLScheme("not a valid engine URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise EngineURLScheme("engine URLs must be unix://, tcp:// (with TLS) or ssh://")
    if scheme == "unix":
        if tls is not None:
            raise EngineTLSInvalid("TLS credentials apply to tcp:// engines only")
        if not parts.path or parts.netloc:
            raise EngineURLScheme("a unix:// engine URL names a socket path: unix:///var/run/docker.sock")
        return {"base_url": url}
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EngineURLScheme("an engine URL is scheme://host[:port], nothing more")
    if scheme == "ssh":
        if tls is not None:
            raise EngineTLSInvalid("TLS credentials apply to tcp:// engines only")
        try:
            import paramiko  # noqa: F401 (the SDK needs it; its own error would surface only at connect time)
        except ImportError:
            raise EngineURLScheme("ssh:// engine URLs need paramiko: pip install 'litefleet[ssh]'") from None
        return {"base_url": url, "use_ssh_client": False}
    if tls is None:
        if not (insecure or is_loopback(host)):
            raise InsecureEngineURL(
                "plain tcp:// gives whoever reaches the engine root on its host: give the node TLS client "
                "credentials, or register it as insecure (only loopback engines need neither)"
            )
        if not is_loopback(host) and url not in _warned:
            _warned.add(url)  # once per URL, not on every heartbeat
            log.warning("engine.insecure", url=url, detail="plain tcp:// engine without TLS, by explicit request")
        return {"base_url": url}
    missing = tls.missing()
    if missing:
        raise EngineTLSInvalid(f"the engine's TLS credentials are incomplete (missing: {', '.join(missing)})")
    config = docker.tls.TLSConfig(client_cert=(str(tls.cert), str(tls.key)), ca_cert=str(tls.ca), verify=True)
    return {"base_url": url, "tls": config}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost` itself. Other names are not resolved: a name can point anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
