// Offline drain of the JavaScript client kit, end to end against a real gateway process
// (benchmarks/offline_drain.py's drain, for clientkit-js):
//
//   1. start `syncline serve` on a SQLite file (a temporary directory);
//   2. queue N ops offline (default 10,000) in the kit's IndexedDB queue (fake-indexeddb in
//      Node), the Python benchmark's op shape: rec/items/<i % 1000> {n: i, title: "item i"};
//   3. reconnect (WebSocket) and wait for every ack: ops acknowledged per second, from
//      start() to an empty queue (acks deleted from the store included).
//
//   node bench/offline_drain.mjs [--ops N] [--store indexeddb|memory] [--codec msgpack|json]
//
// Last line: JSON with js_drain_ops_per_s (target >= 5,000, the Python kit's).
import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { IDBFactory } from "fake-indexeddb";
import { WebSocket } from "ws";

import { IndexedDbStore, MemoryStore, SynclineClient } from "../src/index.js";
import { mintToken, Server } from "../test/support.js";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

/** CPU seconds a process used so far (Linux /proc; null elsewhere). */
function procCpu(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks (100/s)
  } catch {
    return null;
  }
}

const OPS = Number(arg("ops", 10_000));
const STORE = arg("store", "indexeddb");
const CODEC = arg("codec", "msgpack");
const RECORDS = Number(process.env.DRAIN_RECORDS || 1000);

const server = await new Server({ env: { SYNCLINE_EVENT_BATCH_MAX: "2000" } }).start();
let result;
try {
  const token = mintToken("alice", { tenant: "bench" });
  const idb = new IDBFactory();
  const store = () => (STORE === "memory" ? shared : new IndexedDbStore("bench-alice", { indexedDB: idb }));
  const shared = new MemoryStore();
  const options = { url: server.url, token, user: "alice", WebSocket, loadConfig: false, queueLimit: Math.max(10_000, OPS),
    batchSize: 2000, maxInflight: 4, transport: { codec: CODEC } };

  // Offline: queue every op (never started), then close (the "page" goes away).
  let t = performance.now();
  const offline = await SynclineClient.open({ ...options, store: store() });
  for (let i = 0; i < OPS; i++) offline.set(`rec/items/${i % RECORDS}`, { n: i, title: `item ${i}` });
  await offline.close();
  const queueS = (performance.now() - t) / 1000;

  // Reload and reconnect: wait for every ack.
  const c = await SynclineClient.open({ ...options, store: store() });
  if (c.pending !== OPS) throw new Error(`expected ${OPS} queued ops, found ${c.pending}`);
  const kinds = {};
  c.on("opResult", ({ kind }) => (kinds[kind] = (kinds[kind] || 0) + 1));
  t = performance.now();
  const cpu0 = process.cpuUsage();
  const srv0 = procCpu(server.proc.pid);
  c.start();
  await c.waitFor(() => c.pending === 0, 300_000);
  await c.queue.flush();
  const drainS = (performance.now() - t) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const srv1 = procCpu(server.proc.pid);
  await c.close();
  if ((kinds.applied || 0) !== OPS) throw new Error(`not every op was applied: ${JSON.stringify(kinds)}`);
  result = { ops: OPS, store: STORE, queue_s: queueS, drain_s: drainS, js_drain_ops_per_s: OPS / drainS, results: kinds,
    client_cpu_s: (cpu.user + cpu.system) / 1e6, server_cpu_s: srv0 === null ? null : srv1 - srv0 };
} finally {
  await server.stop();
}

const rows = [
  ["node", process.version, `${cpus().length} cores`],
  ["store", result.store === "indexeddb" ? "IndexedDbStore (fake-indexeddb)" : "MemoryStore", ""],
  ["queued offline", result.ops.toLocaleString("en"), `${result.queue_s.toFixed(2)} s`],
  ["drained (every ack)", result.ops.toLocaleString("en"), `${result.drain_s.toFixed(2)} s`],
  ["CPU during the drain", `client ${result.client_cpu_s.toFixed(2)} s`, `server ${result.server_cpu_s?.toFixed(2)} s`],
  ["ops acked / s", Math.round(result.js_drain_ops_per_s).toLocaleString("en"), "target >= 5,000"],
];
for (const [a, b, c] of rows) console.log(`${a.padEnd(22)} ${String(b).padStart(34)}  ${c}`);
console.log(JSON.stringify({ js_drain_ops_per_s: Math.round(result.js_drain_ops_per_s), ops: result.ops, drain_s: Number(result.drain_s.toFixed(3)),
  queue_s: Number(result.queue_s.toFixed(3)), store: result.store, codec: CODEC, client_cpu_s: Number(result.client_cpu_s.toFixed(2)),
  server_cpu_s: result.server_cpu_s === null ? null : Number(result.server_cpu_s.toFixed(2)) }));
