// Scenarios across several sio-nodes sharing one Redis (URLS = comma-separated node URLs).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  ack, api, closeAll, collect, connect, connected, connectError, main, once, sleep, socketFor, token, waitFor, MODE,
} from "./lib.mjs";

const URLS = (process.env.URLS || "").split(",").filter(Boolean);
const uniq = (p) => `${p}-${MODE}-${Math.random().toString(36).slice(2, 8)}`;
const on = (i, user, opts = {}) => connect(user, { url: URLS[i % URLS.length], ...opts });

async function notify(i, userId, message) {
  const r = await api("/api/notify", { url: URLS[i % URLS.length], body: { userId, message } });
  assert.equal(r.status, 200, r.text);
  return r.body;
}

async function promQuery(q) {
  const r = await fetch(`${process.env.PROM_URL}/api/v1/query?query=${encodeURIComponent(q)}`);
  const body = await r.json();
  const v = body?.data?.result?.[0]?.value?.[1];
  return v === undefined ? null : Number(v);
}

main({
  // Clients over every node and every transport; a real Prometheus scraping the nodes sees
  // the connection gauge summed over nodes equal to the number of clients, then zero.
  async prometheus() {
    const n = Number(process.env.CLIENTS || 30);
    const modes = ["polling", "websocket", "upgrade"];
    const sockets = await Promise.all(
      Array.from({ length: n }, (_, i) => on(i, uniq(`p${i}`), { mode: modes[i % 3] })),
    );
    const query = 'sum(sio_connections{job="sio-node"})';
    await waitFor(async () => (await promQuery(query)) === n, 20000, `${query} == ${n}`);
    const perNode = await promQuery('count(sum by (instance) (sio_connections{job="sio-node"}) > 0)');
    assert.equal(perNode, URLS.length, "every node serves clients");
    closeAll(sockets);
    await waitFor(async () => (await promQuery(query)) === 0, 30000, `${query} back to 0`);
    const negative = await promQuery('count(sio_connections < 0)');
    assert.ok(negative === null || negative === 0, "no negative gauge");
    return { clients: n, gauge: n };
  },

  // A room message from node 1 reaches members on every node exactly once; a chat-message
  // from the last node reaches every socket of the namespace exactly once.
  async room_fanout() {
    const room = uniq("room");
    const members = await Promise.all(URLS.map((_, i) => on(i, uniq(`m${i}`))));
    const outsider = await on(1, uniq("outsider"));
    const got = members.map((s) => collect(s, "room-message"));
    const gotOut = collect(outsider, "room-message");
    for (const s of members) assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
    const sent = await ack(members[0], "room-message", { room, text: "across nodes" });
    await waitFor(() => got.every((g) => g.length >= 1), 5000, "room-message on every node");
    const chats = [...members, outsider].map((s) => collect(s, "chat-message"));
    members[members.length - 1].emit("chat-message", { hello: "everyone" });
    await waitFor(() => chats.every((c) => c.length >= 1), 5000, "chat-message on every node");
    await sleep(300); // duplicates would have arrived by now
    for (const g of got) {
      assert.equal(g.length, 1, "exactly once");
      assert.equal(g[0].id, sent.id);
    }
    for (const c of chats) assert.equal(c.length, 1, "chat-message exactly once");
    assert.equal(gotOut.length, 0, "non-members get nothing");
    // the room lists every member whatever their node
    const presence = await api(`/api/presence/${room}`, { method: "GET", url: URLS[1] });
    assert.equal(presence.body.count, members.length);
    closeAll(members, outsider);
  },

  // Members of one room on nodes 1 and 2 only (URLS has 4 nodes), a socket in no room on
  // node 3, nobody on node 4: every message reaches each member once, in order, and nobody
  // else. Then a socket joins on node 4 and a message sent right after its join was
  // acknowledged reaches it. (The test reads each node's adapter metrics around this.)
  async room_interest() {
    const room = uniq("interest");
    const members = [await on(0, uniq("i0")), await on(1, uniq("i1"))];
    const idle = await on(2, uniq("idle"));
    const got = members.map((s) => collect(s, "room-message"));
    const gotIdle = collect(idle, "room-message");
    for (const s of members) assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await ack(members[i % 2], "room-message", { room, text: `m${i}` })).id);
    await waitFor(() => got.every((g) => g.length >= 5), 5000, "5 room-messages at each member");
    const late = await on(3, uniq("late"));
    const gotLate = collect(late, "room-message");
    assert.deepEqual(await ack(late, "join-room", room), { ok: true, room });
    const right = await ack(members[0], "room-message", { room, text: "right after the join" });
    await waitFor(() => gotLate.length >= 1 && got.every((g) => g.length >= 6), 5000, "the message right after the join");
    await sleep(300); // duplicates would have arrived by now
    for (const g of got) assert.deepEqual(g.map((m) => m.id), [...ids, right.id], "each once, in order");
    assert.deepEqual(gotLate.map((m) => m.id), [right.id], "the late member gets the message sent right after its join");
    assert.equal(gotIdle.length, 0, "a socket in no room gets nothing");
    closeAll(...members, idle, late);
  },

  // The HTTP API emits with acks to a room whose members sit on every node.
  async acks() {
    const room = uniq("acks");
    const members = await Promise.all(URLS.map((_, i) => on(i, uniq(`a${i}`))));
    const silent = await on(1, uniq("silent"));
    for (const s of [...members, silent]) await ack(s, "join-room", room);
    members.forEach((s, i) => s.on("question", (data, cb) => cb({ node: i, echo: data })));
    silent.on("question", () => {}); // never answers
    const res = await api("/api/emit", {
      url: URLS[0],
      body: { namespace: "/", room, event: "question", data: 42, ackTimeoutMs: 1500 },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.acks.length, members.length, JSON.stringify(res.body));
    assert.deepEqual(res.body.acks.map((a) => a.node).sort(), members.map((_, i) => i));
    assert.ok(res.body.acks.every((a) => a.echo === 42));
    assert.equal(res.body.timeouts, 1, "the silent socket timed out");
    closeAll(members, silent);
  },

  // A user with sockets on two nodes gets a notification sent through a third, on both.
  async notify_two_nodes() {
    const user = uniq("n");
    const s1 = await on(0, user, { ns: "/notifications" });
    const s2 = await on(2, user, { ns: "/notifications" });
    const got = [s1, s2].map((s) => collect(s, "notification"));
    const res = await notify(1, user, "to both nodes");
    assert.equal(res.delivered, 2);
    await waitFor(() => got.every((g) => g.length === 1), 5000, "notification on both nodes");
    await sleep(200);
    assert.ok(got.every((g) => g.length === 1 && g[0].id === res.id));
    closeAll(s1, s2);
  },

  // Offline notifications are replayed after lastNotificationId, in order, none lost or
  // repeated, then live ones follow; sending continues while the client reconnects.
  async replay() {
    const user = uniq("r");
    const first = await on(0, user, { ns: "/notifications" });
    const seen = collect(first, "notification");
    const n0 = await notify(1, user, "m0");
    await waitFor(() => seen.length === 1, 5000, "first live notification");
    first.close();
    const ids = [];
    for (let i = 1; i <= 20; i++) ids.push((await notify(i, user, `m${i}`)).id);
    const s = socketFor(user, {
      url: URLS[URLS.length - 1],
      ns: "/notifications",
      auth: { token: token(user), lastNotificationId: n0.id },
    });
    const got = collect(s, "notification");
    // keep sending while the client connects and replays
    const sending = (async () => {
      for (let i = 21; i <= 40; i++) ids.push((await notify(i, user, `m${i}`)).id);
    })();
    await connected(s);
    await sending;
    await waitFor(() => got.length >= 40, 10000, "40 notifications");
    await sleep(300);
    assert.deepEqual(got.map((n) => n.message), Array.from({ length: 40 }, (_, i) => `m${i + 1}`));
    assert.deepEqual(got.map((n) => n.id), ids);
    closeAll(s);
  },

  // Rooms a user joined are restored when the user reconnects to another node.
  async rooms_restored() {
    const user = uniq("u");
    const r1 = uniq("r1");
    const r2 = uniq("r2");
    const s = await on(0, user);
    await ack(s, "join-room", r1);
    await ack(s, "join-room", r2);
    await ack(s, "leave-room", r2);
    const r3 = uniq("r3");
    await ack(s, "join-room", r3);
    s.close();
    const again = socketFor(user, { url: URLS[1] });
    const restored = once(again, "rooms-restored", 10000);
    await connected(again);
    const { rooms } = await restored;
    assert.deepEqual([...rooms].sort(), [r1, r3].sort());
    // messages to a restored room reach the user, and the user may send to it at once
    const other = await on(2, uniq("other"));
    await ack(other, "join-room", r1);
    const got = collect(again, "room-message");
    await ack(other, "room-message", { room: r1, text: "welcome back" });
    await waitFor(() => got.length === 1, 5000, "message in a restored room");
    const sent = await ack(again, "room-message", { room: r3, text: "still here" });
    assert.ok(sent.id);
    closeAll(again, other);
  },

  // A node is SIGKILLed: its users' presence expires with its lease, `presence` offline is
  // emitted once, and the other node's client notices nothing else.
  async presence_kill() {
    const room = uniq("p");
    const victimPid = Number(process.env.VICTIM_PID);
    const watcher = await on(0, uniq("watcher"));
    await ack(watcher, "join-room", room);
    const presence = collect(watcher, "presence");
    const doomedUser = uniq("doomed");
    const doomed = await on(1, doomedUser);
    await ack(doomed, "join-room", room);
    await waitFor(() => presence.some((p) => p.userId === doomedUser && p.online), 5000, "online presence");
    let p = await api(`/api/presence/${room}`, { method: "GET", url: URLS[0] });
    assert.equal(p.body.count, 2);
    doomed.io.opts.reconnection = false;
    process.kill(victimPid, "SIGKILL");
    await waitFor(
      () => presence.some((x) => x.userId === doomedUser && x.online === false),
      15000,
      "offline presence after the lease expired",
    );
    p = await api(`/api/presence/${room}`, { method: "GET", url: URLS[0] });
    assert.equal(p.body.count, 1, JSON.stringify(p.body));
    await sleep(1500);
    assert.equal(presence.filter((x) => x.userId === doomedUser && !x.online).length, 1, "offline emitted once");
    assert.ok(watcher.connected, "the other node's client is still connected");
    assert.ok((await ack(watcher, "room-message", { room, text: "still here" })).id);
    closeAll(watcher, doomed);
  },

  // Redis is killed and restarted on the same port while clients stay connected.
  async redis_restart() {
    const port = process.env.REDIS_PORT;
    const redisPid = Number(process.env.REDIS_PID);
    const room = uniq("rr");
    const a = await on(0, uniq("a"));
    const b = await on(1, uniq("b"));
    await ack(a, "join-room", room);
    await ack(b, "join-room", room);
    const gotB = collect(b, "room-message");
    await ack(a, "room-message", { room, text: "before" });
    await waitFor(() => gotB.length === 1, 5000, "delivery before the outage");

    process.kill(redisPid, "SIGKILL");
    await waitFor(async () => {
      const r = await Promise.all(URLS.map((u) => fetch(u + "/readyz").then((x) => x.status)));
      return r.every((s) => s === 503);
    }, 10000, "every node unready");
    // while Redis is down: sends are reported as failed, never as delivered
    const failed = await ack(a, "room-message", { room, text: "during" }, 8000);
    assert.equal(failed?.error?.code, "unavailable", JSON.stringify(failed));
    const n = await api("/api/notify", { url: URLS[0], body: { userId: "x", message: "during" } });
    assert.equal(n.status, 503, n.text);

    const redis = spawn("redis-server", ["--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
      detached: true,
    });
    redis.unref();
    await waitFor(async () => {
      const r = await Promise.all(URLS.map((u) => fetch(u + "/readyz").then((x) => x.status)));
      return r.every((s) => s === 200);
    }, 20000, "every node ready again");
    await ack(a, "room-message", { room, text: "after" });
    await waitFor(() => gotB.length === 2, 5000, "cross-node delivery after the restart");
    assert.deepEqual(gotB.map((m) => m.text), ["before", "after"], "the failed message was never delivered");
    closeAll(a, b);
  },
});
