"""OCI runtimes a tenant may ask for, and what each needs from the engine, the container and the node.

`runc` is every engine's default. `runsc` is gVisor (Debian's package, gVisor 20221219): each container gets its
own user-space kernel, so tenant code meets gVisor's Sentry, not the node's kernel. Debian's build needs three
workarounds on this kernel (../shared/ENVIRONMENT.md, "Sandboxes"), all handled here:

- registration with `--network=host` (`runsc_runtime`, used by infra/setup-host.sh and infra/testbed.py): without
  it every start fails ("cannot run with network enabled in root network namespace", gVisor #10704). Socket calls
  then go to the kernel of the container's own network namespace: Docker's namespace and iptables isolation apply;
- the sandbox's own threads count against the container's pids limit (~111 for the agent's entrypoint) and past
  it the whole sandbox panics: `pids_limit` gives runsc containers `RUNSC_PIDS_HEADROOM` more;
- a failed start leaks the sandbox's state, its shim and containerd task (and `docker rm` does not clean them):
  `reap_sandbox` runs `runsc delete --force` and `ctr tasks rm` / `containers rm` *on the node*, through the node's
  own engine, so it works for a remote node as for a local one (see its docstring);
- this runsc has no `update` subcommand, so `docker update` of a running runsc container fails: `updates_in_place`
  says so, and a runsc follower gets no memory allowance to lower later (it starts at its agent's limit)."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from control_plane.db.models import DEFAULT_RUNTIME, Runtime
from control_plane.drivers.sdk import errors as docker_errors

__all__ = [
    "DEFAULT_RUNTIME",
    "Runtime",
    "engine_runtimes",
    "pids_limit",
    "reap_failed_start",
    "runsc_runtime",
    "updates_in_place",
]

log = structlog.get_logger("control_plane.drivers.runtimes")

RUNSC_ARGS = ("--network=host",)
RUNSC_PIDS_HEADROOM = 256  # the sandbox's threads: ~50 idle for a bare server, ~111 for the agent's entrypoint


def runsc_runtime(path: str = "/usr/bin/runsc") -> dict[str, object]:
    """The daemon.json `runtimes` entry for runsc."""
    return {"path": path, "runtimeArgs": list(RUNSC_ARGS)}


def pids_limit(runtime: str, pids: int) -> int:
    """The container's pids limit: the agent's own `pids`, plus the sandbox's threads under runsc."""
    return pids + RUNSC_PIDS_HEADROOM if runtime == Runtime.runsc else pids


def updates_in_place(runtime: str) -> bool:
    """Whether a running container's limits can be changed (`docker update`): runc's can, runsc's cannot."""
    return runtime != Runtime.runsc


def engine_runtimes(info: dict[str, Any]) -> list[str]:
    """The runtimes an engine offers (`docker info` Runtimes), ours first-class: sorted, containerd's internal
    shim names left out."""
    return sorted(name for name in (info.get("Runtimes") or {}) if not name.startswith("io.containerd."))


# Run inside the reaper container (pid and mount namespaces of the host, root chrooted to /host). It finds the
# dead container's runsc state file under the engine's exec root, and the containerd address from the shim's
# command line (or, with the shim gone, the exec root's own containerd socket: Docker 20.10's layout), then runs
# the node's own runsc and ctr. Every step tolerates "already gone": the script is safe to run again.
_REAPER = r"""
import glob, os, subprocess, sys
cid, runsc = sys.argv[1], sys.argv[2]
os.chroot("/host"); os.chdir("/")
roots = sorted({os.path.dirname(p) for p in glob.glob("/run/**/runtime-*/moby/" + cid + "*.state", recursive=True)})
address = None
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        args = open("/proc/" + pid + "/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        continue
    if "-id" in args and cid in args and "-address" in args:
        address = args[args.index("-address") + 1]
done = []
for root in roots:
    done.append(subprocess.run([runsc, "--root=" + root, "delete", "--force", cid]).returncode)
    address = address or os.path.join(os.path.dirname(os.path.dirname(root)), "containerd", "containerd.sock")
if address:
    for what in ("tasks", "containers"):
        done.append(subprocess.run(["ctr", "-a", address, "-n", "moby", what, "rm", cid]).returncode)
print("roots=%d address=%s rc=%s" % (len(roots), bool(address), done))
"""


def reap_sandbox(client: Any, container_id: str, image: str, runsc_path: str = "/usr/bin/runsc") -> str:
    """Clean what a failed runsc start leaves on the node: the sandbox (`runsc delete --force`) and the
    containerd task and container that hold its shim. Returns the reaper's one-line summary.

    It runs where the leak is, through the node's engine: a short-lived container of `image` (the agent image,
    already on every node that ran an agent) under runc, privileged, in the host's pid namespace with the host's
    root at /host, chrooted there to run the node's own runsc and ctr. That is root on the node, which whoever holds
    the engine's API already has; it runs only control-plane code, never tenant code. Safe to repeat: a sandbox or
    task that is already gone is skipped (runsc/ctr answer "not found" and nothing changes)."""
    try:
        output = client.containers.run(
            image,
            entrypoint=["/opt/litefleet/bin/python3", "-c", _REAPER, container_id, runsc_path],
            command=[],
            remove=True,
            cap_add=["SYS_ADMIN", "SYS_PTRACE", "KILL", "SYS_CHROOT"],  # not --privileged: every cap, some absent
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            pid_mode="host",
            cgroupns="host",
            network_mode="none",
            runtime=Runtime.runc.value,
            user="0:0",
            volumes={"/": {"bind": "/host", "mode": "rw"}},
            labels={"io.litefleet.reaper": container_id[:12]},
        )
    except docker_errors.DockerException as exc:
        log.warning("runsc.reap_failed", container=container_id[:12], error=type(exc).__name__, detail=str(exc))
        return f"reaper failed: {type(exc).__name__}"
    summary = (output or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    log.info("runsc.reaped", container=container_id[:12], summary=summary[0])
    return summary[0]


def reap_failed_start(client: Any, name: str, image: str) -> bool:
    """After a failed runsc start of container `name`: reap its sandbox on the node, then remove the container (it
    never ran; its volume stays). True when something was reaped. Safe to repeat: a container that is gone or
    running (not a failed start) is left alone, and the reaper tolerates what is already gone."""
    try:
        container = client.containers.get(name)
    except docker_errors.NotFound:
        return False
    if container.status not in ("created", "exited", "dead"):
        return False
    runtimes = client.info().get("Runtimes") or {}
    reap_sandbox(client, container.id, image, runtimes.get(Runtime.runsc.value, {}).get("path", "/usr/bin/runsc"))
    with contextlib.suppress(docker_errors.NotFound):
        container.remove(force=True)
    return True
