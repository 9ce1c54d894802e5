// Limits of a node, hit by a hostile client while a bystander on the same node keeps
// talking: each scenario checks the refusals, the metric that counts them, and that the
// bystander's room messages all arrive, with a p99 latency within max(2 x idle, idle + 50 ms)
// of its idle run measured just before.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { ack, connect, main, once, sleep, socketFor, token, URL, waitFor } from "./lib.mjs";

/** Sum of the samples of `name` whose labels include `labels`, read from the node's /metrics. */
async function metric(name, labels = {}, url = URL) {
  const text = await (await fetch(url + "/metrics")).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] || "").includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

function p99(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))];
}

/** Two sockets of other users in room "bystander", in a worker thread of their own (so the
 * hostile client's work in this thread does not delay them): one sends a room message every
 * `every` ms, the other times their arrival. */
async function bystanderWorker({ every }) {
  const rx = await connect("bystander-rx", { mode: "websocket" });
  const tx = await connect("bystander-tx", { mode: "websocket" });
  await ack(rx, "join-room", "bystander");
  await ack(tx, "join-room", "bystander");
  const got = new Map();
  const chats = [];
  rx.on("room-message", (m) => {
    if (m.room !== "bystander") return;
    const [seq, sent] = JSON.parse(m.text);
    got.set(seq, Date.now() - sent);
  });
  rx.on("chat-message", (data) => chats.push(data));
  let seq = 0;
  parentPort.on("message", async ({ ms }) => {
    if (ms === undefined) {
      rx.close();
      tx.close();
      return parentPort.postMessage({ closed: true, chats });
    }
    const first = seq;
    const end = Date.now() + ms;
    while (Date.now() < end) {
      tx.emit("room-message", { room: "bystander", text: JSON.stringify([seq++, Date.now()]) });
      await sleep(every);
    }
    const last = seq;
    try {
      await waitFor(() => {
        for (let i = first; i < last; i++) if (!got.has(i)) return false;
        return true;
      }, 10000, `every bystander message (${last - first} sent)`);
    } catch (e) {
      return parentPort.postMessage({ error: String(e) });
    }
    const latencies = [];
    for (let i = first; i < last; i++) latencies.push(got.get(i));
    parentPort.postMessage({ p99: p99(latencies), sent: last - first });
  });
  parentPort.postMessage({ ready: true });
}

async function bystander(every) {
  const worker = new Worker(new globalThis.URL(import.meta.url), { workerData: { every } });
  const next = () =>
    new Promise((resolve, reject) => {
      worker.once("message", (m) => (m.error ? reject(new Error(m.error)) : resolve(m)));
      worker.once("error", reject);
    });
  await next();
  const phase = (ms) => {
    const answer = next();
    worker.postMessage({ ms });
    return answer;
  };
  const close = async () => {
    const answer = next();
    worker.postMessage({});
    const { chats } = await answer;
    await worker.terminate();
    return chats;
  };
  return { phase, close };
}

/** Runs `attack` while the bystander talks; asserts it kept its latency and lost nothing
 * (every message it sent arrived). */
async function withBystander(attack, { every = 20, ms = 3000 } = {}) {
  const b = await bystander(every);
  const idle = await b.phase(2000);
  const [loaded, result] = await Promise.all([b.phase(ms), attack()]);
  const bound = Math.max(2 * idle.p99, idle.p99 + 50);
  console.log(`bystander p99: idle ${idle.p99} ms (${idle.sent} msgs), under attack ${loaded.p99} ms (${loaded.sent} msgs), bound ${bound} ms; lost 0`);
  assert.ok(loaded.p99 <= bound, `bystander p99 ${loaded.p99} ms > ${bound} ms (idle ${idle.p99} ms)`);
  const chats = await b.close();
  return { ...result, chats };
}

const code = (answer) => answer?.error?.code;

