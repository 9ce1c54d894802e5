// The Socket.IO admin UI served by the cluster itself, in Chromium, through sio-proxy:
// official clients connected to every node, a refused password, the log-in, every node on the
// Servers page, the clients' sockets and rooms, a socket disconnected from the UI, an event
// emitted to a room with the UI's session, and a screenshot.
// URL: the proxy; NODES: comma-separated node URLs; NODE_IDS: their ids; ADMIN_USER /
// ADMIN_PASSWORD; SHOTS: directory for the screenshots.
import path from "node:path";
import { chromium } from "playwright-core";
import { socketFor, once, URL } from "./lib.mjs";

const nodes = process.env.NODES.split(",");
const nodeIds = process.env.NODE_IDS.split(",");
const user = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const shots = process.env.SHOTS;
const step = (m) => console.log(`[admin] ${m}`);

// Two clients per node, directly on the node (the proxy would put every client of one address
// on one node): "red" room on nodes 1 and 2, "blue" on node 3 and one more.
const clients = [];
for (let i = 0; i < nodes.length * 2; i++) {
  const node = nodes[i % nodes.length];
  const room = i < 4 ? "red" : "blue";
  const mode = ["websocket", "polling", "upgrade"][i % 3];
  const socket = socketFor(`admin-user-${i}`, { url: node, mode });
  await once(socket, "connect", 10000);
  const joined = await socket.timeout(5000).emitWithAck("join-room", room);
  if (!joined.ok) throw new Error(`join-room answered ${JSON.stringify(joined)}`);
  const got = [];
  socket.on("admin-news", (...args) => got.push(args));
  clients.push({ socket, room, id: socket.id, got, node });
}
step(`${clients.length} clients connected on ${nodes.length} nodes`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];
const external = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("request", (r) => {
    if (!r.url().startsWith(URL) && !r.url().startsWith("data:")) external.push(r.url());
  });
  await page.goto(`${URL}/admin/`);

  // the log-in form, pre-filled with the cluster's address
  const form = page.locator("form").filter({ has: page.locator('input[type="password"]') });
  await form.waitFor({ timeout: 15000 });
  const serverUrl = await form.locator("input").first().inputValue();
  if (serverUrl !== URL) failures.push(`server URL pre-filled with ${JSON.stringify(serverUrl)}, not ${URL}`);

  const inputs = form.locator("input");
  await inputs.nth(1).fill(user);
  await inputs.nth(2).fill("not-the-password");
  await form.locator('button[type="submit"]').click();
  await page.getByText("Invalid credentials").waitFor({ timeout: 10000 });
  step("a wrong password is refused");

  await inputs.nth(2).fill(password);
  await form.locator('button[type="submit"]').click();
  await form.waitFor({ state: "hidden", timeout: 10000 });
  const session = await page.evaluate(() => localStorage.getItem("session_id"));
  if (!session) failures.push("no session id kept after the log-in");
  step("logged in");

  // every node sends its server_stats
  await page.goto(`${URL}/admin/#/servers/`);
  for (const id of nodeIds) {
    await page.locator("td", { hasText: new RegExp(`^\\s*${id}\\s*$`) }).first().waitFor({ timeout: 15000 });
  }
  step(`Servers page lists ${nodeIds.join(", ")}`);
  await page.screenshot({ path: path.join(shots, "admin-ui-servers.png") });

  // every client's socket, whichever node holds it
  await page.goto(`${URL}/admin/#/sockets/`);
  for (const c of clients) {
    await page.locator("tr", { hasText: c.id }).first().waitFor({ timeout: 15000 });
  }
  step("Sockets page lists every client");
  await page.goto(`${URL}/admin/#/rooms/`);
  for (const room of ["red", "blue"]) {
    await page.locator("td", { hasText: new RegExp(`^\\s*${room}\\s*$`) }).first().waitFor({ timeout: 10000 });
  }
  step("Rooms page lists red and blue");

  // disconnect one socket (on another node than the UI's) from the Sockets page
  const victim = clients[1];
  const gone = once(victim.socket, "disconnect", 10000);
  await page.goto(`${URL}/admin/#/sockets/`);
  const row = page.locator("tr", { hasText: victim.id }).first();
  await row.locator("button").first().click();
  const seen = await gone;
  const reason = Array.isArray(seen) ? seen[0] : seen;
  if (reason !== "io server disconnect") failures.push(`the disconnected client saw ${reason}`);
  step(`socket ${victim.id} disconnected from the UI (${reason})`);
  await page.goto(`${URL}/admin/#/sockets/`);
  await page.locator("tr", { hasText: clients[0].id }).first().waitFor({ timeout: 10000 });
  const stillThere = await page
    .locator("tr", { hasText: victim.id })
    .first()
    .waitFor({ state: "detached", timeout: 10000 })
    .then(() => false, () => true);
  if (stillThere) failures.push("the disconnected socket is still listed");

  // emit to a room: the UI 0.5.1 has no form for it (its `emit` button is a TODO), so the page
  // sends the `emit` command as the UI would, on a socket logged in with the UI's session
  await page.addScriptTag({ path: path.join("node_modules", "socket.io-client", "dist", "socket.io.min.js") });
  const emitted = await page.evaluate(async ([url, sessionId]) => {
    const admin = io(url + "/admin", { auth: { sessionId }, transports: ["websocket"], forceNew: true });
    await new Promise((ok, ko) => { admin.once("connect", ok); admin.once("connect_error", ko); });
    const answer = await admin.timeout(5000).emitWithAck("emit", "/", "red", "admin-news", { text: "from the admin UI" }, 42);
    admin.close();
    return answer;
  }, [URL, session]);
  step(`emit answered ${JSON.stringify(emitted)}`);
  const deadline = Date.now() + 5000;
  const red = clients.filter((c) => c.room === "red" && c !== victim);
  while (Date.now() < deadline && red.some((c) => c.got.length === 0)) await new Promise((r) => setTimeout(r, 50));
  for (const c of clients) {
    const want = c.room === "red" && c !== victim ? 1 : 0;
    if (c.got.length !== want) failures.push(`${c.id} (${c.room}) got ${c.got.length} admin-news`);
    if (want && JSON.stringify(c.got[0]) !== JSON.stringify([{ text: "from the admin UI" }, 42]))
      failures.push(`${c.id} got ${JSON.stringify(c.got[0])}`);
  }
  if (emitted.sockets !== red.length) failures.push(`emit reached ${emitted.sockets} sockets, expected ${red.length}`);
  step(`room red (${red.length} sockets on ${new Set(red.map((c) => c.node)).size} nodes) got the event`);

  await page.goto(`${URL}/admin/#/`);
  await page.waitForTimeout(1000); // let the charts draw
  await page.screenshot({ path: path.join(shots, "admin-ui.png") });
  if (external.length) failures.push(`the page reached outside the cluster: ${external.slice(0, 3).join(", ")}`);
} finally {
  await browser.close();
  for (const c of clients) c.socket.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
step("ok");
process.exit(0);
