// A join hook for the tests: a real HTTP server on 127.0.0.1:$PORT.
//   POST /join {userId, room, claims}: 200 for rooms named allow-*, 403 for deny-* (and for
//     rooms revoked with POST /deny), 500 for err-*, 200 after 2 s for slow-*, else 404.
//   POST /deny {room}, POST /allow {room}: revoke or restore one room.
//   GET /requests: every /join body received, in order.
import http from "node:http";

const port = Number(process.env.PORT || 0);
const requests = [];
const revoked = new Set();

function body(req) {
  return new Promise((resolve, reject) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => {
      try {
        resolve(data ? JSON.parse(data) : {});
      } catch (e) {
        reject(e);
      }
    });
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  const answer = (status, json = {}) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(json));
  };
  try {
    if (req.method === "GET" && req.url === "/requests") return answer(200, requests);
    if (req.method !== "POST") return answer(405);
    const b = await body(req);
    if (req.url === "/deny") {
      revoked.add(b.room);
      return answer(200);
    }
    if (req.url === "/allow") {
      revoked.delete(b.room);
      return answer(200);
    }
    if (req.url !== "/join") return answer(404);
    requests.push({ ...b, contentType: req.headers["content-type"] });
    const room = String(b.room);
    if (revoked.has(room) || room.startsWith("deny-")) return answer(403, { allowed: false });
    if (room.startsWith("allow-")) return answer(200, { allowed: true });
    if (room.startsWith("err-")) return answer(500, { error: "boom" });
    if (room.startsWith("slow-")) return setTimeout(() => answer(200, { allowed: true }), 2000);
    return answer(404);
  } catch (e) {
    answer(400, { error: String(e) });
  }
});
server.listen(port, "127.0.0.1", () => console.log(`hook listening on ${server.address().port}`));
