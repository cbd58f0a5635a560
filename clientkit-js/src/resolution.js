/**
 * The server's resolution rules (engine/records/config.py `ResolutionConfig`), read from JSON.
 *
 * `GET /v1/config/resolution` answers `{"rules": R, "version": 1}` (engine/records/rules.py);
 * R (also accepted bare, or wrapped as `{"resolution": R}`) is
 *
 *   {"collections": {"<collection>": {"default": P, "fields": {"<field>": P}, "strict": false}},
 *    "default_collection": {"default": P, "fields": {...}, "strict": false} | null,
 *    "custom_merges": ["module:function", ...]}
 *
 *   P = "lww" | "manual" | "<merge function name>"   (a built-in such as "counter", or "module:function")
 *
 * The object form `{"strategy": "lww" | "manual" | "merge", "merge": name | null}` is accepted
 * for P too. A custom merge (`module:function`) is Python code on the server: a page that
 * uses such a collection registers a JavaScript function under the same name in the
 * registry it passes, or the config is refused (InvalidResolutionConfig names it). Without any config a replica treats every field as LWW for its optimistic
 * overlay, as the Python kit does without one; the fold itself needs none (each patch
 * carries its fields' strategies).
 */
import { BUILTINS } from "./merges.js";

const FIELD_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;
const COLLECTION_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

export class InvalidResolutionConfig extends Error {
  constructor(message) {
    super(message);
    this.code = "invalid_resolution_config";
  }
}

function policy(p, where) {
  if (p === undefined || p === null) return { strategy: "lww", merge: null };
  if (typeof p === "string") {
    if (p === "lww" || p === "manual") return { strategy: p, merge: null };
    if (p.length > 0) return { strategy: "merge", merge: p };
    throw new InvalidResolutionConfig(`${where}: an empty field policy`);
  }
  if (typeof p === "object") {
    const strategy = p.strategy ?? (p.merge ? "merge" : "lww");
    if (!["lww", "manual", "merge"].includes(strategy)) {
      throw new InvalidResolutionConfig(`${where}: unknown strategy ${JSON.stringify(strategy)}`);
    }
    const merge = p.merge ?? null;
    if ((strategy === "merge") !== (merge !== null)) {
      throw new InvalidResolutionConfig(`${where}: a merge name goes with the merge strategy, and only there`);
    }
    return { strategy, merge };
  }
  throw new InvalidResolutionConfig(`${where}: a field policy is a string or an object`);
}

function collection(c, where) {
  if (c === null || typeof c !== "object") throw new InvalidResolutionConfig(`${where}: a collection policy is an object`);
  const fields = {};
  for (const [name, p] of Object.entries(c.fields || {})) {
    if (!FIELD_RE.test(name)) throw new InvalidResolutionConfig(`${where}: invalid field name ${JSON.stringify(name)}`);
    fields[name] = policy(p, `${where}.${name}`);
  }
  return { default: policy(c.default, `${where}.<default>`), fields, strict: Boolean(c.strict) };
}

export class ResolutionConfig {
  /** @param {object} json the shape above; @param {MergeRegistry} registry merge functions by name */
  constructor(json = {}, registry = BUILTINS) {
    const wrapped = json && typeof json === "object" ? json.rules ?? json.resolution : undefined;
    const body = wrapped && typeof wrapped === "object" ? wrapped : json || {};
    this.registry = registry;
    this.collections = {};
    for (const [name, c] of Object.entries(body.collections || {})) this.collections[name] = collection(c, name);
    this.defaultCollection = body.default_collection ? collection(body.default_collection, "<any>") : null;
    const all = [...Object.values(this.collections), ...(this.defaultCollection ? [this.defaultCollection] : [])];
    for (const c of all) {
      for (const p of [c.default, ...Object.values(c.fields)]) {
        if (p.merge !== null && !registry.has(p.merge)) throw new InvalidResolutionConfig(`no merge function ${JSON.stringify(p.merge)}`);
      }
    }
  }

  /** The server's default: any collection, every field LWW (api/ops.py default_resolution). */
  static allLww(registry = BUILTINS) {
    return new ResolutionConfig({ collections: {}, default_collection: { default: { strategy: "lww", merge: null } } }, registry);
  }

  /** {strategy, merge} for a field, or null when the field is not allowed there. */
  fieldRule(collectionName, name) {
    let c = this.collections[collectionName];
    if (c === undefined) {
      if (this.defaultCollection === null || !COLLECTION_RE.test(collectionName)) return null;
      c = this.defaultCollection;
    }
    const p = c.fields[name];
    if (p !== undefined) return p;
    if (c.strict || typeof name !== "string" || !FIELD_RE.test(name)) return null;
    return c.default;
  }
}

/** `rec/<collection>/<id>` -> collection; null for anything else. */
export function collectionOf(stream) {
  if (!stream.startsWith("rec/")) return null;
  const parts = stream.split("/");
  if (parts.length !== 3 || !parts[1] || !parts[2]) return null;
  return parts[1];
}
