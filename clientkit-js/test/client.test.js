// The shell's pieces that need no server: resolution rules loaded from the server (a fake
// fetch), token expiry, and the overlay that the rules drive.
import { test } from "node:test";
import assert from "node:assert/strict";

import { fetchResolution, ResolutionConfig, SynclineClient, tokenExpiry } from "../src/index.js";

const RULES = { resolution: { collections: { tasks: { default: { strategy: "lww", merge: null },
  fields: { votes: { strategy: "merge", merge: "counter" }, tags: { strategy: "merge", merge: "set_union" }, title: "manual" }, strict: false } },
default_collection: null } };

function fakeFetch(status, body) {
  const calls = [];
  const f = async (url, init) => {
    calls.push([url, init]);
    return { status, json: async () => body };
  };
  f.calls = calls;
  return f;
}

test("the rules come from GET /v1/config/resolution when the server publishes them", async () => {
  const f = fakeFetch(200, RULES);
  const c = await SynclineClient.open({ url: "http://x", token: "t", user: "alice", fetch: f });
  await c.set("rec/tasks/1", { votes: 1, tags: ["a"] });
  await c.set("rec/tasks/1", { votes: 2, tags: ["b", "a"] });
  assert.deepEqual(c.get("rec/tasks/1"), { votes: 2, tags: ["b", "a"] }, "without rules: last write shows");
  await c.refreshConfig();
  assert.equal(f.calls[0][0], "http://x/v1/config/resolution");
  assert.equal(f.calls[0][1].headers.Authorization, "Bearer t");
  assert.deepEqual(c.get("rec/tasks/1"), { votes: 3, tags: ["a", "b"] }, "with them: increments add, sets unite");
  assert.equal(c.core.replica.config.fieldRule("other", "x"), null, "no default collection: unknown collections are refused");
  await c.close();
});

test("without the route (404) or the server, the configured rules stay", async () => {
  assert.equal(await fetchResolution("http://x", "t", { fetch: fakeFetch(404, {}) }), null);
  assert.equal(await fetchResolution("http://x", "t", { fetch: async () => { throw new Error("offline"); } }), null);
  const c = await SynclineClient.open({ url: "http://x", token: "t", user: "alice", fetch: fakeFetch(404, {}),
    config: { collections: { tasks: { fields: { votes: "counter" } } } } });
  await c.refreshConfig();
  await c.set("rec/tasks/1", { votes: 1 });
  await c.set("rec/tasks/1", { votes: 1 });
  assert.equal(c.get("rec/tasks/1").votes, 2);
  await c.close();
});

test("invalid rules are refused with a stable code", () => {
  assert.throws(() => new ResolutionConfig({ collections: { t: { fields: { x: { strategy: "merge", merge: "nope" } } } } }),
    (e) => e.code === "invalid_resolution_config");
  assert.throws(() => new ResolutionConfig({ collections: { t: { fields: { x: "sometimes" } } } }), (e) => e.code === "invalid_resolution_config");
  assert.throws(() => new ResolutionConfig({ collections: { t: { fields: { "bad name!": "lww" } } } }), /invalid field name/);
});

test("tokenExpiry reads exp without verifying; anything else is null", () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(tokenExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "a", exp: 1234 })}.sig`), 1234);
  assert.equal(tokenExpiry("not a token"), null);
  assert.equal(tokenExpiry(`${b64({})}.${b64({ sub: "a" })}.sig`), null);
});
