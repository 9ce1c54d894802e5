// Prints an HS256 JWT for $SUB (tests that speak raw Engine.IO need one).
import { token } from "./lib.mjs";
console.log(token(process.env.SUB || "user"));
