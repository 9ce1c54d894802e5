#!/usr/bin/env bash
# `make run`: a whole local cluster in the foreground: redis-server (unless REDIS_URL is
# given), three sio-node processes and sio-proxy on 127.0.0.1:4000. Prints the URL, a
# development JWT, a client snippet and the admin UI's address and credentials. Ctrl-C (or
# SIGTERM) stops everything it started, says so and exits 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

# Ctrl-C in a terminal signals the whole foreground process group: `make`, this script and
# everything it started. make would then die of that SIGINT whatever this script does, and
# report a failure. So in a terminal the cluster runs as a foreground job of its own (job
# control, `set -m`): Ctrl-C reaches only that job, which stops the cluster and exits 0, and
# make with it.
if [ -t 0 ] && [ -z "${SIO_RUN_JOB:-}" ]; then
  set -m
  SIO_RUN_JOB=1 "$0" "$@"
  exit $?
fi

bin="${SIO_BIN_DIR:-$root/target/release}"
secret="${SIO_JWT_SECRET:-dev-secret-change-me-dev-secret-change-me}"
api_key="${SIO_API_KEY:-dev-api-key}"
proxy_port="${PROXY_PORT:-4000}"
nodes="${NODES:-3}"
run_dir="$root/target/run"
mkdir -p "$run_dir"

for b in sio-node sio-proxy; do
  [ -x "$bin/$b" ] || { echo "run: $bin/$b is missing; run 'make run' (it builds in release mode)" >&2; exit 1; }
done
if [ "${#secret}" -lt 32 ]; then
  echo "run: SIO_JWT_SECRET must be at least 32 bytes (generate one with: openssl rand -base64 48)" >&2
  exit 1
fi

# Every process runs in a session of its own (`setsid`), so a Ctrl-C reaches only this script,
# which stops them in order.
detach=()
command -v setsid >/dev/null 2>&1 && detach=(setsid)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# What this script started, stopped in reverse order: the proxy, then the nodes (they drain
# and leave the registry), then Redis.
redis_pids=()
node_pids=()
proxy_pids=()
stopping=""

stop_all() { # exit code
  trap - INT TERM EXIT
  stopping=1
  local what=""
  [ ${#proxy_pids[@]} -gt 0 ] && what+=", sio-proxy"
  [ ${#node_pids[@]} -gt 0 ] && what+=", ${#node_pids[@]} × sio-node"
  [ ${#redis_pids[@]} -gt 0 ] && what+=", redis-server"
  echo
  if [ -n "$what" ]; then echo "run: stopping ${what#, }…"; fi
  for group in proxy_pids node_pids redis_pids; do
    local -n pids=$group
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  done
  if [ "$1" -eq 0 ]; then
    echo "run: stopped everything it started (logs in target/run/)"
  fi
  exit "$1"
}
trap 'stop_all 0' INT TERM
trap 'stop_all 1' EXIT

wait_http() { # url, what
  for _ in $(seq 1 200); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "run: $2 did not become ready ($1); see $run_dir/*.log" >&2
  exit 1
}

if [ -n "${REDIS_URL:-}" ]; then
  redis_url="$REDIS_URL"
  redis_shown="$REDIS_URL (yours)"
else
  command -v redis-server >/dev/null || "$root/deploy/local/deps.sh"
  redis_port=$(free_port)
  "${detach[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$run_dir/redis.log" 2>&1 &
  redis_pids+=($!)
  redis_url="redis://127.0.0.1:$redis_port"
  redis_shown="$redis_url"
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# the admin UI (deploy/admin-ui, installed by deps.sh): a development user with a fresh password
admin_modules="$root/deploy/admin-ui/node_modules"
admin_ui="$admin_modules/@socket.io/admin-ui/ui/dist"
[ -f "$admin_ui/index.html" ] || "$root/deploy/local/deps.sh"
admin_password="${ADMIN_PASSWORD:-$(node -e 'console.log(require("crypto").randomBytes(9).toString("base64url"))')}"
admin_hash=$(node -e 'console.log(require(process.argv[1]).hashSync(process.argv[2], 10))' \
  "$admin_modules/bcryptjs" "$admin_password")
admin_mode="${ADMIN_MODE:-development}"

backends=()
for i in $(seq 1 "$nodes"); do
  port=$(free_port)
  SIO_JWT_SECRET="$secret" SIO_API_KEY="$api_key" SIO_REDIS_URL="$redis_url" \
  SIO_ADMIN_USER=admin SIO_ADMIN_PASSWORD_HASH="$admin_hash" SIO_ADMIN_MODE="$admin_mode" \
  SIO_ADMIN_UI_DIR="$admin_ui" "${detach[@]}" "$bin/sio-node" \
    --listen "127.0.0.1:$port" --node-id "node-$i" --cors-origin '*' \
    >"$run_dir/node-$i.log" 2>&1 &
  node_pids+=($!)
  backends+=("127.0.0.1:$port")
done
for b in "${backends[@]}"; do wait_http "http://$b/readyz" "sio-node $b"; done

metrics_port=$(free_port)
SIO_PROXY_BACKENDS_REDIS="$redis_url" "${detach[@]}" "$bin/sio-proxy" --listen "127.0.0.1:$proxy_port" \
  --metrics-listen "127.0.0.1:$metrics_port" >"$run_dir/proxy.log" 2>&1 &
proxy_pids+=($!)
wait_http "http://127.0.0.1:$proxy_port/healthz" "sio-proxy"

# A development token: every room (`rooms: ["*"]`) and the dashboard (`admin: true`).
token=$(node -e '
const c = require("crypto");
const b = (x) => Buffer.from(x).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const h = b(JSON.stringify({ alg: "HS256", typ: "JWT" }));
const p = b(JSON.stringify({ sub: process.argv[2], rooms: ["*"], admin: true, iat: now, exp: now + 7 * 24 * 3600 }));
const s = b(c.createHmac("sha256", process.argv[1]).update(h + "." + p).digest());
console.log(h + "." + p + "." + s);
' "$secret" "alice")

url="http://127.0.0.1:$proxy_port"
cat <<EOM

sio-cluster is running: $url   (Ctrl-C stops everything)
  redis      $redis_shown
  nodes      ${backends[*]}   (logs in target/run/)
  proxy      $url, metrics http://127.0.0.1:$metrics_port/metrics

Admin UI: $url/admin/   user "admin", password "$admin_password"   ($admin_mode mode)

Development JWT for user "alice" (HS256, secret "$secret", valid 7 days,
claims rooms ["*"]: any room, admin true: /dashboard):
  $token

Client (npm i socket.io-client):
  import { io } from "socket.io-client";
  const token = "$token";
  const socket = io("$url", { auth: { token } });
  socket.on("connect", async () => {
    await socket.emitWithAck("join-room", "general");
    console.log(await socket.emitWithAck("room-message", { room: "general", text: "hello" }));
  });
  socket.on("room-message", (m) => console.log(m.sender + ": " + m.text));
  const notes = io("$url/notifications", { auth: { token } });
  notes.on("notification", (n) => console.log("notification", n));

Push a notification (reaches alice on whichever node she is):
  curl -s -X POST $url/api/notify -H 'Authorization: Bearer $api_key' \\
       -H 'Content-Type: application/json' -d '{"userId":"alice","message":"hello"}'

EOM
set +e
wait -n "${redis_pids[@]}" "${node_pids[@]}" "${proxy_pids[@]}"
status=$?
set -e
if [ -z "$stopping" ]; then
  echo "run: a process exited unexpectedly (status $status); see $run_dir/*.log" >&2
  stop_all 1
fi
