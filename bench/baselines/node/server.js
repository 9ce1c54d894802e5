// The Node.js Socket.IO 4.8 baseline of `make bench`: the same chat events and payloads as
// sio-node with `--auth none` (README "Events"), clustered through @socket.io/redis-adapter.
//
//   PORT=3101 REDIS_URL=redis://127.0.0.1:6380 SID_PREFIX=a node server.js
//
// SID_PREFIX is prepended to every Engine.IO sid so that HAProxy can route a polling
// session's requests by its sid alone (`use-server a if { url_param(sid) -m beg a }`),
// without cookies and without a shared table: the same idea as sio-proxy's sid tag.
// PING_INTERVAL / PING_TIMEOUT (ms) default to the node's 25 s / 20 s.
//
// ADAPTER=sharded uses `createShardedAdapter` (Redis 7 sharded pub/sub) with
// `subscriptionMode: "dynamic"`: a channel per room with local members, as issue 12's
// scale-out scenario compares; the default is the classic `createAdapter`.
// GET /metrics counts, in Prometheus text, the adapter's Redis messages published and received
// and the channels it holds (the counters wrap the Redis clients' publish and subscribe calls),
// and the Engine.IO sessions open.
import { createServer } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import { Server } from "socket.io";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number(process.env.PORT || 3101);
const host = process.env.HOST || "127.0.0.1";
const sidPrefix = process.env.SID_PREFIX || "";

const counts = { published: 0, received: 0, subscriptions: 0 };

const httpServer = createServer((req, res) => {
  if (req.url === "/healthz" || req.url === "/readyz") {
    res.end("ok");
  } else if (req.url === "/metrics") {
    res.setHeader("Content-Type", "text/plain; version=0.0.4");
    res.end(
      `bench_adapter_messages_published_total ${counts.published}\n` +
        `bench_adapter_messages_received_total ${counts.received}\n` +
        `bench_adapter_subscriptions ${counts.subscriptions}\n` +
        `bench_connections ${io.engine.clientsCount}\n`,
    );
  } else {
    res.writeHead(404).end();
  }
});

const io = new Server(httpServer, {
  pingInterval: Number(process.env.PING_INTERVAL || 25000),
  pingTimeout: Number(process.env.PING_TIMEOUT || 20000),
  maxHttpBufferSize: 1e6,
  transports: ["polling", "websocket"],
  serveClient: false,
});
io.engine.generateId = () => sidPrefix + randomBytes(15).toString("base64url");

// Counts every message the adapter publishes and every one its subscriber receives.
const counted = (listener) => (...args) => {
  counts.received += 1;
  return listener(...args);
};
function countAdapterMessages(pub, sub) {
  for (const name of ["publish", "sPublish"]) {
    const original = pub[name].bind(pub);
    pub[name] = (...args) => {
      counts.published += 1;
      return original(...args);
    };
  }
  for (const name of ["subscribe", "pSubscribe", "sSubscribe"]) {
    const original = sub[name].bind(sub);
    sub[name] = (channels, listener, ...rest) => {
      counts.subscriptions += Array.isArray(channels) ? channels.length : 1;
      return original(channels, counted(listener), ...rest);
    };
  }
  for (const name of ["unsubscribe", "pUnsubscribe", "sUnsubscribe"]) {
    const original = sub[name].bind(sub);
    sub[name] = (channels, ...rest) => {
      counts.subscriptions -= Array.isArray(channels) ? channels.length : 1;
      return original(channels, ...rest);
    };
  }
}

if (process.env.REDIS_URL) {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  countAdapterMessages(pub, sub);
  const key = process.env.REDIS_PREFIX || "bench-node";
  io.adapter(
    process.env.ADAPTER === "sharded"
      ? createShardedAdapter(pub, sub, { channelPrefix: key, subscriptionMode: "dynamic" })
      : createAdapter(pub, sub, { key }),
  );
}

const validRoom = (r) => typeof r === "string" && r.length >= 1 && r.length <= 128;
const fail = (socket, ack, event, code, message) => {
  if (typeof ack === "function") ack({ error: { code, message } });
  else socket.emit("error", { event, code, message });
};

io.on("connection", (socket) => {
  const userId = String(socket.handshake.auth?.userId ?? socket.id);
  socket.emit("rooms-restored", { rooms: [] });

  socket.on("chat-message", (data, ack) => {
    io.emit("chat-message", data);
    if (typeof ack === "function") ack({ ok: true });
  });

  socket.on("join-room", (room, ack) => {
    if (!validRoom(room)) return fail(socket, ack, "join-room", "invalid_room", "join-room needs a room name");
    if (!socket.rooms.has(room)) {
      socket.join(room);
      socket.to(room).emit("user-joined", { userId, room });
      io.to(room).emit("presence", { userId, room, online: true });
    }
    if (typeof ack === "function") ack({ ok: true, room });
  });

  socket.on("room-message", (data, ack) => {
    const room = data?.room;
    const text = data?.text;
    if (!validRoom(room)) return fail(socket, ack, "room-message", "invalid_room", "bad room");
    if (typeof text !== "string" || text.length < 1 || text.length > 10000) {
      return fail(socket, ack, "room-message", "invalid_payload", "bad text");
    }
    if (!socket.rooms.has(room)) {
      return fail(socket, ack, "room-message", "not_in_room", `join room ${room} before sending to it`);
    }
    const id = randomUUID();
    io.to(room).emit("room-message", {
      id,
      room,
      sender: userId,
      text,
      timestamp: new Date().toISOString(),
    });
    if (typeof ack === "function") ack({ id });
  });
});

httpServer.listen(port, host, () => console.log(`node baseline listening on ${host}:${port}`));

const stop = () => {
  io.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
