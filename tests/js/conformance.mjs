// Our own tests of the behaviours the official socket.io-protocol and engine.io-protocol
// suites check (see CONFORMANCE.md), against `sio-node --conformance`.
import assert from "node:assert/strict";
import WebSocket from "ws";
import { io } from "socket.io-client";
import { main, once, sleep, URL } from "./lib.mjs";

const SEP = "\x1e";
const ws = URL.replace(/^http/, "ws");

async function get(path) {
  const res = await fetch(URL + path);
  return { status: res.status, text: await res.text() };
}
async function post(path, body) {
  const res = await fetch(URL + path, { method: "POST", body, headers: { "content-type": "text/plain;charset=UTF-8" } });
  return { status: res.status, text: await res.text() };
}
async function handshake(base = "/socket.io/") {
  const r = await get(`${base}?EIO=4&transport=polling`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text[0], "0", r.text);
  return JSON.parse(r.text.slice(1).split(SEP)[0]);
}
/** Polls until a packet other than a ping shows up (answering pings). */
async function poll(base, sid) {
  for (let i = 0; i < 20; i++) {
    const r = await get(`${base}?EIO=4&transport=polling&sid=${sid}`);
    assert.equal(r.status, 200, r.text);
    const packets = r.text.split(SEP).filter((p) => p !== "2");
    if (r.text.split(SEP).includes("2")) await post(`${base}?EIO=4&transport=polling&sid=${sid}`, "3");
    if (packets.length) return packets;
  }
  throw new Error("no packet");
}
function wsOpen(path) {
  const s = new WebSocket(ws + path);
  const messages = [];
  const waiters = [];
  s.on("message", (data, isBinary) => {
    const m = isBinary ? data : data.toString();
    if (m === "2") return s.send("3");
    const w = waiters.shift();
    if (w) w(m);
    else messages.push(m);
  });
  const next = (ms = 3000) =>
    messages.length
      ? Promise.resolve(messages.shift())
      : new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error("no websocket message")), ms);
          waiters.push((m) => {
            clearTimeout(t);
            resolve(m);
          });
        });
  return new Promise((resolve, reject) => {
    s.on("open", () => resolve({ s, next }));
    s.on("error", reject);
  });
}

