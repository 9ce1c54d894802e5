#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs when missing (HAProxy, nginx, perf, the
# jemalloc/mimalloc libraries, the Node baseline's npm packages, matplotlib in a venv under
# ~/.cache/sio-cluster/), then runs bench/bench.py, which starts every system itself, measures,
# writes bench/results/<date>.{json,md} and charts, and stops every process it started.
# Arguments are passed to bench.py (`--quick`, `--only idle,fanout`, …).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)
# The whole run, build included, must stay under 30 minutes on a 2-core machine: bench.py
# drops repetitions when it runs late.
export BENCH_DEADLINE=$((started + ${BENCH_BUDGET_MIN:-28} * 60))
export BENCH_STARTED=$started

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
[ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || need+=(libjemalloc2)
[ -e /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 ] || need+=(libmimalloc2.0)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]} (apt)"
  # Debian starts a package's service on install; a policy-rc.d that says no keeps HAProxy and
  # nginx from running as system services: the benchmark runs its own, on loopback ports.
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$added_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  for svc in haproxy nginx; do
    if command -v service >/dev/null 2>&1; then $sudo service "$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

node_dir="$root/bench/baselines/node"
if [ ! -d "$node_dir/node_modules/socket.io" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "bench: npm ci (bench/baselines/node)"
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/sio-cluster/bench-venv"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$root/bench/requirements.txt" "$stamp"; then
  echo "bench: python venv with matplotlib ($venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/bench/requirements.txt"
  cp "$root/bench/requirements.txt" "$stamp"
fi

if [ -z "${SIO_BIN_DIR:-}" ]; then
  # `make release`: cmake, redis-server and the rest of the build's needs, then release binaries.
  echo "bench: building release binaries (make release)"
  make --no-print-directory -C "$root" release
fi
# The bare socketioxide + socketioxide-redis baseline (issue 12): its own Cargo project (not a
# workspace member), its own target directory, the committed Cargo.lock.
if [ -z "${SIO_SXR_BIN:-}" ]; then
  echo "bench: building the socketioxide-redis baseline (bench/baselines/socketioxide-redis)"
  cargo build --release --locked --quiet \
    --manifest-path "$root/bench/baselines/socketioxide-redis/Cargo.toml" \
    --target-dir "$root/target/bench/build/socketioxide-redis"
fi
bin="${SIO_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}"
export SIO_BIN_DIR="$bin"
for b in sio-node sio-proxy sio-load; do
  [ -x "$bin/$b" ] || { echo "bench: $bin/$b is missing" >&2; exit 1; }
done
echo "bench: setup took $(($(date +%s) - started)) s"

# bench.py stops what it started on exit, failure, Ctrl-C (SIGINT) and SIGTERM.
exec "$venv/bin/python" "$root/bench/bench.py" "$@"
