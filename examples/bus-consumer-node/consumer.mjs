// A Syncline bus consumer in plain Node (20+): REST long-poll, no framework, no npm packages.
//
//   SYNCLINE_URL=http://127.0.0.1:8000 SYNCLINE_TOKEN=<jwt> GROUP=billing EFFECTS_DIR=./effects \
//     node consumer.mjs
//
// It joins consumer group GROUP, long-polls for batches, runs an idempotent handler on each
// delivery, acks what succeeded and nacks what failed (with the error's stack as the trace),
// and leaves the group on SIGINT/SIGTERM. Delivery is at least once — a consumer that dies
// before acking gets its deliveries redelivered, to itself or another member — so the
// handler makes its effect idempotent: the effect is a file named by the event id, created
// exclusively ("wx"), so a redelivered event finds its effect done and is only acked.
// Replace `applyEffect` with your own work, keyed the same way (a unique key in your
// database, an idempotency key on the API you call).
//
// Settings (environment): FILTER (JSON, e.g. {"types":["order.*"],"where":[["country","eq","DE"]]}),
// MAX_BATCH (100), LEASE_S (30), WAIT_S (5), MEMBER (a name in the effect records),
// FAIL_TYPES (comma-separated event types whose handler throws: for tests).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const base = (process.env.SYNCLINE_URL ?? "http://127.0.0.1:8000").replace(/\/$/, "");
const token = process.env.SYNCLINE_TOKEN;
const group = process.env.GROUP ?? "example";
const effectsDir = process.env.EFFECTS_DIR ?? "./effects";
const member = process.env.MEMBER ?? `node-${process.pid}`;
const maxBatch = Number(process.env.MAX_BATCH ?? 100);
const leaseS = Number(process.env.LEASE_S ?? 30);
const waitS = Number(process.env.WAIT_S ?? 5);
const filter = process.env.FILTER ? JSON.parse(process.env.FILTER) : undefined;
const failTypes = new Set((process.env.FAIL_TYPES ?? "").split(",").filter(Boolean));
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };

mkdirSync(join(effectsDir, "by-id"), { recursive: true });
mkdirSync(join(effectsDir, "dups"), { recursive: true });

class HttpError extends Error {
  constructor(status, body) {
    super(`${status} ${body.code ?? ""}: ${body.message ?? ""}`);
    this.status = status;
    this.code = body.code;
  }
}

async function call(method, path, body) {
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new HttpError(r.status, data);
  return data;
}

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

// The idempotent handler: the effect exists once per event id, whoever delivers it how often.
function applyEffect(d) {
  const ev = d.event;
  if (failTypes.has(ev.type)) throw new Error(`cannot handle ${ev.type} (event ${ev.id})`);
  const record = { id: ev.id, stream: ev.stream, version: ev.version, member, attempt: d.attempt, at_us: nowUs() };
  try {
    writeFileSync(join(effectsDir, "by-id", ev.id), JSON.stringify(record), { flag: "wx" });
    return "done";
  } catch (e) {
    if (e.code !== "EEXIST") throw e;
    writeFileSync(join(effectsDir, "dups", `${ev.id}.${member}.${d.id}`), JSON.stringify(record));
    return "duplicate"; // done before (by us or another member): just ack
  }
}

let session = null;
let stopping = false;

async function joinGroup() {
  const s = await call("POST", "/v1/bus/consumers", { group, kind: "group", filter, lease_s: leaseS, max_batch: maxBatch });
  console.log(JSON.stringify({ joined: s.session, partitions: s.partitions }));
  return s.session;
}

async function leave() {
  stopping = true;
  if (session) await call("DELETE", `/v1/bus/consumers/${session}`).catch(() => {});
  process.exit(0);
}
process.on("SIGINT", leave);
process.on("SIGTERM", leave);

async function main() {
  session = await joinGroup();
  let backoff = 100;
  while (!stopping) {
    let deliveries;
    try {
      ({ deliveries } = await call("POST", `/v1/bus/consumers/${session}/fetch?wait=${waitS}&max=${maxBatch}`));
      backoff = 100;
    } catch (e) {
      if (e.code === "consumer_not_found") { session = await joinGroup(); continue; } // our session expired
      console.error(`fetch failed: ${e.message}; retrying in ${backoff} ms`);
      await new Promise((r) => setTimeout(r, backoff + Math.random() * backoff)); // backoff with jitter
      backoff = Math.min(backoff * 2, 5000);
      continue;
    }
    const acks = [];
    for (const d of deliveries) { // in order: a stream's events arrive in order within and across batches
      try {
        applyEffect(d);
        acks.push(d.id);
      } catch (e) {
        await call("POST", `/v1/bus/consumers/${session}/nack`, { ids: [d.id], reason: e.message, trace: e.stack ?? "" });
      }
    }
    if (acks.length) {
      const r = await call("POST", `/v1/bus/consumers/${session}/ack`, { ids: acks });
      if (r.unknown.length) console.error(`lease lost for ${r.unknown.length} deliveries (they are redelivered)`);
    }
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
