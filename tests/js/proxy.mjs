// Scenarios through sio-proxy in front of several nodes. URL: the proxy; NODE_URLS: the
// nodes (to check where clients landed). Each client sends its own X-Forwarded-For, which
// the proxy trusts from 127.0.0.1, so ip-hash spreads them over the nodes.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { ack, api, closeAll, collect, connected, main, once, sleep, socketFor, waitFor, URL } from "./lib.mjs";

const NODE_URLS = (process.env.NODE_URLS || "").split(",").filter(Boolean);
const uniq = (p) => `${p}-${Math.random().toString(36).slice(2, 8)}`;
let ipCounter = Math.floor(Math.random() * 200);
const nextIp = () => {
  ipCounter += 1;
  return `10.${(ipCounter >> 16) & 255}.${(ipCounter >> 8) & 255}.${ipCounter & 255}`;
};

/** A client through the proxy from its own (forwarded) address, watching for trouble. */
function client(user, mode, { reconnection = false, ns = "/" } = {}) {
  const s = socketFor(user, { url: URL, mode, reconnection, ns, extraHeaders: { "x-forwarded-for": nextIp() } });
  s.trouble = [];
  s.on("connect_error", (e) => s.trouble.push(`connect_error: ${e.message}`));
  s.on("disconnect", (r) => s.trouble.push(`disconnect: ${r}`));
  s.mode = mode;
  return s;
}

async function nodeConnections(url) {
  const text = await (await fetch(url + "/metrics")).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("sio_connections{"))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

async function nodeConnects(url) {
  const text = await (await fetch(url + "/metrics")).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("sio_connects_total{"))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

async function connectMany(n, tag, modes = ["polling", "websocket", "upgrade"], opts = {}) {
  const sockets = [];
  for (let i = 0; i < n; i++) sockets.push(client(uniq(`${tag}${i}`), modes[i % modes.length], opts));
  await Promise.all(sockets.map((s) => connected(s, { mode: s.mode, ms: 20000 })));
  return sockets;
}

