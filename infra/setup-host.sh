#!/usr/bin/env bash
# Install and start the host services litefleet's tests and demo need: the Docker engine (and debootstrap for
# the offline base image). Idempotent: skips what is already installed or running.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/tmp/litefleet-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/litefleet-dockerd.log" >&2; exit 1; }
fi
echo "host ready: $(docker version --format 'docker {{.Server.Version}}')"
