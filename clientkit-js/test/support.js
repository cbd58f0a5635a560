/**
 * Test helpers: a real `syncline serve` on a SQLite file (started and stopped by the
 * test), tokens minted by `syncline token`, and waiting on conditions (no sleeps).
 */
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const KIT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(KIT, "..");
export const PYTHON = process.env.SYNCLINE_PYTHON || "/work/main/.venv/bin/python";
export const SECRET = "clientkit-js-tests-secret-0123456789abcdef0123456789";

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

function env(extra = {}) {
  return { ...process.env, PYTHONPATH: ROOT, SYNCLINE_JWT_SECRET: SECRET, SYNCLINE_RATE_LIMIT_MESSAGES: "1000000",
    SYNCLINE_BATCH_WINDOW_MS: "2", SYNCLINE_POLL_INTERVAL_S: "0.2", SYNCLINE_SHUTDOWN_GRACE_S: "1",
    SYNCLINE_LOG_FORMAT: "json", ...extra };
}

/** Mint a token with `syncline token` (HS256 with the test secret). */
const minted = new Map();
export function mintToken(user = "alice", { tenant = "acme", ttl = 3600, role = "member", fresh = false } = {}) {
  const key = `${user}/${tenant}/${ttl}/${role}`;
  if (!fresh && minted.has(key)) return minted.get(key);
  const token = execFileSync(PYTHON, ["-m", "syncline.cli", "token", "--tenant", tenant, "--user", user, "--role", role, "--ttl", String(ttl)],
    { cwd: ROOT, env: env(), encoding: "utf8" }).trim();
  minted.set(key, token);
  return token;
}

export async function waitFor(predicate, timeoutMs = 10_000, what = "a condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** `python -m syncline.cli serve` on a SQLite file in a temporary directory. */
export class Server {
  /** @param {object} o {env, script}: script = a path under the repo run instead of `syncline serve` */
  constructor({ env: extra = {}, script = null } = {}) {
    this.extra = extra;
    this.script = script;
    this.dir = mkdtempSync(join(tmpdir(), "ckjs-"));
    this.proc = null;
  }

  async start() {
    this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const db = `sqlite+aiosqlite:///${join(this.dir, "syncline.db")}`;
    const args = this.script ? [join(ROOT, this.script), "--port", String(this.port), "--db", db]
      : ["-m", "syncline.cli", "serve", "--port", String(this.port), "--db", db];
    this.proc = spawn(PYTHON, args, { cwd: ROOT, env: env(this.extra), stdio: ["ignore", "ignore", "pipe"] });
    this.stderr = "";
    this.proc.stderr.on("data", (d) => { this.stderr = (this.stderr + d).slice(-4000); });
    const exited = new Promise((r) => this.proc.once("exit", (code) => r(code)));
    this.exited = exited;
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`server exited with ${this.proc.exitCode}: ${this.stderr}`);
      try {
        return (await fetch(`${this.url}/healthz`)).status === 200;
      } catch {
        return false;
      }
    }, 30_000, "the server to start");
    return this;
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(t);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async get(path, token) {
    const r = await fetch(this.url + path, { headers: { Authorization: `Bearer ${token}` } });
    return { status: r.status, body: await r.json() };
  }

  async post(path, token, body) {
    const r = await fetch(this.url + path, { method: "POST", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() };
  }
}
