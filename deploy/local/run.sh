#!/usr/bin/env bash
# `make run`: starts a local sio-node on 127.0.0.1:3000 in the foreground with development
# secrets, prints how to connect, and stops everything it started on Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="${SIO_BIN_DIR:-$root/target/release}"
secret="${SIO_JWT_SECRET:-dev-secret-change-me-dev-secret-change-me}"
api_key="${SIO_API_KEY:-dev-api-key}"
port="${PORT:-3000}"

token=$(node -e '
const c = require("crypto");
const b = (x) => Buffer.from(x).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const h = b(JSON.stringify({ alg: "HS256", typ: "JWT" }));
const p = b(JSON.stringify({ sub: process.argv[2], iat: now, exp: now + 7 * 24 * 3600 }));
const s = b(c.createHmac("sha256", process.argv[1]).update(h + "." + p).digest());
console.log(h + "." + p + "." + s);
' "$secret" "alice")

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

SIO_JWT_SECRET="$secret" SIO_API_KEY="$api_key" "$bin/sio-node" \
  --listen "127.0.0.1:$port" --node-id node-1 --cors-origin '*' &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done

cat <<EOM

sio-node is running at http://127.0.0.1:$port   (Ctrl-C stops it)

Development JWT for user "alice" (HS256, secret "$secret", valid 7 days):
  $token

Client (npm i socket.io-client):
  import { io } from "socket.io-client";
  const socket = io("http://127.0.0.1:$port", { auth: { token: "$token" } });
  socket.on("connect", () => socket.emit("join-room", "general"));
  socket.on("room-message", (m) => console.log(m));
  const notes = io("http://127.0.0.1:$port/notifications", { auth: { token: "$token" } });
  notes.on("notification", (n) => console.log("notification", n));

Push a notification:
  curl -s -X POST http://127.0.0.1:$port/api/notify -H 'Authorization: Bearer $api_key' \\
       -H 'Content-Type: application/json' -d '{"userId":"alice","message":"hello"}'

EOM
wait "${pids[0]}"
