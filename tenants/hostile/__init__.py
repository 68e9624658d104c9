"""A hostile tenant, for the isolation test: its workflows try, from inside its own agent container, to reach what a
tenant must never reach, and report what happened to each attempt (they never raise: the report is the result).

    probe([[label, host, port], ...], timeout)        -> {label: "connected" | "timeout" | "refused" | ...}
    fetch([[label, url], ...], timeout)               -> {label: HTTP status or the failure}
    s3([[label, method, bucket, key], ...])           -> {label: HTTP status}, signed with this agent's own S3 key

It reads its agent's secrets file and imports agent_image internals, as hostile code would."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_image import step, workflow

__version__ = "1"


def _connect(host: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc.strerror or type(exc).__name__}"


@step
def connect_all(targets: list[list[Any]], timeout: float) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        outcomes = pool.map(lambda target: _connect(str(target[1]), int(target[2]), timeout), targets)
        return {str(target[0]): outcome for target, outcome in zip(targets, outcomes, strict=True)}


@workflow
def probe(targets: list[list[Any]], timeout: float = 2.0) -> dict[str, str]:
    return connect_all(targets, timeout)


def _get(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return str(answer.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except urllib.error.URLError as exc:
        reason = exc.reason
        return "timeout" if isinstance(reason, TimeoutError) else f"error: {reason}"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc.strerror or type(exc).__name__}"


@step
def get_all(urls: list[list[str]], timeout: float) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        outcomes = pool.map(lambda pair: _get(pair[1], timeout), urls)
        return {pair[0]: outcome for pair, outcome in zip(urls, outcomes, strict=True)}


@workflow
def fetch(urls: list[list[str]], timeout: float = 2.0) -> dict[str, str]:
    return get_all(urls, timeout)


@step
def s3_requests(attempts: list[list[str]]) -> dict[str, str]:
    from agent_image.container.s3 import S3Client

    secrets_file = Path(os.environ.get("LITEFLEET_SECRETS_FILE", "/run/litefleet/secrets/identity.json"))
    identity = json.loads(secrets_file.read_text())
    client = S3Client(os.environ["LITEFLEET_S3_ENDPOINT"], identity["access_key"], identity["secret_key"])
    found: dict[str, str] = {}
    for label, method, bucket, key in attempts:
        try:
            body = b"overwritten by a hostile tenant" if method == "PUT" else b""
            status, _ = client._request(method, bucket, key, body)
            found[label] = str(status)
        except OSError as exc:
            found[label] = f"error: {exc.strerror or type(exc).__name__}"
    return found


@workflow
def s3(attempts: list[list[str]]) -> dict[str, str]:
    return s3_requests(attempts)
