// Authorization scenarios (issue 11), with the official client in $MODE: room claims, the
// join hook, the admin-only dashboard, the sender of chat-message, token algorithms and
// standard claims, and tokens expiring during a session.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {
  ack, api, closeAll, collect, connect, connectError, connected, main, once, sign, sleep, socketFor, token, waitFor,
  MODE, URL,
} from "./lib.mjs";

const URLS = (process.env.URLS || URL).split(",");
const HOOK = process.env.HOOK;
const KEY_DIR = process.env.KEY_DIR;
const tag = () => `${MODE}-${Math.random().toString(36).slice(2, 8)}`;
const uniq = (p) => `${p}-${tag()}`;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

async function forbidden(socket, room) {
  const res = await ack(socket, "join-room", room);
  assert.equal(res?.error?.code, "forbidden", `join ${room}: ${JSON.stringify(res)}`);
  return res.error;
}

/** Connects and returns [socket, rooms of its rooms-restored]. */
async function connectRestored(user, opts) {
  const s = socketFor(user, opts);
  const restored = once(s, "rooms-restored", 10000);
  await connected(s, opts);
  return [s, (await restored).rooms];
}

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");

main({
  // --room-auth claims (the default), on two nodes sharing Redis.
  async claims() {
    const t = tag();
    const [general, team, secret] = [`general-${t}`, `team-a-${t}`, `secret-${t}`];
    const alice = uniq("alice");
    const member = await connect(uniq("member"), { url: URLS[0] }); // rooms ["*"]
    assert.deepEqual(await ack(member, "join-room", secret), { ok: true, room: secret });
    const seen = { joined: collect(member, "user-joined"), presence: collect(member, "presence") };

    const grants = { rooms: [general, `${team}*`] };
    const a = await connect(alice, { url: URLS[0], auth: { token: token(alice, grants) } });
    assert.deepEqual(await ack(a, "join-room", general), { ok: true, room: general });
    assert.deepEqual(await ack(a, "join-room", `${team}-dev`), { ok: true, room: `${team}-dev` });
    assert.deepEqual(await ack(a, "join-room", team), { ok: true, room: team });

    // a room the token does not allow: refused, and nothing changes
    const err = await forbidden(a, secret);
    assert.match(err.message, /does not allow room/);
    await forbidden(a, `${team.slice(0, -1)}`); // a shorter name is not under the prefix
    const ev = once(a, "error");
    a.emit("join-room", secret); // without an ack: an `error` event
    const e = await ev;
    assert.deepEqual([e.event, e.code], ["join-room", "forbidden"]);
    const sent = await ack(a, "room-message", { room: secret, text: "let me in" });
    assert.equal(sent.error.code, "not_in_room");
    const p = await api(`/api/presence/${encodeURIComponent(secret)}`, { method: "GET", url: URLS[0] });
    assert.equal(p.status, 200);
    assert.ok(!p.body.users.includes(alice), JSON.stringify(p.body));
    await sleep(200);
    assert.ok(!seen.joined.some((j) => j.userId === alice), "no user-joined for a refused join");
    assert.ok(!seen.presence.some((j) => j.userId === alice), "no presence for a refused join");

    // a token without the claim joins no room
    const bob = uniq("bob");
    const b = await connect(bob, { url: URLS[0], auth: { token: token(bob, { rooms: null }) } });
    await forbidden(b, general);

    // reconnect (to the other node) with a token that no longer allows the team rooms:
    // they are not restored, and are forgotten for good (Redis too)
    closeAll(a);
    await sleep(300);
    const [a2, rooms2] = await connectRestored(alice, { url: URLS[1], auth: { token: token(alice, { rooms: [general] }) } });
    assert.deepEqual(rooms2, [general]);
    closeAll(a2);
    await sleep(300);
    const [a3, rooms3] = await connectRestored(alice, { url: URLS[0], auth: { token: token(alice, { rooms: ["*"] }) } });
    assert.deepEqual(rooms3, [general], "rooms dropped at the last reconnect are gone from the user's set");
    closeAll(member, b, a3);
  },

  // --room-auth open: any token joins any room.
  async open() {
    const u = uniq("o");
    const s = await connect(u, { auth: { token: token(u, { rooms: null }) } });
    const room = uniq("anything");
    assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
    closeAll(s);
  },

  // --auth none: auth.rooms and auth.admin are trusted like auth.userId.
  async none() {
    const t = tag();
    const u = uniq("n");
    const s = await connect(u, { auth: { userId: u, rooms: [`ok-${t}*`] } });
    assert.deepEqual(await ack(s, "join-room", `ok-${t}-1`), { ok: true, room: `ok-${t}-1` });
    await forbidden(s, `other-${t}`);
    const v = uniq("v");
    const plain = await connect(v, { auth: { userId: v } });
    await forbidden(plain, `ok-${t}-1`);
    const refused = await connectError(socketFor(v, { ns: "/dashboard", auth: { userId: v } }));
    assert.equal(refused.message, "forbidden: admin only");
    const d = socketFor(v, { ns: "/dashboard", auth: { userId: v, admin: true } });
    const stats = once(d, "cluster-stats", 10000);
    await connected(d);
    assert.ok((await stats).nodes.length >= 1);
    closeAll(s, plain, d);
  },

  // chat-message: the data unchanged, then {sender, timestamp} set by the server.
  async chatSender() {
    const [a, b] = [uniq("a"), uniq("b")];
    const [sa, sb] = await Promise.all([connect(a), connect(b)]);
    const got = [];
    sb.on("chat-message", (...args) => got.push(args));
    const data = { text: `hi ${a}`, sender: "mallory", nested: [1, { x: null }] };
    assert.deepEqual(await ack(sa, "chat-message", data), { ok: true });
    await waitFor(() => got.some(([d]) => d?.text === data.text), 5000, "chat-message");
    const [d, meta, ...rest] = got.find(([x]) => x?.text === data.text);
    assert.deepEqual(d, data, "the client's data arrives unchanged");
    assert.equal(meta.sender, a, "the sender is the token's sub, not what the data claims");
    assert.match(meta.timestamp, ISO);
    assert.equal(rest.length, 0);
    // a plain string too
    sa.emit("chat-message", "just text");
    await waitFor(() => got.some(([x]) => x === "just text"), 5000, "string chat-message");
    assert.equal(got.find(([x]) => x === "just text")[1].sender, a);
    closeAll(sa, sb);
  },

  // /dashboard only for tokens with "admin": true; node addresses kept for them.
  async dashboard() {
    const u = uniq("ops");
    for (const auth of [{ token: token(u) }, { token: token(u, { admin: "true" }) }, { token: token(u, { admin: false }) }]) {
      const refused = await connectError(socketFor(u, { ns: "/dashboard", auth }));
      assert.equal(refused.message, "forbidden: admin only");
    }
    const d = socketFor(u, { ns: "/dashboard", auth: { token: token(u, { admin: true }) } });
    const stats = once(d, "cluster-stats", 10000);
    await connected(d);
    const s = await stats;
    assert.ok(s.nodes.length >= 1);
    for (const n of s.nodes) assert.match(n.addr, /^127\.0\.0\.1:\d+$/, JSON.stringify(n));
    closeAll(d);
  },

  // The join hook decides what the claims do not; answers cached, timeouts not.
  async hook() {
    const t = tag();
    const u = uniq("h");
    const general = `general-${t}`;
    const tok = token(u, { rooms: [general], claims: { org: "acme" } });
    const requests = async (room) => {
      const all = await (await fetch(`${HOOK}/requests`)).json();
      return all.filter((r) => r.userId === u && (room === undefined || r.room === room));
    };
    const s = await connect(u, { auth: { token: tok } });
    assert.deepEqual(await ack(s, "join-room", general), { ok: true, room: general });
    assert.equal((await requests()).length, 0, "rooms the claims allow do not ask the hook");

    const allow = `allow-${t}`;
    assert.deepEqual(await ack(s, "join-room", allow), { ok: true, room: allow });
    const [first] = await requests(allow);
    assert.equal(first.userId, u);
    assert.equal(first.contentType, "application/json");
    assert.equal(first.claims.sub, u);
    assert.equal(first.claims.org, "acme");
    assert.deepEqual(first.claims.rooms, [general]);
    await ack(s, "leave-room", allow);
    assert.deepEqual(await ack(s, "join-room", allow), { ok: true, room: allow });
    assert.equal((await requests(allow)).length, 1, "an allow is cached");

    const deny = `deny-${t}`;
    assert.match((await forbidden(s, deny)).message, /may not join/);
    await forbidden(s, deny);
    assert.equal((await requests(deny)).length, 1, "a refusal is cached");
    await forbidden(s, `err-${t}`);
    assert.equal((await requests(`err-${t}`)).length, 1, "a 500 refuses");
    await forbidden(s, `nope-${t}`);
    assert.equal((await requests(`nope-${t}`)).length, 1, "a 404 refuses");

    const slow = `slow-${t}`;
    const started = Date.now();
    assert.match((await forbidden(s, slow)).message, /timed out/);
    assert.ok(Date.now() - started < 1800, `the timeout (500 ms) refused it, not the hook (${Date.now() - started} ms)`);
    await forbidden(s, slow);
    assert.equal((await requests(slow)).length, 2, "a timeout is not cached");

    // The application revokes `allow`: at the next reconnect (once the cached answer is
    // stale) it is not restored, and it is gone from the user's set for good.
    closeAll(s);
    await fetch(`${HOOK}/deny`, { method: "POST", body: JSON.stringify({ room: allow }) });
    await sleep(1200); // --join-hook-cache-ttl 1s
    const [s2, rooms2] = await connectRestored(u, { auth: { token: tok } });
    assert.deepEqual(rooms2.sort(), [general]);
    closeAll(s2);
    await fetch(`${HOOK}/allow`, { method: "POST", body: JSON.stringify({ room: allow }) });
    await sleep(1200);
    await sleep(300);
    const [s3, rooms3] = await connectRestored(u, { auth: { token: tok } });
    assert.deepEqual(rooms3, [general], "the revoked room left the user's set");
    closeAll(s3);
  },

  // RS256 / ES256 with keys made by keys.mjs: the right key and algorithm pass, nothing else.
  async algorithms() {
    const key = (name) => fs.readFileSync(path.join(KEY_DIR, name), "utf8");
    const [rsNode, esNode] = URLS;
    const cases = [
      [rsNode, "RS256", key("rsa.pem"), [
        ["RS256", key("rsa-other.pem"), /invalid token \(bad signature\)/],
        ["ES256", key("ec.pem"), /invalid token \(algorithm must be RS256\)/],
        ["HS256", key("rsa.pub.pem"), /invalid token \(algorithm must be RS256\)/], // the public key as an HMAC secret
      ]],
      [esNode, "ES256", key("ec.pem"), [
        ["ES256", key("ec-other.pem"), /invalid token \(bad signature\)/],
        ["RS256", key("rsa.pem"), /invalid token \(algorithm must be ES256\)/],
        ["HS256", key("ec.pub.pem"), /invalid token \(algorithm must be ES256\)/],
      ]],
    ];
    for (const [url, alg, good, bad] of cases) {
      const u = uniq(alg);
      const s = await connect(u, { url, auth: { token: token(u, { alg, key: good }) } });
      assert.deepEqual(await ack(s, "join-room", `r-${u}`), { ok: true, room: `r-${u}` });
      closeAll(s);
      for (const [badAlg, badKey, why] of bad) {
        const t = badAlg === "HS256" ? token(u, { secret: badKey }) : token(u, { alg: badAlg, key: badKey });
        const err = await connectError(socketFor(u, { url, auth: { token: t } }));
        assert.match(err.message, why, `${alg} node, token ${badAlg}`);
      }
      // alg "none": no signature at all
      const now = Math.floor(Date.now() / 1000);
      const unsigned = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "mallory", exp: now + 60 })}.`;
      const err = await connectError(socketFor("mallory", { url, auth: { token: unsigned } }));
      assert.match(err.message, /^unauthorized: invalid token/);
      // a token claiming the right algorithm with a forged signature
      const head = b64({ alg, typ: "JWT" });
      const body = b64({ sub: "mallory", exp: now + 60, admin: true });
      const forged = `${head}.${body}.${sign("HS256", `${head}.${body}`, { secret: "guess" })}`;
      assert.match((await connectError(socketFor("mallory", { url, auth: { token: forged } }))).message, /invalid token/);
    }
  },

  // nbf, iss and aud: URLS[0] has --jwt-issuer/--jwt-audience, URLS[1] has neither.
  async standardClaims() {
    const [strict, plain] = URLS;
    const u = uniq("std");
    const now = Math.floor(Date.now() / 1000);
    const good = { iss: "https://idp.test", aud: "sio-chat" };
    const s = await connect(u, { url: strict, auth: { token: token(u, { claims: good }) } });
    closeAll(s);
    const arr = await connect(u, { url: strict, auth: { token: token(u, { claims: { ...good, aud: ["other", "sio-chat"] } }) } });
    closeAll(arr);
    const refusals = [
      [{ ...good, aud: "billing" }, /wrong audience/],
      [{ ...good, iss: "https://evil.test" }, /wrong issuer/],
      [{ iss: good.iss }, /missing `aud` claim/],
      [{ ...good, nbf: now + 120 }, /not valid yet/],
    ];
    for (const [claims, why] of refusals) {
      const err = await connectError(socketFor(u, { url: strict, auth: { token: token(u, { claims }) } }));
      assert.match(err.message, why, JSON.stringify(claims));
    }
    // without a configured audience, a token carrying one is accepted
    const p = await connect(u, { url: plain, auth: { token: token(u, { claims: { aud: "anything" } }) } });
    closeAll(p);
    const early = await connectError(socketFor(u, { url: plain, auth: { token: token(u, { claims: { nbf: now + 120 } }) } }));
    assert.match(early.message, /not valid yet/);
  },

  // The token `make run` prints ($TOKEN): any room, and the dashboard.
  async devToken() {
    const auth = { token: process.env.TOKEN };
    const s = await connect("alice", { auth });
    assert.deepEqual(await ack(s, "join-room", "general"), { ok: true, room: "general" });
    assert.deepEqual(await ack(s, "join-room", uniq("any")).then((r) => r.ok), true);
    const d = socketFor("alice", { ns: "/dashboard", auth });
    const stats = once(d, "cluster-stats", 10000);
    await connected(d);
    assert.ok((await stats).nodes.length >= 1);
    closeAll(s, d);
  },

  // Error paths of the secrets test: forged tokens, a wrong API key, an unreachable hook.
  async badInputs() {
    const u = uniq("bad");
    const forged = await connectError(socketFor(u, { auth: { token: token(u, { secret: "not-the-secret-not-the-secret-xx" }) } }));
    assert.match(forged.message, /bad signature/);
    const garbage = await connectError(socketFor(u, { auth: { token: "a.b.c" } }));
    assert.match(garbage.message, /invalid token/);
    const s = await connect(u, { auth: { token: token(u, { rooms: [] }) } });
    assert.match((await forbidden(s, `hooked-${u}`)).message, /could not be authorized \(the join hook is unreachable\)/);
    closeAll(s);
    const wrong = await api("/api/stats", { method: "GET", key: "wrong-key" });
    assert.equal(wrong.status, 401);
    const none = await api("/api/stats", { method: "GET", key: null });
    assert.equal(none.status, 401);
  },

  // A token expiring during a session: `error` token_expired, the transport closes, the
  // client reconnects by itself with the token its auth callback gives and gets its rooms
  // back; a callback that returns the expired token gets `unauthorized: token expired`.
  async expiry() {
    const fresh = async () => {
      const user = uniq("exp");
      const room = uniq("room");
      let calls = 0;
      const short = token(user, { ttl: 2 });
      const s = socketFor(user, {
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 500,
        auth: (cb) => cb({ token: ++calls === 1 ? short : token(user) }),
      });
      await connected(s);
      assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
      const err = once(s, "error", 10000);
      const gone = once(s, "disconnect", 10000);
      const restored = new Promise((resolve) => s.on("rooms-restored", (r) => calls > 1 && resolve(r)));
      const e = await err;
      assert.deepEqual([e.event, e.code], ["auth", "token_expired"], JSON.stringify(e));
      const g = await gone; // (reason, details)
      const why = Array.isArray(g) ? g[0] : g;
      assert.match(why, /^transport (close|error)$/, `a transport close (the client reconnects by itself), got ${why}`);
      const back = await Promise.race([restored, sleep(10000).then(() => null)]);
      assert.ok(back, "reconnected with rooms-restored");
      assert.deepEqual(back.rooms, [room]);
      await connected(s);
      const sent = await ack(s, "room-message", { room, text: "still here" });
      assert.ok(sent.id, JSON.stringify(sent));
      assert.equal(calls, 2, "the auth callback gave the fresh token once");
      closeAll(s);
    };
    const stale = async () => {
      const user = uniq("stale");
      const expired = token(user, { ttl: 2 });
      const s = socketFor(user, { reconnection: true, reconnectionDelay: 100, auth: (cb) => cb({ token: expired }) });
      await connected(s);
      const notes = socketFor(user, { ns: "/notifications", auth: { token: expired } });
      await connected(notes);
      const noteErr = once(notes, "error", 10000);
      const refused = await connectError(s, 15000);
      assert.equal(refused.message, "unauthorized: token expired");
      assert.equal((await noteErr).code, "token_expired", "every namespace's sockets expire");
      closeAll(s, notes);
    };
    await Promise.all([fresh(), stale()]);
  },
});