main({
  // 100 polling, 100 websocket, 100 upgrading clients through one proxy: all connect, all get
  // one room broadcast exactly once, none sees "Session ID unknown", every node serves some.
  async mixed_clients() {
    const per = Number(process.env.PER_MODE || 100);
    const room = uniq("all");
    const sockets = [];
    for (const mode of ["polling", "websocket", "upgrade"]) {
      for (let i = 0; i < per; i++) sockets.push(client(uniq(`${mode}${i}`), mode));
    }
    await Promise.all(sockets.map((s) => connected(s, { mode: s.mode, ms: 30000 })));
    // every join is announced to the room's members: join in waves, as people do
    for (let i = 0; i < sockets.length; i += 50) {
      await Promise.all(sockets.slice(i, i + 50).map((s) => ack(s, "join-room", room, 20000)));
    }
    const got = sockets.map((s) => collect(s, "room-message"));
    const sent = await ack(sockets[0], "room-message", { room, text: "to all 300" });
    await waitFor(() => got.every((g) => g.length >= 1), 20000, "every client got the broadcast");
    await sleep(500);
    const counts = got.map((g) => g.length);
    assert.ok(counts.every((c) => c === 1), `exactly once: ${JSON.stringify(counts.filter((c) => c !== 1))}`);
    assert.ok(got.every((g) => g[0].id === sent.id));
    const trouble = sockets.flatMap((s) => s.trouble);
    assert.deepEqual(trouble, [], "no client saw an error or a disconnect");
    await waitFor(async () => {
      const st = await api("/api/stats", { method: "GET" });
      return st.status === 200 && st.body.nodes.length === NODE_URLS.length && st.body.nodes.every((n) => n.connections > 0);
    }, 10000, "/api/stats shows every node serving clients");
    const per_node = await Promise.all(NODE_URLS.map(nodeConnections));
    assert.equal(per_node.reduce((a, b) => a + b, 0), sockets.length);
    closeAll(sockets);
    return { clients: sockets.length, per_node };
  },

  // A fourth node joins (found through the registry): live sessions are undisturbed and new
  // handshakes reach it. Then a node is marked draining: no new handshakes reach it while its
  // live sessions keep working.
  async scale() {
    const room = uniq("scale");
    const before = await connectMany(60, "before");
    await Promise.all(before.map((s) => ack(s, "join-room", room, 15000)));
    const args = JSON.parse(process.env.NODE4_ARGS);
    const node4 = spawn(process.env.NODE_BIN, args, { stdio: "ignore" });
    process.on("exit", () => node4.kill("SIGKILL"));
    const node4Url = process.env.NODE4_URL;
    await waitFor(async () => (await fetch(node4Url + "/readyz").catch(() => ({ status: 0 }))).status === 200, 20000, "node-4 ready");
    await waitFor(async () => {
      const st = await api("/api/stats", { method: "GET" });
      return st.body?.nodes?.some((n) => n.id === "node-4");
    }, 10000, "node-4 registered");
    await sleep(2500); // the proxy rediscovers every second and health-checks every 500 ms
    const after = await connectMany(90, "after");
    const on4 = await nodeConnections(node4Url);
    assert.ok(on4 > 0, "new handshakes reach the new node");
    // live sessions were not disturbed
    assert.deepEqual(before.flatMap((s) => s.trouble), [], "old clients undisturbed");
    const got = before.map((s) => collect(s, "room-message"));
    await ack(before[0], "room-message", { room, text: "still here" });
    await waitFor(() => got.every((g) => g.length === 1), 10000, "old clients still served");

    // drain node-2: SIGTERM with a long --drain-delay keeps its sessions open meanwhile
    const drainingUrl = NODE_URLS[1];
    const connectsBefore = await nodeConnects(drainingUrl);
    process.kill(Number(process.env.DRAIN_PID), "SIGTERM");
    await waitFor(async () => (await fetch(drainingUrl + "/readyz")).status === 503, 5000, "node-2 unready");
    await sleep(1500);
    const connectsMarked = await nodeConnects(drainingUrl);
    const later = await connectMany(60, "later");
    assert.equal(await nodeConnects(drainingUrl), connectsMarked, "no new handshake on the draining node");
    assert.ok(connectsMarked >= connectsBefore);
    // its live sessions keep working
    const onDraining = (await nodeConnections(drainingUrl));
    assert.ok(onDraining > 0, "the draining node still holds its sessions");
    const got2 = before.map((s) => collect(s, "room-message"));
    await ack(before[1], "room-message", { room, text: "during drain" });
    await waitFor(() => got2.every((g) => g.length === 1), 10000, "every old client, draining node's included, served");
    assert.deepEqual(before.flatMap((s) => s.trouble), [], "nobody disconnected yet");
    closeAll(before, after, later);
    return { on_new_node: on4, on_draining_node: onDraining };
  },

  // A node is SIGKILLed: its clients reconnect through the proxy within seconds, get their
  // rooms back, and clients of other nodes notice nothing.
  async kill_node() {
    const room = uniq("k");
    const sockets = await connectMany(60, "k", ["polling", "websocket", "upgrade"], { reconnection: true });
    for (const s of sockets) {
      s.io.reconnectionDelay(200);
      s.io.reconnectionDelayMax(1000);
    }
    await Promise.all(sockets.map((s) => ack(s, "join-room", room, 15000)));
    const restored = sockets.map((s) => collect(s, "rooms-restored"));
    const victim = NODE_URLS[0];
    const onVictim = await nodeConnections(victim);
    assert.ok(onVictim > 0, "the victim holds clients");
    const t0 = Date.now();
    process.kill(Number(process.env.VICTIM_PID), "SIGKILL");
    await waitFor(() => sockets.filter((s) => s.trouble.length > 0).length >= onVictim, 60000, "the victim's clients notice");
    await waitFor(() => sockets.every((s) => s.connected), 30000, "every client connected again");
    const reconnectMs = Date.now() - t0;
    const moved = sockets.filter((s) => s.trouble.length > 0);
    assert.equal(moved.length, onVictim, "only the victim's clients were disturbed");
    for (const [i, s] of sockets.entries()) {
      if (s.trouble.length > 0) {
        await waitFor(() => restored[i].length >= 1, 10000, "rooms-restored after reconnect");
        assert.deepEqual(restored[i].at(-1).rooms, [room]);
        assert.ok(!s.trouble.some((t) => /Session ID unknown/.test(t) && t.startsWith("connect_error")), s.trouble.join());
      }
    }
    const got = sockets.map((s) => collect(s, "room-message"));
    await ack(sockets[0], "room-message", { room, text: "after the crash" });
    await waitFor(() => got.every((g) => g.length === 1), 10000, "everyone in the room again");
    closeAll(sockets);
    return { disturbed: moved.length, reconnect_ms: reconnectMs };
  },
});
