// Scenarios against one sio-node, run in polling, websocket and upgrade modes.
import assert from "node:assert/strict";
import {
  ack, api, closeAll, collect, connect, connectError, main, once, sleep, socketFor, token, waitFor, URL, MODE,
} from "./lib.mjs";

const uniq = (p) => `${p}-${MODE}-${Math.random().toString(36).slice(2, 8)}`;

main({
  async auth() {
    const ok = await connect(uniq("alice"));
    assert.ok(ok.id, "accepted socket has an id");
    const missing = await connectError(socketFor("x", { auth: {} }));
    assert.match(missing.message, /missing token/);
    const bad = await connectError(socketFor("x", { auth: { token: "not.a.jwt" } }));
    assert.match(bad.message, /invalid token/);
    const forged = await connectError(socketFor("x", { auth: { token: token("mallory", { secret: "other-secret" }) } }));
    assert.match(forged.message, /invalid token \(bad signature\)/);
    const expired = await connectError(socketFor("x", { auth: { token: token("old", { ttl: -3600 }) } }));
    assert.match(expired.message, /expired/);
    // every namespace checks auth
    const notif = await connectError(socketFor("x", { ns: "/notifications", auth: {} }));
    assert.match(notif.message, /missing token/);
    closeAll(ok);
    return { refused: 5 };
  },

  async chat() {
    const users = [uniq("a"), uniq("b"), uniq("c")];
    const sockets = await Promise.all(users.map((u) => connect(u)));
    const got = sockets.map((s) => collect(s, "chat-message"));
    const payload = { text: "hello all", n: 1, nested: { ok: true } };
    sockets[0].emit("chat-message", payload);
    await waitFor(() => got.every((g) => g.length === 1), 5000, "chat-message on every socket");
    for (const g of got) assert.deepEqual(g[0], payload);
    // an ack is answered
    const res = await ack(sockets[1], "chat-message", "second");
    assert.deepEqual(res, { ok: true });
    await waitFor(() => got.every((g) => g.length === 2), 5000, "second chat-message");
    closeAll(sockets);
  },

  async rooms() {
    const room = uniq("room");
    const [a, b, c] = await Promise.all([uniq("a"), uniq("b"), uniq("c")].map((u) => connect(u)));
    const joinedA = collect(a, "user-joined");
    const leftA = collect(a, "user-left");
    const msgs = [a, b, c].map((s) => collect(s, "room-message"));
    assert.deepEqual(await ack(a, "join-room", room), { ok: true, room });
    assert.deepEqual(await ack(b, "join-room", room), { ok: true, room });
    await waitFor(() => joinedA.length === 1, 5000, "user-joined");
    assert.equal(joinedA[0].room, room);
    assert.match(joinedA[0].userId, /^b-/);
    const sent = await ack(a, "room-message", { room, text: "members only" });
    assert.ok(typeof sent.id === "string" && sent.id.length > 0, "ack carries the message id");
    await waitFor(() => msgs[0].length === 1 && msgs[1].length === 1, 5000, "room-message to members");
    const m = msgs[1][0];
    assert.equal(m.id, sent.id);
    assert.equal(m.room, room);
    assert.equal(m.text, "members only");
    assert.match(m.sender, /^a-/);
    assert.ok(!Number.isNaN(Date.parse(m.timestamp)), "timestamp is a date");
    // a non-member may not send, and nothing is delivered
    const refused = await ack(c, "room-message", { room, text: "intruder" });
    assert.equal(refused.error.code, "not_in_room");
    // without an ack, the refusal is an `error` event
    const errP = once(c, "error");
    c.emit("room-message", { room, text: "intruder again" });
    const err = await errP;
    assert.equal(err.code, "not_in_room");
    assert.equal(err.event, "room-message");
    // b leaves: a sees user-left, b gets no more messages
    assert.deepEqual(await ack(b, "leave-room", room), { ok: true, room });
    await waitFor(() => leftA.length === 1, 5000, "user-left");
    await ack(a, "room-message", { room, text: "after leave" });
    await waitFor(() => msgs[0].length === 2, 5000, "second message to a");
    await sleep(200);
    assert.equal(msgs[1].length, 1, "b left and got nothing more");
    assert.equal(msgs[2].length, 0, "c never got anything");
    const notMember = await ack(b, "leave-room", room);
    assert.equal(notMember.error.code, "not_in_room");
    closeAll(a, b, c);
  },

  async validation() {
    const s = await connect(uniq("v"));
    for (const [event, data, code] of [
      ["join-room", 42, "invalid_room"],
      ["join-room", "", "invalid_room"],
      ["join-room", "x".repeat(129), "invalid_room"],
      ["room-message", "not an object", "invalid_payload"],
      ["room-message", { room: "r" }, "invalid_type"],
      ["room-message", { room: "r", text: "" }, "invalid_length"],
      ["room-message", { room: 5, text: "t" }, "invalid_type"],
      ["room-message", { room: "r", text: "x".repeat(10001) }, "invalid_length"],
    ]) {
      const res = await ack(s, event, data);
      assert.equal(res?.error?.code, code, `${event} ${JSON.stringify(data).slice(0, 40)} -> ${JSON.stringify(res)}`);
    }
    // still alive and serving after every refusal
    const room = uniq("r");
    assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
    closeAll(s);
  },

  async oversized() {
    // a message above --max-payload closes that client's connection, and only that one
    const big = await connect(uniq("big"));
    const other = await connect(uniq("other"));
    const closed = once(big, "disconnect", 10000);
    big.emit("chat-message", "x".repeat(70 * 1024));
    const closedWith = await closed;
    const reason = Array.isArray(closedWith) ? closedWith[0] : closedWith;
    assert.ok(["transport close", "transport error", "parse error"].includes(reason), `reason ${reason}`);
    const got = collect(other, "chat-message");
    other.emit("chat-message", "small");
    await waitFor(() => got.length === 1, 5000, "the other client still served");
    closeAll(big, other);
    return { reason };
  },

  async notify() {
    const user = uniq("n");
    const s1 = await connect(user, { ns: "/notifications" });
    const s2 = await connect(user, { ns: "/notifications" });
    const other = await connect(uniq("someone-else"), { ns: "/notifications" });
    const got = [s1, s2, other].map((s) => collect(s, "notification"));
    const res = await api("/api/notify", { body: { userId: user, message: "hello you" } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.delivered, 2);
    assert.match(res.body.id, /^\d+-\d+$/);
    await waitFor(() => got[0].length === 1 && got[1].length === 1, 5000, "notification on both sockets");
    assert.deepEqual(Object.keys(got[0][0]).sort(), ["id", "message", "timestamp"]);
    assert.equal(got[0][0].id, res.body.id);
    assert.equal(got[0][0].message, "hello you");
    await sleep(100);
    assert.equal(got[2].length, 0, "other users get nothing");
    // offline user: stored, delivered 0
    const offline = await api("/api/notify", { body: { userId: uniq("nobody"), message: "later" } });
    assert.equal(offline.status, 200);
    assert.equal(offline.body.delivered, 0);
    closeAll(s1, s2, other);
  },

  async replay() {
    const user = uniq("r");
    const first = await api("/api/notify", { body: { userId: user, message: "m0" } });
    const ids = [];
    for (let i = 1; i <= 5; i++) {
      const r = await api("/api/notify", { body: { userId: user, message: `m${i}` } });
      assert.equal(r.status, 200);
      ids.push(r.body.id);
    }
    const s = socketFor(user, { ns: "/notifications", auth: { token: token(user), lastNotificationId: first.body.id } });
    const got = collect(s, "notification");
    await (await import("./lib.mjs")).connected(s);
    await waitFor(() => got.length === 5, 5000, "5 replayed notifications");
    assert.deepEqual(got.map((n) => n.message), ["m1", "m2", "m3", "m4", "m5"]);
    const live = await api("/api/notify", { body: { userId: user, message: "live" } });
    assert.equal(live.body.delivered, 1);
    await waitFor(() => got.length === 6, 5000, "live after replay");
    assert.equal(got[5].message, "live");
    const bad = await connectError(socketFor(user, { ns: "/notifications", auth: { token: token(user), lastNotificationId: "yesterday" } }));
    assert.match(bad.message, /lastNotificationId/);
    closeAll(s);
  },

  async api() {
    const noKey = await api("/api/notify", { body: { userId: "u", message: "m" }, key: null });
    assert.equal(noKey.status, 401);
    assert.equal(noKey.body.error.code, "missing_api_key");
    const badKey = await api("/api/notify", { body: { userId: "u", message: "m" }, key: "wrong" });
    assert.equal(badKey.status, 401);
    assert.equal(badKey.body.error.code, "invalid_api_key");
    const notJson = await api("/api/notify", { raw: "{not json", headers: { "content-type": "application/json" } });
    assert.equal(notJson.status, 400);
    assert.equal(notJson.body.error.code, "invalid_json");
    const noType = await api("/api/notify", { raw: JSON.stringify({ userId: "u", message: "m" }) });
    assert.equal(noType.status, 415);
    const missing = await api("/api/notify", { body: { userId: "u" } });
    assert.equal(missing.status, 400);
    assert.match(missing.body.error.message, /message/);
    const wrongType = await api("/api/notify", { body: { userId: { a: 1 }, message: "m" } });
    assert.equal(wrongType.status, 400);
    const array = await api("/api/notify", { body: [1, 2] });
    assert.equal(array.status, 400);
    const huge = await api("/api/notify", { body: { userId: "u", message: "x".repeat(80 * 1024) } });
    assert.equal(huge.status, 413);
    const unknownNs = await api("/api/emit", { body: { namespace: "/nope", event: "e", data: 1 } });
    assert.equal(unknownNs.status, 404);
    const reserved = await api("/api/emit", { body: { namespace: "/", event: "connect", data: 1 } });
    assert.equal(reserved.status, 400);
    // emit to a room and to a namespace
    const room = uniq("emit");
    const inRoom = await connect(uniq("e1"));
    const outside = await connect(uniq("e2"));
    await ack(inRoom, "join-room", room);
    const gotIn = collect(inRoom, "news");
    const gotOut = collect(outside, "news");
    const toRoom = await api("/api/emit", { body: { namespace: "/", room, event: "news", data: { v: 1 } } });
    assert.equal(toRoom.status, 200, toRoom.text);
    await waitFor(() => gotIn.length === 1, 5000, "emit to room");
    assert.deepEqual(gotIn[0], { v: 1 });
    const toAll = await api("/api/emit", { body: { namespace: "/", event: "news", data: "all" } });
    assert.equal(toAll.status, 200);
    await waitFor(() => gotIn.length === 2 && gotOut.length === 1, 5000, "emit to namespace");
    assert.equal(gotOut[0], "all");
    const stats = await api("/api/stats", { method: "GET" });
    assert.equal(stats.status, 200);
    assert.ok(stats.body.totalConnections >= 2);
    assert.ok(stats.body.connections["/"] >= 2);
    assert.equal(stats.body.nodes.length, 1);
    const presence = await api(`/api/presence/${encodeURIComponent(room)}`, { method: "GET" });
    assert.equal(presence.status, 200);
    assert.equal(presence.body.count, 1);
    closeAll(inRoom, outside);
  },

  async dashboard() {
    const user = uniq("ops");
    const d = socketFor(user, { ns: "/dashboard", auth: { token: token(user, { admin: true }) } });
    const first = once(d, "cluster-stats", 10000);
    await (await import("./lib.mjs")).connected(d);
    const stats = await first;
    assert.ok(stats.connections["/dashboard"] >= 1, JSON.stringify(stats));
    assert.ok(typeof stats.eventsPerSecond.received === "number");
    const again = await once(d, "cluster-stats", 10000);
    assert.ok(again.nodes.length >= 1);
    closeAll(d);
  },

  // Hundreds of clients emit `join-room` the moment they are connected, then send to the
  // room: every event must be handled (socketioxide alone drops some of these).
  async burst() {
    const n = Number(process.env.CLIENTS || 300);
    const tag = uniq("burst");
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => new Promise((resolve, reject) => {
        const s = socketFor(uniq(`burst${i}`));
        const t = setTimeout(() => reject(new Error(`client ${i} got no ack`)), 30000);
        const room = `${tag}-${i}`;
        s.on("connect", () => {
          s.emit("join-room", room);
          s.emit("room-message", { room, text: `from ${i}` }, (res) => {
            clearTimeout(t);
            s.close();
            resolve(res);
          });
        });
        s.on("connect_error", (e) => reject(e));
      })),
    );
    const failed = results.filter((r) => !r || !r.id);
    assert.equal(failed.length, 0, `${failed.length} of ${n} events were not handled: ${JSON.stringify(failed.slice(0, 3))}`);
    return { clients: n, handled: results.length };
  },
});
