// Writes the key pairs of the token tests into $KEY_DIR (PEM): rsa, rsa-other (2048 bits),
// ec, ec-other (P-256) and ec384 (P-384); `<name>.pem` is the private key (PKCS#8),
// `<name>.pub.pem` the public key (SPKI). Keys are made fresh for every run.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

const dir = process.env.KEY_DIR;
if (!dir) {
  console.error("set KEY_DIR");
  process.exit(2);
}
fs.mkdirSync(dir, { recursive: true });
const enc = {
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
};
const pairs = {
  rsa: ["rsa", { modulusLength: 2048 }],
  "rsa-other": ["rsa", { modulusLength: 2048 }],
  ec: ["ec", { namedCurve: "P-256" }],
  "ec-other": ["ec", { namedCurve: "P-256" }],
  ec384: ["ec", { namedCurve: "P-384" }],
};
for (const [name, [type, opts]] of Object.entries(pairs)) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync(type, { ...opts, ...enc });
  fs.writeFileSync(path.join(dir, `${name}.pem`), privateKey);
  fs.writeFileSync(path.join(dir, `${name}.pub.pem`), publicKey);
}
console.log(JSON.stringify(Object.keys(pairs)));