if (!isMainThread) await bystanderWorker(workerData);
else main({
  // URL: --max-rooms-per-socket 20 --max-rooms-per-user 30; URL2 (same Redis):
  // --max-rooms-per-socket 100 --max-rooms-per-user 30
  async rooms() {
    const URL2 = process.env.URL2;
    await withBystander(async () => {
      const h1 = await connect("hog", { mode: "websocket" });
      const first = [];
      for (let i = 0; i < 100; i++) first.push(await ack(h1, "join-room", `a-${i}`));
      assert.equal(first.filter((a) => a.ok).length, 20, JSON.stringify(first.slice(18, 22)));
      assert.ok(first.slice(20).every((a) => code(a) === "too_many_rooms"), JSON.stringify(first[20]));
      // the refused joins changed nothing
      assert.equal(code(await ack(h1, "room-message", { room: "a-50", text: "x" })), "not_in_room");
      const presence = await (await fetch(`${URL}/api/presence/a-50`, { headers: { authorization: `Bearer ${process.env.API_KEY}` } })).json();
      assert.equal(presence.count, 0, JSON.stringify(presence));
      // a second socket of the same user: the user's limit (30 rooms in all)
      const h2 = await connect("hog", { mode: "websocket", url: URL2 });
      const second = [];
      for (let i = 0; i < 100; i++) second.push(await ack(h2, "join-room", `b-${i}`));
      assert.equal(second.filter((a) => a.ok).length, 10, JSON.stringify(second.slice(8, 12)));
      assert.ok(second.slice(10).every((a) => code(a) === "too_many_rooms"), JSON.stringify(second[10]));
      // without an ack the refusal comes as an error event
      const err = once(h2, "error");
      h2.emit("join-room", "c-0");
      const e = await err;
      assert.equal(e.code, "too_many_rooms");
      assert.equal(e.event, "join-room");
      h1.close();
      h2.close();
      // a reconnect restores at most --max-rooms-per-socket of the 30 stored rooms
      const h3 = socketFor("hog", { mode: "websocket" });
      const restored = await once(h3, "rooms-restored");
      assert.equal(restored.rooms.length, 20, JSON.stringify(restored));
      h3.close();
    });
    assert.ok((await metric("sio_limit_refusals_total", { limit: "rooms_per_socket" })) >= 80 + 10);
    assert.ok((await metric("sio_limit_refusals_total", { limit: "rooms_per_user" }, URL2)) >= 91);
    assert.ok((await metric("sio_event_errors_total", { code: "too_many_rooms" })) >= 80);
  },

  // --max-payload 100000 --max-pending-bytes 250000, a join hook answering slow-* after 2 s
  async pending_bytes() {
    const answers = await withBystander(async () => {
      const h = await connect("hog", { mode: "websocket", auth: { token: token("hog", { rooms: ["bystander"] }) } });
      const big = "x".repeat(80000);
      // Each join waits 2 s on the hook, and carries 80 KB: the first runs, two wait
      // (240 KB held), the other seven are refused at once.
      const sent = Array.from({ length: 10 }, (_, i) => h.timeout(15000).emitWithAck("join-room", `slow-${i}`, big));
      const out = await Promise.all(sent);
      h.close();
      return { out };
    }).then((r) => r.out);
    assert.equal(answers.filter((a) => a.ok).length, 3, JSON.stringify(answers.map((a) => a.ok ?? code(a))));
    assert.equal(answers.filter((a) => code(a) === "overloaded").length, 7);
    assert.equal(await metric("sio_limit_refusals_total", { limit: "pending_bytes" }), 7);
    assert.ok((await metric("sio_event_errors_total", { code: "overloaded" })) >= 7);
  },

  // --event-rate 40 --event-burst 20; the bystander sends 20/s
  async event_rate() {
    const result = await withBystander(async () => {
      const h = await connect("hog", { mode: "websocket" });
      await ack(h, "join-room", "spam");
      const codes = { ok: 0 };
      let errors = 0;
      h.on("error", () => errors++);
      const disconnected = once(h, "disconnect", 15000);
      const started = Date.now();
      let sent = 0;
      // 1,000 room messages a second until the node disconnects the socket (at most 10 s)
      let reason;
      disconnected.then((r) => (reason = Array.isArray(r) ? r[0] : r));
      while (!reason && Date.now() - started < 10000) {
        for (let i = 0; i < 10; i++) {
          sent++;
          if (i === 0) h.emit("room-message", { room: "spam", text: "no ack" });
          else
            h.timeout(5000).emitWithAck("room-message", { room: "spam", text: "x" }).then(
              (a) => {
                const c = a.id ? "ok" : code(a);
                codes[c] = (codes[c] || 0) + 1;
              },
              () => {},
            );
        }
        await sleep(10);
      }
      const after = (Date.now() - started) / 1000;
      await sleep(200);
      return { codes, errors, reason, after, sent };
    }, { every: 50, ms: 3000 });
    console.log(JSON.stringify(result));
    assert.equal(result.reason, "io server disconnect", "the socket stayed over the rate and was disconnected");
    assert.ok(result.after >= 4.5 && result.after < 9, `disconnected after ${result.after} s`);
    assert.ok(result.codes.rate_limited > 1000, JSON.stringify(result.codes));
    assert.ok(result.errors > 100, "refusals without an ack come as error events");
    // what passed stayed within the bucket: 20 at once plus 40 a second
    assert.ok(result.codes.ok <= 20 + 40 * result.after + 40, JSON.stringify(result.codes));
    assert.ok((await metric("sio_limit_refusals_total", { limit: "event_rate" })) >= result.codes.rate_limited);
    assert.equal(await metric("sio_rate_limit_disconnects_total"), 1);
  },

  // --max-chat-bytes 4096 (the default)
  async chat_bytes() {
    const result = await withBystander(async () => {
      const h = await connect("hog", { mode: "websocket" });
      const answers = [];
      for (let i = 0; i < 100; i++) {
        answers.push(await ack(h, "chat-message", { text: "y".repeat(5000), i }));
        await sleep(20);
      }
      const small = await ack(h, "chat-message", { text: "z".repeat(4000) });
      h.close();
      return { answers, small };
    });
    assert.ok(result.answers.every((a) => code(a) === "payload_too_large"), JSON.stringify(result.answers[0]));
    assert.match(result.answers[0].error.message, /4096/);
    assert.equal(result.small.ok, true);
    assert.equal(result.chats.length, 1, "only the small chat-message reached the bystander");
    assert.equal(result.chats[0].text.length, 4000);
    assert.equal(await metric("sio_limit_refusals_total", { limit: "chat_bytes" }), 100);
  },

  // URL: a node of a cluster whose other node's presence work is measured; REDIS_PORT,
  // NODE_PID: the node of URL, stopped while the other one heartbeats.
  async own_rooms() {
    const evalshas = () => {
      const info = execFileSync("redis-cli", ["-p", process.env.REDIS_PORT, "info", "commandstats"]).toString();
      const m = info.match(/cmdstat_evalsha:calls=(\d+)/);
      return m ? Number(m[1]) : 0;
    };
    const wide = await connect("wide", { mode: "websocket" });
    for (let i = 0; i < 300; i++) assert.equal((await ack(wide, "join-room", `wide-${i}`)).ok, true);
    // let the node holding those rooms sweep them once, then stop it: only the other node
    // (no socket, no room) heartbeats now
    await sleep(1500);
    process.kill(Number(process.env.NODE_PID), "SIGSTOP");
    try {
      const before = evalshas();
      await sleep(3500); // three heartbeat rounds (--lease-ttl 3s)
      const calls = evalshas() - before;
      console.log(`presence sweeps (EVALSHA) by a node without rooms over 3 heartbeats, with 300 rooms in the cluster: ${calls}`);
      assert.ok(calls < 10, `${calls} EVALSHA calls: the other node swept rooms it has no member in`);
    } finally {
      process.kill(Number(process.env.NODE_PID), "SIGCONT");
    }
    wide.close();
  },

  // --max-payload 100000: the attachments of one binary event may not add up to more
  async attachments() {
    const h = await connect("hog", { mode: "websocket" });
    const gone = once(h, "disconnect", 5000);
    h.emit("chat-message", { a: Buffer.alloc(60000), b: Buffer.alloc(60000) });
    const [reason] = await gone;
    console.log(`a binary event with 120 KB of attachments: disconnected (${reason})`);
    // the node serves the others as before
    const other = await connect("other", { mode: "websocket" });
    assert.equal((await ack(other, "chat-message", { text: "fine" })).ok, true);
    other.close();
  },
});
