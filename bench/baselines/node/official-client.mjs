// bench/validate/run.sh runs this: the validation half of sio-load: the same scenario driven by the official socket.io-client
// 4.8, at small scale. N clients (userId `<prefix><i>`) connect with one transport, join room
// r<i / ROOM_SIZE>; the first member of each room emits `room-message` {room, text:
// "<step>:<unix ns>"} at an open-loop rate; every member records the latency of each delivery.
// Prints one JSON line with the counts and percentiles, in sio-load's terms.
//
//   URL=http://127.0.0.1:3000 TRANSPORT=websocket CLIENTS=100 ROOM_SIZE=100 RATE=2000 \
//   DURATION_MS=3000 node official-client.mjs
import { io } from "socket.io-client";

const url = process.env.URL;
const transport = process.env.TRANSPORT || "websocket";
const clients = Number(process.env.CLIENTS || 100);
const roomSize = Number(process.env.ROOM_SIZE || 100);
const rate = Number(process.env.RATE || 2000); // deliveries per second
const durationMs = Number(process.env.DURATION_MS || 3000);
const prefix = process.env.USER_PREFIX || `v${process.pid}-`;
const step = 1;

const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
const latencies = [];
let received = 0;
let stale = 0;

const sockets = await Promise.all(
  Array.from({ length: clients }, (_, i) =>
    new Promise((resolve, reject) => {
      const socket = io(url, {
        transports: [transport],
        upgrade: false,
        forceNew: true,
        reconnection: false,
        auth: { userId: `${prefix}${i}` },
      });
      socket.on("room-message", (m) => {
        const t = nowNs();
        const [s, sent] = String(m.text).split(":");
        if (Number(s) !== step) return void stale++;
        received++;
        latencies.push(Number(t - BigInt(sent)) / 1e6);
      });
      socket.on("connect_error", reject);
      socket.on("connect", () => {
        socket.emit("join-room", `r${Math.floor(i / roomSize)}`, (ack) =>
          ack?.ok ? resolve(socket) : reject(new Error(JSON.stringify(ack))),
        );
      });
    }),
  ),
);

const rooms = clients / roomSize;
const perRoom = rate / roomSize / rooms; // broadcasts per second per room
const period = 1000 / perRoom;
const start = performance.now() + 200;
let sent = 0;
await Promise.all(
  Array.from({ length: rooms }, (_, r) => {
    const sender = sockets[r * roomSize];
    const offset = (period * r) / rooms;
    return new Promise((resolve) => {
      let k = 0;
      const tick = () => {
        // Open loop: every message due by now goes out, carrying the time it was due.
        while (start + offset + k * period <= performance.now()) {
          const due = start + offset + k * period;
          if (due - start >= durationMs) return resolve();
          const dueNs = BigInt(Math.round((performance.timeOrigin + due) * 1e6));
          sender.emit("room-message", { room: `r${r}`, text: `${step}:${dueNs}` });
          sent++;
          k++;
        }
        setTimeout(tick, Math.max(0, start + offset + k * period - performance.now()));
      };
      setTimeout(tick, Math.max(0, start + offset - performance.now()));
    });
  }),
);

const expected = sent * roomSize;
const drainEnd = performance.now() + 5000;
while (received < expected && performance.now() < drainEnd) {
  await new Promise((r) => setTimeout(r, 50));
}
latencies.sort((a, b) => a - b);
const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.round((latencies.length - 1) * p))] : 0);
console.log(
  JSON.stringify({
    tool: "socket.io-client 4.8",
    transport,
    clients,
    room_size: roomSize,
    target_deliveries_per_sec: rate,
    sent,
    expected,
    received,
    lost: expected - received,
    stale,
    deliveries_per_sec: received / (durationMs / 1000),
    p50_ms: q(0.5),
    p99_ms: q(0.99),
    max_ms: q(1),
  }),
);
for (const s of sockets) s.disconnect();
process.exit(0);
