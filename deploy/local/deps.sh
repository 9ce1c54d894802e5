#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test sio-cluster:
# cmake (pingora), redis-server (tests and `make run`), promtool and prometheus (metric
# checks), chromium (the browser test), the npm packages of the JavaScript scenarios and the
# admin UI's static files (deploy/admin-ui). Safe to run again: it only installs what is missing.
# It never stops or kills anything: services a package starts (Debian's prometheus, redis-server)
# keep running; the tests and `make run` start their own servers on free ports and do not mind them.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/chromium ] || need+=(chromium)   # browser test of the client bundle

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]} (apt)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "deps: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # --no-install-recommends keeps the prometheus package from pulling a web UI stack
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "deps: Node.js 20 and npm are required (https://nodejs.org or apt-get install nodejs npm)" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps: installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi

here=$(cd "$(dirname "$0")/../.." && pwd)
if [ ! -d "$here/tests/js/node_modules/socket.io-client" ] || [ "$here/tests/js/package-lock.json" -nt "$here/tests/js/node_modules/.package-lock.json" ]; then
  echo "deps: npm ci (tests/js)"
  npm ci --prefix "$here/tests/js" --no-audit --no-fund --loglevel=error >/dev/null
fi
# the admin UI's static files (@socket.io/admin-ui ui/dist, and its fonts), served by the nodes
# at /admin/ with --admin-ui-dir; installed, never committed
ui="$here/deploy/admin-ui"
if [ ! -f "$ui/node_modules/@socket.io/admin-ui/ui/dist/index.html" ] || [ "$ui/package-lock.json" -nt "$ui/node_modules/.package-lock.json" ]; then
  echo "deps: npm ci (deploy/admin-ui)"
  npm ci --prefix "$ui" --no-audit --no-fund --loglevel=error >/dev/null
fi
