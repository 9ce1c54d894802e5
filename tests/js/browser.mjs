// The official socket.io-client in Chromium (its browser bundle, as a page would load it),
// served from another origin than the cluster: CORS, long-polling, WebSocket and upgrade from
// a real browser, through sio-proxy. PAGE_PORT: where the page is served; URL: the proxy.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { api, token, URL } from "./lib.mjs";

const pagePort = Number(process.env.PAGE_PORT);
const bundle = fs.readFileSync(path.join("node_modules", "socket.io-client", "dist", "socket.io.min.js"));
const page = (mode, auth) => `<!doctype html>
<html><head><title>pending</title><script src="/socket.io.min.js"></script></head>
<body><pre id="log"></pre><script>
const log = (m) => (document.getElementById("log").textContent += m + "\\n");
const transports = ${JSON.stringify(mode === "polling" ? ["polling"] : mode === "websocket" ? ["websocket"] : ["polling", "websocket"])};
const fail = (e) => { document.title = "fail:" + (e && e.message || e); };
const room = "browser-" + Math.random().toString(36).slice(2, 8);
const chat = io(${JSON.stringify(URL)}, { auth: ${JSON.stringify(auth)}, transports, reconnection: false });
const notes = io(${JSON.stringify(URL)} + "/notifications", { auth: ${JSON.stringify(auth)}, transports, reconnection: false });
chat.on("connect_error", fail);
notes.on("connect_error", fail);
notes.on("connect", () => log("notes connected"));
let got = {};
notes.on("notification", (n) => { got.notification = n.message; done(); });
chat.on("room-message", (m) => { got.message = m.text; done(); });
function done() {
  if (got.notification && got.message) {
    const transport = chat.io.engine.transport.name;
    document.title = "ok:" + JSON.stringify({ ...got, transport });
  }
}
chat.on("connect", async () => {
  try {
    if (${JSON.stringify(mode)} === "upgrade" && chat.io.engine.transport.name !== "websocket") {
      await new Promise((r) => chat.io.engine.once("upgrade", r));
    }
    const joined = await chat.timeout(5000).emitWithAck("join-room", room);
    log("joined " + JSON.stringify(joined));
    const sent = await chat.timeout(5000).emitWithAck("room-message", { room, text: "from a browser" });
    log("sent " + JSON.stringify(sent));
  } catch (e) { fail(e); }
});
</script></body></html>`;

const mode = process.env.MODE || "websocket";
const user = `browser-${mode}-${Math.random().toString(36).slice(2, 8)}`;
const server = http.createServer((req, res) => {
  if (req.url === "/socket.io.min.js") {
    res.writeHead(200, { "content-type": "application/javascript" });
    return res.end(bundle);
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end(page(mode, { token: token(user) }));
});
await new Promise((r) => server.listen(pagePort, "127.0.0.1", r));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let result;
try {
  const tab = await browser.newPage();
  const errors = [];
  tab.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await tab.goto(`http://127.0.0.1:${pagePort}/`);
  // the notification is pushed by a backend once the page is connected and has chatted
  await tab
    .waitForFunction(() => {
      const t = document.getElementById("log").textContent;
      return document.title !== "pending" || (t.includes("notes connected") && t.includes("sent"));
    }, null, { timeout: 15000 })
    .catch(() => {});
  const sent = await api("/api/notify", { body: { userId: user, message: "to the browser" } });
  if (sent.status !== 200) throw new Error(`notify answered ${sent.status}: ${sent.text}`);
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline && (await tab.title()) === "pending") await new Promise((r) => setTimeout(r, 50));
  const title = await tab.title();
  result = { title, errors, log: await tab.textContent("#log") };
} finally {
  await browser.close();
  server.close();
}
if (!result.title.startsWith("ok:")) {
  console.error(JSON.stringify(result));
  process.exit(1);
}
const ok = JSON.parse(result.title.slice(3));
const expected = mode === "polling" ? "polling" : "websocket";
if (ok.transport !== expected || ok.message !== "from a browser" || ok.notification !== "to the browser") {
  console.error(JSON.stringify(result));
  process.exit(1);
}
console.log(JSON.stringify(ok));
process.exit(0);
