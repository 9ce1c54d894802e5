// The admin log-in's per-address lock-out cannot be dodged by writing X-Forwarded-For or
// X-Real-IP: through sio-proxy behind a trusted balancer (the proxy trusts this loopback
// peer; the balancer's hop says the client is 198.51.100.7), MAX_FAILURES wrong passwords,
// each with a different forged leftmost X-Forwarded-For and X-Real-IP, lock the client's
// address, and then even the right password is refused.
// URL: the proxy; ADMIN_USER / ADMIN_PASSWORD; FAILURES: the node's MAX_FAILURES.
import { io } from "socket.io-client";
import { URL, sleep } from "./lib.mjs";

const user = process.env.ADMIN_USER;
const failures = Number(process.env.FAILURES);

function login(password, i, mode) {
  const forged = `203.0.113.${i + 1}`;
  const socket = io(`${URL}/admin`, {
    transports: [mode],
    reconnection: false,
    forceNew: true,
    auth: { username: user, password },
    extraHeaders: { "X-Forwarded-For": `${forged}, 198.51.100.7`, "X-Real-IP": forged },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`log-in ${i}: no answer in 10 s`)), 10000);
    socket.on("connect", () => { clearTimeout(timer); socket.close(); resolve("connected"); });
    socket.on("connect_error", (e) => { clearTimeout(timer); socket.close(); resolve(e.message); });
  });
}

for (let i = 0; i < failures; i++) {
  const answer = await login("wrong-password", i, i % 2 ? "websocket" : "polling");
  if (answer !== "invalid credentials") throw new Error(`wrong password ${i} answered ${answer}`);
}
// the node checks at most 5 passwords a second: let that budget refill, so only the lock-out
// can refuse the right password
await sleep(1500);
const last = await login(process.env.ADMIN_PASSWORD, failures, "websocket");
if (!last.startsWith("too many failed logins")) {
  throw new Error(`after ${failures} failures under forged addresses the right password answered: ${last}`);
}
console.log(`[admin-lockout] ${failures} failures locked the address despite forged headers: ${last}`);
