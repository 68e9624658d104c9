#!/usr/bin/env bash
# Install and start the host services litefleet's tests and demo need: the Docker engine (and debootstrap for
# the offline base image), and gVisor's runsc registered with the engine it starts (tenants with `runtime: runsc`).
# Idempotent: skips what is already installed or running.
#
# runsc is registered through a daemon config of our own (DAEMON_CONFIG: /etc/docker/daemon.json's settings plus
# `runtimes.runsc`, path and `--network=host` from control_plane/drivers/runtimes.py). An engine that already runs
# is never restarted: if it lacks runsc this says so, and runsc tenants are placed on other nodes.
#
# LITEFLEET_FRESH_ENGINE=1 (set by .ci/run): when this script starts the engine itself, it gets a new, empty data
# root and exec root, so images, networks and volumes left by earlier runs cannot hide a missing step. Data roots
# of earlier fresh engines (recorded under $FRESH_ROOT) are removed first; an engine that already answers is
# reused as it is, and says so.
set -euo pipefail

FRESH_ROOT=/var/lib/litefleet-engines
DAEMON_CONFIG=/etc/litefleet/dockerd.json

remove_tree() {  # unmount whatever is mounted under $1, deepest first, then remove it
  awk -v root="$1/" 'index($2, root) == 1 || $2 == substr(root, 1, length(root) - 1) {print $2}' /proc/self/mounts \
    | sort -r | while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done
  rm -rf "$1" 2>/dev/null || echo "note: could not remove the old engine root $1; left in place" >&2
}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
# the dashboard's browser tests: headless Chromium driven by Selenium
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# gVisor (Debian's 20221219 build): the sandboxed runtime; ctr (containerd) cleans what a failed runsc start leaks
command -v runsc >/dev/null || need+=(runsc)
command -v ctr >/dev/null || need+=(containerd)
if ((${#need[@]})); then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

write_daemon_config() {  # /etc/docker/daemon.json (if any) + runsc, into $1
  mkdir -p "$(dirname "$1")"
  python3 - "$1" "$(command -v runsc)" <<'PY'
import json, os, sys
target, runsc = sys.argv[1], sys.argv[2]
base = "/etc/docker/daemon.json"
config = json.load(open(base)) if os.path.exists(base) else {}
if os.environ.get("LITEFLEET_FRESH_ENGINE") == "1":  # given as flags below: dockerd refuses a directive given twice
    config.pop("data-root", None), config.pop("exec-root", None)
# the same entry as control_plane.drivers.runtimes.runsc_runtime: --network=host (gVisor #10704 on this kernel)
config.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=host"]}
json.dump(config, open(target, "w"), indent=2)
PY
}

if docker info >/dev/null 2>&1; then
  [ "${LITEFLEET_FRESH_ENGINE:-0}" = 1 ] && echo "note: a Docker engine already runs; reusing it (not fresh)" >&2
  runtimes="$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null || true)"
  [[ " $runtimes" == *" runsc "* ]] \
    || echo "note: the running engine has no runsc runtime (it is not restarted here); runsc tenants go to other nodes" >&2
else
  write_daemon_config "$DAEMON_CONFIG"
  args=(--config-file "$DAEMON_CONFIG")
  if [ "${LITEFLEET_FRESH_ENGINE:-0}" = 1 ]; then
    # no engine answers, so no earlier fresh engine is using its roots any more. A killed dockerd leaves its data
    # root bind-mounted on itself and its containers' overlays mounted: unmount everything under an old root
    # (deepest first) before removing it. A root that still cannot be removed is reported, never fatal: the new
    # engine gets its own directories either way.
    for old in "$FRESH_ROOT"/*/ /run/litefleet-engine-*/; do
      [ -d "$old" ] || continue
      remove_tree "${old%/}"
    done
    run="$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$FRESH_ROOT/$run"
    args+=(--data-root "$FRESH_ROOT/$run/data" --exec-root "/run/litefleet-engine-$run")
    echo "fresh engine: data root $FRESH_ROOT/$run/data, exec root /run/litefleet-engine-$run"
  fi
  nohup dockerd "${args[@]}" >/tmp/litefleet-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/litefleet-dockerd.log" >&2; exit 1; }
fi
echo "host ready: $(docker version --format 'docker {{.Server.Version}}') (data root $(docker info --format '{{.DockerRootDir}}'), runtimes $(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}'))"
