#!/usr/bin/env bash
# Installs what `make images` / `make images-test` need on Debian: buildah (builds the images
# without a daemon), podman (imports the base root file system as an image, lists images),
# debootstrap (makes that base from the Debian mirror apt uses), kubectl is expected to be
# installed already (the manifest checks need it too), python3-yaml for the test driver.
# Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
python3 -c 'import yaml' >/dev/null 2>&1 || need+=(python3-yaml)

if [ ${#need[@]} -gt 0 ]; then
  echo "images-deps: installing ${need[*]} (apt)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "images-deps: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "images-deps: kubectl (1.30 or newer) is required to render k8s/overlays/*" >&2
  exit 1
fi
# the official client of the test's scenario (tests/js/images.mjs)
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ ! -d "$here/tests/js/node_modules/socket.io-client" ]; then
  echo "images-deps: npm ci (tests/js)"
  npm ci --prefix "$here/tests/js" --no-audit --no-fund --loglevel=error >/dev/null
fi
