// A slow polling client must lose no notification (README "Namespace /notifications").
//
// The official client connects over polling to URLS[0], then stops polling (its polling
// transport is paused, as engine.io-client itself pauses it before an upgrade) while COUNT
// notifications are posted to URLS[TARGET] — more than the node's --max-buffer-size. It then
// resumes and must receive every one of them exactly once and in order, with at most one
// reconnect (passing its last id back). When nothing arrives for a while before that, the
// scenario reconnects once itself, as an application would, so the count it prints is what
// a client that passes its last id back really lost.
import { execFileSync } from "node:child_process";
import { api, closeAll, collect, connect, main, once, sleep, socketFor, token, waitFor } from "./lib.mjs";

const URLS = (process.env.URLS || "").split(",").filter(Boolean);
const COUNT = Number(process.env.COUNT || 1500);
const TARGET = Number(process.env.TARGET || 0);
const IDLE_MS = Number(process.env.IDLE_MS || 5000);
const IN_FLIGHT = 8;

const streamId = (id) => id.split("-").map(BigInt);
const before = (a, b) => {
  const [am, as] = streamId(a);
  const [bm, bs] = streamId(b);
  return am < bm || (am === bm && as < bs);
};

async function postAll(user, n) {
  const ids = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const r = await api("/api/notify", { url: URLS[TARGET], body: { userId: user, message: `n${i}` } });
      if (r.status !== 200) throw new Error(`notify ${i} answered ${r.status}: ${r.text}`);
      ids.push(r.body.id);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return ids;
}

/** Resolves once `pred()` holds, or when nothing changed in `progress()` for `idle` ms. */
async function settle(pred, progress, idle) {
  let last = progress();
  let since = Date.now();
  while (!pred()) {
    await sleep(50);
    const now = progress();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since > idle) {
      return false;
    }
  }
  return true;
}

