// Delivery latency of room messages, same node versus across nodes (through Redis).
// SEND_URL: the sender's node; SAME_URL / CROSS_URL: where the two receivers connect.
// Prints JSON: p50/p99/max in ms for each receiver over COUNT messages sent at RATE/s.
import { connect, ack, sleep } from "./lib.mjs";

const COUNT = Number(process.env.COUNT || 1000);
const RATE = Number(process.env.RATE || 200);
const room = `lat-${Math.random().toString(36).slice(2, 8)}`;
const sender = await connect("lat-sender", { url: process.env.SEND_URL, mode: "websocket" });
const receivers = {
  same_node: await connect("lat-same", { url: process.env.SAME_URL, mode: "websocket" }),
  cross_node: await connect("lat-cross", { url: process.env.CROSS_URL, mode: "websocket" }),
};
for (const s of [sender, ...Object.values(receivers)]) await ack(s, "join-room", room);
const samples = Object.fromEntries(Object.keys(receivers).map((k) => [k, []]));
for (const [name, s] of Object.entries(receivers)) {
  s.on("room-message", (m) => {
    const t = Number(m.text);
    if (!Number.isNaN(t)) samples[name].push(performance.now() - t);
  });
}
await sleep(200);
const gap = 1000 / RATE;
const start = performance.now();
for (let i = 0; i < COUNT; i++) {
  const due = start + i * gap;
  const wait = due - performance.now();
  if (wait > 0) await sleep(wait);
  sender.emit("room-message", { room, text: String(performance.now()) });
}
const deadline = performance.now() + 5000;
while (Object.values(samples).some((v) => v.length < COUNT) && performance.now() < deadline) await sleep(20);
const pct = (v, p) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? Number(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))].toFixed(3)) : null;
};
const out = {};
for (const [k, v] of Object.entries(samples)) {
  out[k] = { received: v.length, p50_ms: pct(v, 50), p99_ms: pct(v, 99), max_ms: pct(v, 100) };
}
console.log(JSON.stringify({ count: COUNT, rate_per_s: RATE, ...out }));
process.exit(0);
