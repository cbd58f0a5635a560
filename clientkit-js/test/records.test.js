// The fold of record.patched events against the server's engine: random histories are
// reconciled by engine.records.reconcile (test/py/fold_cases.py, run here), and the JS fold
// of their events must give the very same encoded record state, values and conflicts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

import { encodeRecordState, foldEvent, recordConflicts, recordValues, conflictId, decodeRecordState, newRecord, applyChanges } from "../src/records.js";
import { COUNTER, UNION, BUILTINS, NO_INITIAL } from "../src/merges.js";
import { KIT, PYTHON, ROOT } from "./support.js";

function pythonCases(seed, cases) {
  const out = execFileSync(PYTHON, [join(KIT, "test/py/fold_cases.py"), "--seed", String(seed), "--cases", String(cases)],
    { cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, encoding: "utf8", maxBuffer: 64 << 20 });
  return JSON.parse(out);
}

test("the fold gives the server's record state, values and conflicts (random histories)", () => {
  let events = 0;
  let conflicts = 0;
  const seed = 1;
  {
    for (const c of pythonCases(seed, 80)) {
      const records = new Map();
      for (const e of c.events) foldEvent(records, e);
      events += c.events.length;
      assert.deepEqual([...records.keys()].sort(), Object.keys(c.states).sort());
      for (const [stream, state] of Object.entries(c.states)) {
        const rec = records.get(stream);
        assert.deepEqual(encodeRecordState(rec), state, `${stream} state (seed ${seed})`);
        assert.deepEqual(recordValues(rec), c.values[stream], `${stream} values`);
        assert.deepEqual(recordConflicts(rec).map((x) => x.id), c.conflicts[stream]);
        conflicts += c.conflicts[stream].length;
      }
    }
  }
  assert.ok(events > 1000, `only ${events} events`);
  assert.ok(conflicts > 0, "the histories made no manual conflict");
});

test("folding an event twice applies it once; a decoded state folds on like the original", () => {
  const [c] = pythonCases(11, 1);
  const a = new Map();
  for (const e of c.events) {
    foldEvent(a, e);
    assert.equal(foldEvent(a, e), null, "a replayed op is skipped");
  }
  // Install the state half-way (as a snapshot does) and fold the rest: same result.
  const half = Math.floor(c.events.length / 2);
  const b = new Map();
  for (const e of c.events.slice(0, half)) foldEvent(b, e);
  const installed = new Map([...b].map(([s, r]) => [s, decodeRecordState(s, encodeRecordState(r))]));
  for (const e of c.events.slice(half)) foldEvent(installed, e);
  for (const [s, r] of a) assert.deepEqual(encodeRecordState(installed.get(s)), encodeRecordState(r));
});

test("conflict ids are the server's", () => {
  const py = execFileSync(PYTHON, ["-c", "from syncline.engine.records import conflict_id; print(conflict_id('rec/n/1', 'title', ['b.2', 'a.1', 'é']))"],
    { cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, encoding: "utf8" }).trim();
  assert.equal(conflictId("rec/n/1", "title", ["b.2", "a.1", "é"]), py);
});

test("merge functions validate and combine as the server's", () => {
  assert.equal(COUNTER.combine(NO_INITIAL, 3), 3);
  assert.throws(() => COUNTER.validate(1.5));
  assert.deepEqual(UNION.validate(["b", 2, "a", 1, 2]), [1, 2, "a", "b"]);
  assert.deepEqual(UNION.fn([1, "a"], [0, "a", "z"]), [0, 1, "a", "z"]);
  assert.throws(() => UNION.validate([true]));
  assert.throws(() => BUILTINS.get("nope"), /no merge function/);
});

test("LWW: the greater (wall, logical, client, op id) wins whatever the order", () => {
  const stamp = (op, client, wall, clock) => ({ op, client, user: "u", hlc: { wall, logical: 0, node: client }, clock });
  const w1 = [stamp("a.1", "a", 5, { a: 1 }), [{ name: "x", strategy: "lww", value: 1, deleted: false }]];
  const w2 = [stamp("b.1", "b", 5, { b: 1 }), [{ name: "x", strategy: "lww", value: 2, deleted: false }]];
  for (const order of [[w1, w2], [w2, w1]]) {
    const rec = newRecord("rec/t/1");
    for (const [s, ch] of order) applyChanges(rec.fields, rec.stream, s, ch, BUILTINS, false);
    assert.equal(recordValues(rec).x, 2);
    assert.deepEqual(rec.fields.get("x").clock, { a: 1, b: 1 });
  }
});

test("the fold's data does not depend on the order events arrive in (same config)", () => {
  // Seeded shuffles of each history whose configuration never changed (a strategy change
  // is the one thing that depends on order, as on the server).
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  let checked = 0;
  for (const c of pythonCases(5, 40)) {
    const stable = c.events.every((e) => !("merge" in e.data && e.data.merge.title) && !("manual" in e.data && (e.data.manual.likes !== undefined || e.data.manual.tags !== undefined)));
    if (!stable) continue;
    const inOrder = new Map();
    for (const e of c.events) foldEvent(inOrder, e);
    for (let k = 0; k < 5; k++) {
      const shuffled = [...c.events];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
      }
      const other = new Map();
      for (const e of shuffled) foldEvent(other, e);
      for (const [s, r] of inOrder) assert.deepEqual(encodeRecordState(other.get(s)), encodeRecordState(r), `${s}, shuffle ${k}`);
      checked++;
    }
  }
  assert.ok(checked >= 50, `only ${checked} shuffles checked`);
});
