/**
 * The server's resolution rules (engine/records/config.py `ResolutionConfig`), read from JSON.
 *
 * The shape (what `dataclasses.asdict` gives for the Python kit's config, which is what
 * `GET /v1/config/resolution` is to serve; a `{"resolution": {...}}` wrapper is accepted):
 *
 *   {"collections": {"<collection>": {"default": P, "fields": {"<field>": P}, "strict": false}},
 *    "default_collection": {"default": P, "fields": {...}, "strict": false} | null}
 *
 *   P = {"strategy": "lww" | "manual" | "merge", "merge": "<merge function name>" | null}
 *
 * The shorthands "lww", "manual" and "merge:<name>" (or {"merge": "<name>"}) are accepted
 * for P too. Without any config a replica treats every field as LWW for its optimistic
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
    if (p.startsWith("merge:")) return { strategy: "merge", merge: p.slice(6) };
    throw new InvalidResolutionConfig(`${where}: unknown strategy ${JSON.stringify(p)}`);
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
    const body = json && typeof json === "object" && json.resolution ? json.resolution : json || {};
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
