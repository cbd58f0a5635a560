// The polling transport with a fake fetch: the server's adaptive interval (capped), at once
// while `more` is waiting; ops over POST /v1/ops; refusals as `error` with the batch's ref.
import { test } from "node:test";
import assert from "node:assert/strict";

import { PollingConnector } from "../src/transports/polling.js";

function server(pages) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push([url, init]);
    const u = new URL(url, "http://x");
    let body;
    let status = 200;
    if (u.pathname === "/v1/events/poll" && u.searchParams.get("limit") === "1") body = { events: [], next: 0, head: 7 };
    else if (u.pathname === "/v1/events/poll") body = pages.shift() || { events: [], next: 7, head: 7, more: false, poll_interval_s: 300 };
    else if (u.pathname === "/v1/ops") {
      const ops = JSON.parse(init.body).ops;
      if (ops[0].op === "bad") [status, body] = [400, { code: "invalid", message: "no" }];
      else body = { results: ops.map((o) => ({ op: o.op, kind: "applied" })) };
    }
    return { status, json: async () => body };
  };
  return { fetch, calls };
}

const ev = (p) => ({ type: "x", stream: "rec/t/1", position: p, data: { $b64: "AAE=" } });

test("polls at once while more is waiting, then waits the server's suggestion, capped", async () => {
  const s = server([
    { events: [ev(1)], next: 1, head: 3, more: true, poll_interval_s: 30 },
    { events: [ev(2), ev(3)], next: 3, head: 3, more: false, poll_interval_s: 0.05 },
    { events: [], next: 3, head: 3, more: false, poll_interval_s: 30 },
  ]);
  const conn = await new PollingConnector("http://x", "tok", { fetch: s.fetch, maxIntervalMs: 500 }).open("c1");
  const got = [];
  const intervals = [];
  conn.onmessage = (m) => got.push(m);
  assert.equal(got[0].t, "welcome");
  assert.equal(got[0].head, 7);
  conn.send({ t: "sub", id: "main", prefixes: ["rec/"], after: 0 });
  const origPoll = conn.poll.bind(conn);
  conn.poll = async () => {
    const w = await origPoll();
    intervals.push(w);
    return w;
  };
  while (intervals.length < 3) await new Promise((r) => setTimeout(r, 5));
  conn.close();
  assert.deepEqual(intervals, [0, 50, 500], "0 while more, the suggestion, then the cap");
  const batches = got.filter((m) => m.t === "events");
  assert.deepEqual(batches.map((b) => b.events.map((e) => e.position)), [[1], [2, 3]]);
  assert.deepEqual([...batches[0].events[0].data], [0, 1], "bytes decoded from $b64");
  const polled = s.calls.map(([u]) => u).filter((u) => u.includes("limit=1000"));
  assert.deepEqual(polled.slice(0, 3).map((u) => new URL(u).searchParams.get("after")), ["0", "1", "3"]);
  assert.equal(s.calls[0][1].headers.Authorization, "Bearer tok");
});

test("ops go over POST /v1/ops; a refused batch comes back as an error naming it", async () => {
  const s = server([]);
  const conn = await new PollingConnector("http://x", "tok", { fetch: s.fetch }).open("c1");
  const got = [];
  conn.onmessage = (m) => got.push(m);
  conn.send({ t: "ops", id: "b1", ops: [{ op: "c1.1" }] });
  conn.send({ t: "ops", id: "b2", ops: [{ op: "bad" }] });
  while (got.length < 3) await new Promise((r) => setTimeout(r, 5));
  conn.close();
  assert.deepEqual(got.find((m) => m.t === "opacks"), { t: "opacks", id: "b1", results: [{ op: "c1.1", kind: "applied" }] });
  assert.deepEqual(got.find((m) => m.t === "error"), { t: "error", code: "invalid", message: "no", ref: "b2" });
});
