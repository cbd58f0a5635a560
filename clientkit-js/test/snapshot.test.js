// Snapshot chunks made by the server's own code (engine.syncdata.chunk_snapshot), run
// here through Python: reassembled and verified by the kit, and refused when altered.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";

import { assembleSnapshot, SnapshotChecksumMismatch } from "../src/snapshot.js";
import { PYTHON, ROOT } from "./support.js";

const SCRIPT = `
import json
from syncline.engine.syncdata import chunk_snapshot, snapshot_checksum
content = {
    "rec/notes/1": {"kind": "record", "version": 3, "values": {"title": "hé", "score": 1.0, "n": -70000, "big": 2**40},
                    "conflicts": [], "state": {"vc": {"a": 2}, "fields": {}}},
    "rec/a b/2": {"kind": "record", "version": 1, "values": {"a b": 0.5, "a": None, "z'": True, 'q"': b"xy"}},
    "doc/x": {"kind": "doc", "bytes": b"\\x00\\x01"},
}
cs = snapshot_checksum(42, content)
print(json.dumps([{"index": c.index, "total": c.total, "checksum": c.checksum, "data": c.data.hex()}
                  for c in chunk_snapshot(42, content, cs, 64)]))
`;

function chunks() {
  const out = execFileSync(PYTHON, ["-c", SCRIPT], { cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, encoding: "utf8" });
  return JSON.parse(out).map((c) => ({ ...c, data: Uint8Array.from(Buffer.from(c.data, "hex")) }));
}

test("a server snapshot reassembles, in any chunk order, and its checksum verifies", () => {
  const cs = chunks();
  assert.ok(cs.length > 2);
  const snap = assembleSnapshot([...cs].reverse());
  assert.equal(snap.position, 42);
  assert.deepEqual(snap.content["rec/notes/1"].values, { title: "hé", score: 1, n: -70000, big: 2 ** 40 });
  assert.deepEqual([...snap.content["rec/a b/2"].values['q"']], [120, 121]);
});

test("an altered, incomplete or mixed snapshot is refused", () => {
  const cs = chunks();
  const bad = cs.map((c) => ({ ...c, data: c.data.slice() }));
  const last = bad[bad.length - 1].data;
  last[last.length - 1] ^= 1; // one bit of content
  assert.throws(() => assembleSnapshot(bad), SnapshotChecksumMismatch);
  assert.throws(() => assembleSnapshot(cs.slice(1)), /complete/);
  assert.throws(() => assembleSnapshot(cs.map((c, i) => (i ? c : { ...c, checksum: "0".repeat(64) }))), /complete/);
});
