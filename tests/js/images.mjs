// The cluster started from the built images with the rendered manifests' settings
// (deploy/images/test.py): the official client through the proxy. URL: the proxy; NODE_URLS:
// the nodes (to check that the clients were spread over them); JWT_SECRET / API_KEY: the
// manifests' Secret values. The manifests trust no X-Forwarded-For, so each client connects
// from its own loopback address (127.0.1.N) for the proxy's ip-hash to spread them.
import assert from "node:assert/strict";
import http from "node:http";
import { ack, api, closeAll, collect, connected, main, once, socketFor, waitFor, URL } from "./lib.mjs";

const NODE_URLS = (process.env.NODE_URLS || "").split(",").filter(Boolean);
const tag = Math.random().toString(36).slice(2, 8);
const from = (n) => new http.Agent({ localAddress: `127.0.1.${n}` });

async function connections(url) {
  const text = await (await fetch(url + "/metrics")).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("sio_connections{"))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

main({
  // connect, join a room, a room message to every member (across nodes), a notification
  // through the HTTP API, the admin UI's page: all through the proxy.
  async cluster() {
    const modes = ["websocket", "polling", "upgrade"];
    const users = Array.from({ length: 9 }, (_, i) => `img-${tag}-${i}`);
    const sockets = users.map((u, i) =>
      socketFor(u, { url: URL, mode: modes[i % 3], agent: from(i + 1) }),
    );
    try {
      await Promise.all(sockets.map((s, i) => connected(s, { mode: modes[i % 3], ms: 20000 })));
      const spread = await Promise.all(NODE_URLS.map(connections));
      const used = spread.filter((n) => n > 0).length;
      assert.ok(NODE_URLS.length < 2 || used >= 2, `the proxy put every client on one node: ${spread}`);

      const room = `images-${tag}`;
      for (const s of sockets) assert.deepEqual(await ack(s, "join-room", room), { ok: true, room });
      const got = sockets.map((s) => collect(s, "room-message"));
      const { id } = await ack(sockets[0], "room-message", { room, text: "hello from the images" });
      assert.ok(id, "room-message acked without id");
      await waitFor(() => got.every((g) => g.some((m) => m.id === id)), 10000, "the room message on every member");
      for (const g of got) {
        const m = g.find((x) => x.id === id);
        assert.equal(m.sender, users[0]);
        assert.equal(m.text, "hello from the images");
      }

      const notes = socketFor(users[4], { url: URL, ns: "/notifications", mode: "websocket", agent: from(100) });
      sockets.push(notes);
      const synced = once(notes, "notifications-synced", 20000);
      await connected(notes, { mode: "websocket", ms: 20000 });
      await synced;
      const next = once(notes, "notification", 10000);
      const r = await api("/api/notify", { url: URL, body: { userId: users[4], message: "from the images" } });
      assert.ok(r.status >= 200 && r.status < 300, `POST /api/notify: ${r.status} ${r.text}`);
      const n = await next;
      assert.equal(n.message, "from the images");

      const page = await fetch(URL + "/admin/");
      const html = await page.text();
      assert.equal(page.status, 200, `GET /admin/ through the proxy: ${page.status} ${html.slice(0, 200)}`);
      assert.match(html, /<html/i, "GET /admin/ is not the admin UI's page");
      return { nodesUsed: used, connectionsPerNode: spread, roomMembers: got.length, notification: n.id };
    } finally {
      closeAll(sockets);
    }
  },
});
