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
import { api, main, once, sleep, socketFor, token, waitFor } from "./lib.mjs";

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

main({
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