/** Sum of the samples of `name` (with every `labels` pair) in node `i`'s /metrics. */
async function metric(i, name, labels = {}) {
  const text = await (await fetch(`${URLS[i]}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? (\S+)$/);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? "").includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

main({
  // Notifications go only to the nodes with a socket of their user: USERS users with three
  // sockets each on node 0 (two transports), notified through node 1. Node 2 receives
  // nothing; node 0 holds one subscription per user, released when the sockets leave, also
  // after rounds of connects and disconnects that overlap.
  async routing() {
    const users = Array.from({ length: Number(process.env.USERS || 10) }, (_, i) => `route-${i}-${Math.random().toString(36).slice(2, 6)}`);
    const subs = (i) => metric(i, "sio_adapter_notify_subscriptions");
    const received = (i) => metric(i, "sio_adapter_notify_messages_total");
    const base = await Promise.all([0, 1, 2].map(subs));
    const before = await Promise.all([0, 1, 2].map(received));
    const sockets = [];
    for (const user of users) {
      for (const mode of ["websocket", "polling", "websocket"]) {
        sockets.push({ user, s: await connect(user, { url: URLS[0], ns: "/notifications", mode }) });
      }
    }
    if ((await subs(0)) !== base[0] + users.length) throw new Error(`node 0 holds ${await subs(0)} subscriptions, expected ${base[0] + users.length}`);
    for (const i of [1, 2]) if ((await subs(i)) !== base[i]) throw new Error(`node ${i} subscribed to a user it does not serve`);
    const got = sockets.map(({ s }) => collect(s, "notification"));
    // notified right after the connects: nothing is lost around a connect
    for (const user of users) {
      const r = await api("/api/notify", { url: URLS[1], body: { userId: user, message: "routed" } });
      if (r.status !== 200 || r.body.delivered !== 3) throw new Error(`notify ${user}: ${r.status} ${r.text}`);
    }
    await waitFor(() => got.every((g) => g.length === 1), 5000, "one notification on every socket");
    const after = await Promise.all([0, 1, 2].map(received));
    const useful = await metric(0, "sio_adapter_notify_messages_total", { outcome: "useful" });
    if (after[2] !== before[2]) throw new Error(`node 2 received ${after[2] - before[2]} notification messages`);
    if (after[1] !== before[1]) throw new Error(`node 1 received ${after[1] - before[1]} notification messages`);
    if (after[0] - before[0] !== users.length) throw new Error(`node 0 received ${after[0] - before[0]}, expected ${users.length}`);
    closeAll(sockets.map(({ s }) => s));
    await waitFor(async () => (await subs(0)) === base[0], 10000, "node 0 back to its baseline subscriptions");

    // churn: sockets of the same users connect and disconnect, overlapping
    for (let round = 0; round < 3; round++) {
      const wave = await Promise.all(
        users.flatMap((user) => [0, 1].map(async (k) => {
          const s = await connect(user, { url: URLS[k], ns: "/notifications", mode: "websocket" });
          await sleep(Math.random() * 50);
          s.close();
        })),
      );
      void wave;
    }
    for (const i of [0, 1, 2]) {
      await waitFor(async () => (await subs(i)) === base[i], 10000, `node ${i} back to its baseline subscriptions after churn`);
    }
    return { users: users.length, useful, baseline: base };
  },

  // Notifications published while the client's node has lost its Redis subscription (its
  // pub/sub connections killed) reach nobody live; with no later notification to reveal the
  // gap, the node must notice the resubscription itself and read the stream.
  async subscription_lost() {
    const user = `lost-${Math.random().toString(36).slice(2, 8)}`;
    const s = socketFor(user, { url: URLS[0], ns: "/notifications", mode: "websocket" });
    const got = [];
    s.on("notification", (n) => got.push(n.id));
    await once(s, "notifications-synced", 10000);
    const expected = [];
    let missed = 0;
    for (let round = 0; round < 10 && missed === 0; round++) {
      execFileSync("redis-cli", ["-p", process.env.REDIS_PORT, "client", "kill", "type", "pubsub"]);
      for (let i = 0; i < 5; i++) {
        const r = await api("/api/notify", { url: URLS[TARGET], body: { userId: user, message: `r${round}-${i}` } });
        if (r.status !== 200) throw new Error(`notify answered ${r.status}: ${r.text}`);
        expected.push(r.body.id);
        if (r.body.delivered === 0) missed++;
      }
      await sleep(300);
    }
    if (missed === 0) throw new Error("no notification was published while the subscription was down");
    await waitFor(() => got.length >= expected.length, 10000, `${expected.length} notifications`);
    await sleep(200);
    s.close();
    const result = { expected: expected.length, missedLive: missed, received: got.length };
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      throw new Error(`subscription lost: ${JSON.stringify({ ...result, got, expected })}`);
    }
    return result;
  },

  async slow_poller() {
    const user = `slow-${Math.random().toString(36).slice(2, 8)}`;
    let last;
    let connects = 0;
    const got = [];
    const s = socketFor(user, {
      url: URLS[0],
      ns: "/notifications",
      mode: "polling",
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      auth: (cb) => cb({ token: token(user), lastNotificationId: last }),
    });
    s.on("connect", () => connects++);
    s.on("notifications-synced", (x) => (last = x.lastNotificationId));
    s.on("notification", (n) => {
      got.push(n.id);
      last = n.id;
    });
    await once(s, "notifications-synced", 10000);

    // Stop polling: pause() waits for the poll in flight, which the first notification ends.
    const transport = s.io.engine.transport;
    if (transport.name !== "polling") throw new Error(`expected polling, got ${transport.name}`);
    const paused = new Promise((r) => transport.pause(r));
    const expected = await postAll(user, 1);
    await paused;
    expected.push(...(await postAll(user, COUNT)));

    // Resume polling where the transport stopped.
    transport.readyState = "open";
    transport._poll();

    const want = new Set(expected);
    const have = () => new Set(got).size;
    const complete = () => [...want].every((id) => got.includes(id));
    let manualReconnect = false;
    if (!(await settle(complete, () => got.length, IDLE_MS))) {
      manualReconnect = true;
      s.disconnect();
      s.connect();
      await settle(complete, () => got.length, IDLE_MS);
    }
    s.close();

    const duplicates = got.length - have();
    const lost = [...want].filter((id) => !got.includes(id)).length;
    let outOfOrder = 0;
    for (let i = 1; i < got.length; i++) if (!before(got[i - 1], got[i])) outOfOrder++;
    const reconnects = connects - 1;
    const result = { expected: want.size, received: got.length, lost, duplicates, outOfOrder, reconnects, manualReconnect };
    console.error(JSON.stringify(result));
    if (lost || duplicates || outOfOrder || reconnects > 1) {
      throw new Error(`slow poller: ${JSON.stringify(result)}`);
    }
    return result;
  },
});
