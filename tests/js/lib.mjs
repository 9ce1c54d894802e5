// Helpers shared by the scenarios: the official socket.io-client, JWTs, waits with timeouts.
import { io } from "socket.io-client";
import crypto from "node:crypto";

export const MODE = process.env.MODE || "websocket";
export const URL = process.env.URL || "http://127.0.0.1:3000";
export const API_KEY = process.env.API_KEY || "test-api-key";
export const JWT_SECRET = process.env.JWT_SECRET || "test-jwt-secret-0123456789abcdef0123456789";

export function transportOptions(mode = MODE) {
  switch (mode) {
    case "polling":
      return { transports: ["polling"] };
    case "websocket":
      return { transports: ["websocket"] };
    case "upgrade":
      return { transports: ["polling", "websocket"], upgrade: true };
    default:
      throw new Error(`unknown MODE ${mode}`);
  }
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/**
 * A JWT for `sub`, valid for `ttl` seconds (negative: already expired). Development tokens
 * allow every room (`rooms: ["*"]`); pass `rooms: null` for a token without the claim.
 * `alg` HS256 signs with `secret`; RS256 / ES256 sign with `key` (a private KeyObject or PEM);
 * `claims` adds or overrides claims; `header` overrides the header.
 */
export function token(sub, { ttl = 3600, secret = JWT_SECRET, rooms = ["*"], admin, claims = {}, alg = "HS256", key, header } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { sub, iat: now, exp: now + ttl, ...claims };
  if (rooms !== null) body.rooms = rooms;
  if (admin !== undefined) body.admin = admin;
  const head = b64url(JSON.stringify(header ?? { alg, typ: "JWT" }));
  const payload = b64url(JSON.stringify(body));
  return `${head}.${payload}.${sign(alg, `${head}.${payload}`, { secret, key })}`;
}

/** The JWS signature of `input` with `alg`. */
export function sign(alg, input, { secret = JWT_SECRET, key } = {}) {
  switch (alg) {
    case "HS256":
      return b64url(crypto.createHmac("sha256", secret).update(input).digest());
    case "RS256":
      return b64url(crypto.sign("sha256", Buffer.from(input), key));
    case "ES256":
      return b64url(crypto.sign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" }));
    case "none":
      return "";
    default:
      throw new Error(`cannot sign with ${alg}`);
  }
}

/** A socket of `user` on namespace `ns` (not waited for). */
export function socketFor(user, { ns = "/", url = URL, mode = MODE, auth, reconnection = false, ...rest } = {}) {
  return io(url + (ns === "/" ? "" : ns), {
    forceNew: true,
    reconnection,
    timeout: 10000,
    auth: auth ?? { token: token(user) },
    ...transportOptions(mode),
    ...rest,
  });
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves with the next `event` on `emitter`, rejects after `ms`. */
export function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`));
    }, ms);
    const on = (...args) => {
      clearTimeout(t);
      resolve(args.length > 1 ? args : args[0]);
    };
    emitter.once(event, on);
  });
}

/** `err` with what the transport saw (HTTP status, the answer or the socket error) in its
 * message, so a failure in CI says whether the server refused, answered an error or reset. */
export function withDetail(err) {
  if (err?.type !== "TransportError" || err.detailed) return err;
  err.detailed = true;
  const xhr = err.context;
  const answer = typeof xhr?.responseText === "string" ? xhr.responseText.slice(0, 300) : "";
  const status = xhr?.status ?? err.description?.message ?? err.description;
  err.message = `${err.message} (status ${status}${answer ? `, answer: ${answer}` : ""})`;
  return err;
}

/** Waits until `socket` is connected (and upgraded in upgrade mode); rejects on connect_error. */
export async function connected(socket, { ms = 10000, mode = MODE } = {}) {
  if (!socket.connected) {
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no connect within ${ms} ms`)), ms);
      socket.once("connect", () => {
        clearTimeout(t);
        resolve();
      });
      socket.once("connect_error", (err) => {
        clearTimeout(t);
        reject(withDetail(err));
      });
    });
  }
  if (mode === "upgrade") {
    const engine = socket.io.engine;
    if (engine.transport.name !== "websocket") {
      await once(engine, "upgrade", ms);
    }
  }
  return socket;
}

/** Connects `user` and waits for it. */
export async function connect(user, opts = {}) {
  return connected(socketFor(user, opts), opts);
}

/** Rejects with the connect_error of `socket`, or throws if it connects. */
export function connectError(socket, ms = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("neither connect nor connect_error")), ms);
    socket.once("connect", () => {
      clearTimeout(t);
      reject(new Error("connected although it should have been refused"));
    });
    socket.once("connect_error", (err) => {
      clearTimeout(t);
      resolve(err);
    });
  });
}

/** Emits with an ack and a timeout. */
export function ack(socket, event, data, ms = 5000) {
  return socket.timeout(ms).emitWithAck(event, data);
}

/** Records every `event` received by `socket`. */
export function collect(socket, event) {
  const got = [];
  socket.on(event, (data) => got.push(data));
  return got;
}

/** Polls `pred` until true or `ms` pass. */
export async function waitFor(pred, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(20);
  }
  if (!(await pred())) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** Calls the HTTP API. */
export async function api(path, { method = "POST", body, key = API_KEY, url = URL, raw, headers = {} } = {}) {
  const h = { ...headers };
  if (key !== null) h.authorization = `Bearer ${key}`;
  if (body !== undefined && raw === undefined) h["content-type"] = "application/json";
  const res = await fetch(url + path, {
    method,
    headers: h,
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: json, text };
}

export function closeAll(...sockets) {
  for (const s of sockets.flat()) s.close();
}

/** Runs the scenario named by $SCENARIO from `scenarios`; exit code tells the result. */
export function main(scenarios) {
  const name = process.env.SCENARIO;
  const fn = scenarios[name];
  if (!fn) {
    console.error(`unknown SCENARIO ${name}; known: ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  const guard = setTimeout(() => {
    console.error(`scenario ${name} did not finish in 120 s`);
    process.exit(1);
  }, 120000);
  fn()
    .then((result) => {
      clearTimeout(guard);
      if (result !== undefined) console.log(JSON.stringify(result));
      process.exit(0);
    })
    .catch((err) => {
      console.error(`scenario ${name} (${MODE}) failed:`, err?.stack ?? err);
      process.exit(1);
    });
}
