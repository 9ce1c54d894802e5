// Validates prometheus-operator objects (ServiceMonitor, PrometheusRule, PodMonitor) offline.
//
//   node tests/manifests/validate-crds.mjs objects.json
//
// objects.json holds a JSON array of {"source": "...", "object": {...}} entries (written by
// lint.py from the rendered overlays). Two layers:
//   1. the CRD schema as compiled by @kubernetes-models/prometheus-operator (types, required
//      fields, enums, duration patterns);
//   2. unknown fields: that schema accepts extra properties, but the API server rejects them
//      (kubectl applies with --validate=strict), so every key is checked against the model's
//      TypeScript declarations, walked with the TypeScript compiler API.
// Prints one line per problem and exits 1 if there is any; prints nothing on success.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const require = createRequire(import.meta.url);
const ts = require("typescript");

const MODELS = {
  ServiceMonitor: v1.ServiceMonitor,
  PrometheusRule: v1.PrometheusRule,
  PodMonitor: v1.PodMonitor,
};

const problems = [];

// --- layer 2: the declared shape of each kind --------------------------------------------
const pkgDir = dirname(require.resolve("@kubernetes-models/prometheus-operator/package.json"));
const declFiles = Object.keys(MODELS).map((kind) => join(pkgDir, "monitoring.coreos.com/v1", `${kind}.d.ts`));
const program = ts.createProgram(declFiles, {
  noEmit: true,
  skipLibCheck: true,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
});
const checker = program.getTypeChecker();

function interfaceType(kind) {
  const file = program.getSourceFile(join(pkgDir, "monitoring.coreos.com/v1", `${kind}.d.ts`));
  if (!file) throw new Error(`cannot load the declarations of ${kind}`);
  for (const stmt of file.statements) {
    if (ts.isInterfaceDeclaration(stmt) && stmt.name.text === `I${kind}`) {
      return checker.getTypeAtLocation(stmt.name);
    }
  }
  throw new Error(`interface I${kind} not found in its declaration file`);
}

function isArray(type) {
  return checker.isArrayType ? checker.isArrayType(type) : type.symbol?.name === "Array";
}

// The object-like members of a (possibly union, possibly optional) type.
function objectParts(type) {
  const parts = type.isUnion() ? type.types : [type];
  return parts.filter((t) => !(t.flags & (ts.TypeFlags.Undefined | ts.TypeFlags.Null)));
}

function checkValue(value, type, path, source) {
  if (value === null || typeof value !== "object") return;
  for (const part of objectParts(type)) {
    if (Array.isArray(value)) {
      if (isArray(part)) {
        const [element] = checker.getTypeArguments(part);
        value.forEach((item, i) => checkValue(item, element, `${path}[${i}]`, source));
        return;
      }
      continue;
    }
    if (isArray(part) || !(part.flags & ts.TypeFlags.Object)) continue;
    const props = new Map(checker.getPropertiesOfType(part).map((p) => [p.getName(), p]));
    const index = checker.getIndexInfosOfType(part)[0];
    if (props.size === 0 && !index) return; // an opaque object (e.g. {}): nothing to check
    for (const [key, item] of Object.entries(value)) {
      const prop = props.get(key);
      if (prop) {
        checkValue(item, checker.getTypeOfSymbol(prop), `${path}.${key}`, source);
      } else if (index) {
        checkValue(item, index.type, `${path}.${key}`, source);
      } else {
        const known = [...props.keys()].sort().join(", ");
        problems.push(`${source}: unknown field ${path}.${key} (known here: ${known})`);
      }
    }
    return;
  }
}

// --- main ----------------------------------------------------------------------------------
const input = process.argv[2];
if (!input) {
  console.error("usage: node validate-crds.mjs objects.json");
  process.exit(2);
}
const entries = JSON.parse(readFileSync(input, "utf8"));
const shapes = {};
for (const { source, object } of entries) {
  const Model = MODELS[object.kind];
  const where = `${source}: ${object.kind}/${object.metadata?.name}`;
  if (!Model || object.apiVersion !== "monitoring.coreos.com/v1") {
    problems.push(`${where}: no schema for ${object.apiVersion} ${object.kind} (add it to validate-crds.mjs)`);
    continue;
  }
  try {
    new Model(object).validate();
  } catch (e) {
    problems.push(`${where}: ${e.message}`);
  }
  shapes[object.kind] ??= interfaceType(object.kind);
  checkValue(object, shapes[object.kind], object.kind, where);
}
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