main({
  async handshake() {
    const open = await handshake();
    assert.deepEqual(Object.keys(open).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.deepEqual(open.upgrades, ["websocket"]);
    assert.equal(open.pingInterval, 300);
    assert.equal(open.pingTimeout, 200);
    assert.equal(open.maxPayload, 1000000);
    const { s, next } = await wsOpen("/socket.io/?EIO=4&transport=websocket");
    const first = await next();
    assert.equal(first[0], "0");
    assert.deepEqual(JSON.parse(first.slice(1)).upgrades, []);
    s.close();
  },

  async bad_requests() {
    assert.equal((await get("/socket.io/")).status, 400, "missing EIO");
    assert.equal((await get("/socket.io/?EIO=abc&transport=polling")).status, 400, "bad EIO");
    assert.equal((await get("/socket.io/?EIO=4&transport=abc")).status, 400, "bad transport");
    assert.equal((await post("/socket.io/?EIO=4&transport=polling", "40")).status, 400, "POST without sid");
    assert.equal((await get("/socket.io/?EIO=4&transport=polling&sid=abcdefghijklmnop")).status, 400, "unknown sid");
    // a closed session's sid is unknown too
    const { sid } = await handshake();
    await post(`/socket.io/?EIO=4&transport=polling&sid=${sid}`, "1");
    await sleep(100);
    assert.equal((await get(`/socket.io/?EIO=4&transport=polling&sid=${sid}`)).status, 400, "closed sid");
  },

  async namespaces() {
    for (const [ns, auth] of [["/", { token: "abc" }], ["/custom", { x: [1, 2] }]]) {
      const s = io(URL + (ns === "/" ? "" : ns), { forceNew: true, auth, transports: ["websocket"] });
      const got = await once(s, "auth");
      assert.deepEqual(got, auth, `auth echoed on ${ns}`);
      s.close();
    }
    const { sid } = await handshake();
    await post(`/socket.io/?EIO=4&transport=polling&sid=${sid}`, "40/random,");
    const packets = await poll("/socket.io/", sid);
    assert.ok(packets.includes('44/random,{"message":"Invalid namespace"}'), JSON.stringify(packets));
  },

  async echo() {
    const s = io(URL, { forceNew: true, transports: ["websocket"] });
    await once(s, "connect");
    const back = once(s, "message-back");
    s.emit("message", 1, "2", { 3: [true] });
    assert.deepEqual(await back, [1, "2", { 3: [true] }]);
    const binBack = once(s, "message-back");
    s.emit("message", Buffer.from([1, 2, 3]), { four: Buffer.from([4]) });
    const [bin, obj] = await binBack;
    assert.deepEqual([...bin], [1, 2, 3]);
    assert.deepEqual([...obj.four], [4]);
    const acked = await s.timeout(2000).emitWithAck("message-with-ack", 1, "2", { 3: [false] });
    assert.deepEqual(acked, 1, "first ack argument");
    // the raw ack carries every argument
    const { sid } = await handshake();
    await post(`/socket.io/?EIO=4&transport=polling&sid=${sid}`, "40");
    await poll("/socket.io/", sid);
    await post(`/socket.io/?EIO=4&transport=polling&sid=${sid}`, '42456["message-with-ack",1,"2",{"3":[false]}]');
    const packets = await poll("/socket.io/", sid);
    assert.ok(packets.includes('43456[1,"2",{"3":[false]}]'), JSON.stringify(packets));
    s.close();
  },

  async closes_sessions() {
    // no CONNECT within connectTimeout (1 s): the session is closed
    const { sid } = await handshake();
    await sleep(1600);
    const late = await get(`/socket.io/?EIO=4&transport=polling&sid=${sid}`);
    assert.ok(late.status === 400 || late.text.split(SEP).includes("1"), `${late.status} ${late.text}`);
    // an invalid packet closes the session
    const s2 = await handshake();
    await post(`/socket.io/?EIO=4&transport=polling&sid=${s2.sid}`, "40");
    await poll("/socket.io/", s2.sid);
    await post(`/socket.io/?EIO=4&transport=polling&sid=${s2.sid}`, "4abc");
    await sleep(100);
    const after = await get(`/socket.io/?EIO=4&transport=polling&sid=${s2.sid}`);
    assert.ok(after.status === 400 || after.text.split(SEP).includes("1"), `${after.status} ${after.text}`);
  },

  async engine_io() {
    const open = await handshake("/engine.io/");
    assert.equal(open.pingInterval, 300);
    const base = "/engine.io/";
    const r = await post(`${base}?EIO=4&transport=polling&sid=${open.sid}`, "4hello");
    assert.equal(r.status, 200);
    assert.equal(r.text, "ok");
    const packets = await poll(base, open.sid);
    assert.ok(packets.includes("4hello"), JSON.stringify(packets));
    // two concurrent GETs on one sid: an error and the session is closed
    const two = await handshake(base);
    // the server pings right after the handshake: take that first, then poll twice at once
    assert.ok((await get(`${base}?EIO=4&transport=polling&sid=${two.sid}`)).text.split(SEP).includes("2"));
    await post(`${base}?EIO=4&transport=polling&sid=${two.sid}`, "3");
    const [a, b] = await Promise.all([
      get(`${base}?EIO=4&transport=polling&sid=${two.sid}`),
      get(`${base}?EIO=4&transport=polling&sid=${two.sid}`),
    ]);
    assert.ok([a.status, b.status].some((st) => st === 400 || st === 500), `${a.status} ${b.status}`);
    // a pending poll gets a noop (6) during an upgrade
    const up = await handshake(base);
    assert.ok((await get(`${base}?EIO=4&transport=polling&sid=${up.sid}`)).text.split(SEP).includes("2"));
    await post(`${base}?EIO=4&transport=polling&sid=${up.sid}`, "3");
    const pending = get(`${base}?EIO=4&transport=polling&sid=${up.sid}`);
    const { s, next } = await wsOpen(`${base}?EIO=4&transport=websocket&sid=${up.sid}`);
    s.send("2probe");
    assert.equal(await next(), "3probe");
    const res = await pending;
    assert.ok(res.text.split(SEP).includes("6"), res.text);
    s.send("5");
    s.send("4over websocket");
    assert.equal(await next(), "4over websocket");
    s.close();
  },

  // An HTTP request carrying the sid of a session that has upgraded to WebSocket gets 400,
  // even when it follows the upgrade packet (5) at once, on both Engine.IO paths.
  async upgraded_sid_polling() {
    for (const base of ["/engine.io/", "/socket.io/"]) {
      for (let i = 0; i < 10; i++) {
        const { sid } = await handshake(base);
        if (base === "/socket.io/") await post(`${base}?EIO=4&transport=polling&sid=${sid}`, "40");
        const { s, next } = await wsOpen(`${base}?EIO=4&transport=websocket&sid=${sid}`);
        s.send("2probe");
        assert.equal(await next(), "3probe");
        s.send("5");
        const r = await get(`${base}?EIO=4&transport=polling&sid=${sid}`);
        assert.equal(r.status, 400, `${base} attempt ${i}: ${r.status} ${r.text}`);
        const p = await post(`${base}?EIO=4&transport=polling&sid=${sid}`, "4x");
        assert.equal(p.status, 400, `${base} POST attempt ${i}: ${p.status} ${p.text}`);
        // the session goes on over its WebSocket
        if (base === "/engine.io/") {
          s.send("4still here");
          assert.equal(await next(), "4still here");
        }
        s.close();
      }
    }
  },
});
