// Scenarios through sio-proxy in front of several nodes. URL: the proxy; NODE_URLS: the
// nodes (to check where clients landed). Each client sends its own X-Forwarded-For, which
// the proxy trusts from 127.0.0.1, so ip-hash spreads them over the nodes.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { Manager } from "socket.io-client";
import { ack, api, closeAll, collect, connected, main, once, sleep, socketFor, token, transportOptions, waitFor, withDetail, URL } from "./lib.mjs";

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

/** A user as an app would write it: one connection, chat and notifications, remembering the
 * last notification id so a reconnect (to any node) replays exactly what was missed. */
function user(name, mode, room) {
  const manager = new Manager(URL, {
    forceNew: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    randomizationFactor: 0.5,
    timeout: 10000,
    extraHeaders: { "x-forwarded-for": nextIp() },
    ...transportOptions(mode),
  });
  const u = { name, mode, room, notes: [], restored: [], disconnects: 0, lastId: undefined };
  u.chat = manager.socket("/", { auth: { token: token(name) } });
  u.inbox = manager.socket("/notifications", {
    auth: (cb) => cb({ token: token(name), lastNotificationId: u.lastId }),
  });
  u.inbox.on("notification", (n) => {
    u.notes.push(n);
    u.lastId = n.id;
  });
  // where the server says this client stands, even before its first notification
  u.inbox.on("notifications-synced", ({ lastNotificationId }) => {
    if (lastNotificationId) u.lastId = lastNotificationId;
  });
  u.errors = [];
  const note = (what) => (e) => u.errors.push(`${what}: ${withDetail(e)?.message ?? e}`);
  u.chat.on("connect_error", note("chat connect_error"));
  u.inbox.on("connect_error", note("inbox connect_error"));
  manager.on("reconnect_error", note("reconnect_error"));
  u.chat.on("rooms-restored", ({ rooms }) => u.restored.push(rooms));
  u.chat.on("disconnect", () => (u.disconnects += 1));
  u.chat.on("connect", () => {
    if (u.disconnects > 0) u.reconnectedAt = Date.now();
  });
  u.manager = manager;
  return u;
}

main({
  // 300 users over 3 nodes, in rooms, a third polling-only. A node is SIGTERMed while
  // notifications are being sent to everyone: every client is connected again within the
  // grace period, back in its room, and has every notification exactly once.
  async drain() {
    const n = Number(process.env.USERS || 300);
    const modes = ["polling", "websocket", "upgrade"];
    const users = Array.from({ length: n }, (_, i) => user(`drain-${i}-${Math.random().toString(36).slice(2, 6)}`, modes[i % 3], `room-${i % 10}`));
    await Promise.all(users.flatMap((u) => [connected(u.chat, { mode: u.mode, ms: 30000 }), connected(u.inbox, { mode: "polling", ms: 30000 })]));
    for (let i = 0; i < users.length; i += 50) {
      await Promise.all(users.slice(i, i + 50).map((u) => ack(u.chat, "join-room", u.room, 20000)));
    }
    const apiUrls = (process.env.API_URLS || "").split(",");
    const sent = new Map(users.map((u) => [u.name, []]));
    let sending = true;
    let failures = 0;
    const sender = (async () => {
      let i = 0;
      while (sending) {
        const u = users[i % users.length];
        const r = await api("/api/notify", { url: apiUrls[i % apiUrls.length], body: { userId: u.name, message: `n${i}` } });
        if (r.status === 200) sent.get(u.name).push(r.body.id);
        else failures += 1;
        i += 1;
        if (i % 20 === 0) await sleep(5);
      }
    })();
    await sleep(1500);
    const t0 = Date.now();
    process.kill(Number(process.env.VICTIM_PID), "SIGTERM");
    await waitFor(() => users.some((u) => u.disconnects > 0), 20000, "the victim's clients are drained");
    await sleep(3000);
    sending = false;
    await sender;
    const grace = Number(process.env.GRACE_MS || 20000);
    try {
      await waitFor(() => users.every((u) => u.chat.connected && u.inbox.connected), grace, "every client connected again");
    } catch (e) {
      const out = users.filter((u) => !(u.chat.connected && u.inbox.connected));
      console.error(JSON.stringify({
        not_connected: out.length,
        examples: out.slice(0, 5).map((u) => ({
          name: u.name,
          mode: u.mode,
          chat: u.chat.connected,
          inbox: u.inbox.connected,
          engine: u.manager.engine?.readyState,
          reconnecting: u.manager._reconnecting,
          disconnects: u.disconnects,
          errors: u.errors.slice(-3),
        })),
      }));
      throw e;
    }
    const moved = users.filter((u) => u.disconnects > 0);
    const reconnectedMs = Math.max(...moved.map((u) => u.reconnectedAt - t0));
    // every moved user got its room back
    for (const u of moved) {
      await waitFor(() => u.restored.some((r) => r.includes(u.room)), 10000, `rooms restored for ${u.name}`);
    }
    // every notification exactly once, in the order it was stored
    const expected = [...sent.values()].reduce((a, v) => a + v.length, 0);
    try {
      await waitFor(() => users.every((u) => u.notes.length >= sent.get(u.name).length), 15000, "every notification delivered");
    } catch (e) {
      const short = users.filter((u) => u.notes.length < sent.get(u.name).length);
      const ex = short[0];
      const want = sent.get(ex.name);
      const got = ex.notes.map((x) => x.id);
      console.error(JSON.stringify({
        short: short.length,
        moved_short: short.filter((u) => u.disconnects > 0).length,
        example: { name: ex.name, mode: ex.mode, disconnects: ex.disconnects, lastId: ex.lastId, missing: want.filter((id) => !got.includes(id)), got_tail: got.slice(-3), want_tail: want.slice(-3) },
      }));
      throw e;
    }
    await sleep(500);
    let lost = 0;
    let duplicated = 0;
    for (const u of users) {
      const got = u.notes.map((x) => x.id);
      const want = sent.get(u.name);
      const seen = new Set();
      for (const id of got) {
        if (seen.has(id)) duplicated += 1;
        seen.add(id);
      }
      for (const id of want) if (!seen.has(id)) lost += 1;
      assert.deepEqual(got, want, `${u.name}: ${got.length} received, ${want.length} sent`);
    }
    // rooms work for everyone after the move
    const byRoom = new Map();
    for (const u of users) byRoom.set(u.room, [...(byRoom.get(u.room) || []), u]);
    const [room, members] = [...byRoom.entries()][0];
    const got = members.map((u) => collect(u.chat, "room-message"));
    await ack(members[0].chat, "room-message", { room, text: "after the drain" });
    await waitFor(() => got.every((g) => g.length === 1), 10000, "room message after the drain");
    for (const u of users) u.manager.engine?.close();
    for (const u of users) { u.chat.close(); u.inbox.close(); }
    return {
      users: n,
      moved: moved.length,
      reconnected_all_ms: reconnectedMs,
      notifications_sent: expected,
      lost,
      duplicated,
      api_failures: failures,
    };
  },

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
