#!/usr/bin/env bash
# The price of the admin UI's server_stats on one node holding N idle WebSocket sockets
# (default 10,000): time to compute one server_stats (median of the node's own debug measurements),
# JSON bytes per second sent to each admin socket, and the node's whole CPU over the window
# with the admin namespace in production mode. Needs release builds:
#   cargo build --release -p sio-node -p sio-tests --bin sio-node --bin sio-load
#   bench/admin-stats.sh [N] [SECONDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n="${1:-10000}"
secs="${2:-30}"
work="$root/target/bench/admin-stats"
mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
sleep 0.5
port=$(free_port)
hash='$2a$04$k7SNVGMqI1/5.eGNCqVuweGF9evMRqHd9OTbSK6MoS8Iz4qeyIlLe'
SIO_LOG="info,sio_node::admin=debug" "$root/target/release/sio-node" --listen "127.0.0.1:$port" \
  --node-id bench-1 --auth none --redis-url "redis://127.0.0.1:$rport" \
  --admin-user admin --admin-password-hash "$hash" >"$work/node.log" 2>&1 &
node=$!
pids+=($node)
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

ticks() { awk -v HZ="$(getconf CLK_TCK)" '{print ($14 + $15) / HZ}' "/proc/$node/stat"; }
"$root/target/release/sio-load" run --url "http://127.0.0.1:$port/" --room-size 0 \
  --idle-steps "$n" --settle "${secs}s" --rss-pids "$node" >"$work/load.log" 2>&1 &
load=$!
pids+=($load)
# wait until the sockets are connected, then measure over the settle window
for _ in $(seq 1 600); do
  c=$(sed 's/\x1b\[[0-9;]*m//g' "$work/node.log" | grep -o 'clients=[0-9]*' | tail -1 | cut -d= -f2 || true)
  [ "${c:-0}" -ge "$n" ] && break
  sleep 1
done
cpu0=$(ticks); mark=$(wc -l <"$work/node.log")
sleep $((secs - 5))
cpu1=$(ticks)
wait "$load" || true
tail -n +"$mark" "$work/node.log" | sed 's/\x1b\[[0-9;]*m//g' | grep "server_stats computed" | python3 -c '
import re, statistics, sys
rows = [(int(re.search(r"micros=(\d+)", l).group(1)), int(re.search(r"bytes=(\d+)", l).group(1)),
         int(re.search(r"clients=(\d+)", l).group(1))) for l in sys.stdin]
if not rows: sys.exit("no server_stats measurements in the window")
us = statistics.median(r[0] for r in rows); b = statistics.median(r[1] for r in rows)
print(f"server_stats at {max(r[2] for r in rows)} clients: {len(rows)} samples, median {us:.0f} us each (wall time of the computation) "
      f"= {us / 2 / 1e4:.3f} % of a core; {b:.0f} JSON bytes each = {b / 2:.0f} B/s to each admin socket "
      f"(and one Redis publish of about that size every 2 s)")
'
echo "node CPU over $((secs - 5)) s with $n idle sockets (pings included): $(python3 -c "print(f'{($cpu1 - $cpu0) / ($secs - 5) * 100:.2f} % of a core')")"
