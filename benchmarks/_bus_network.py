"""A consumer group whose members consume over the network API (for benchmarks/bus.py).

    eps = await network_group_eps(pg_url, events=100_000, members=4)

Starts a gateway on ``pg_url`` in a subprocess (on a free port), pre-publishes ``events``
events over 64 streams of a fresh tenant, starts ``members`` consumer processes that
join one 16-partition group over the native WebSocket (credit-based push; faster than
REST long-polling: no request per batch), waits until the group is split evenly, then
grants the credits and measures until the group's checkpoints reach the last event.
Returns events per second through the group.

Members start with no credits, so they receive nothing while the group rebalances; the
gateway's sessions may already hold up to their buffer bound (``SYNCLINE_BUS_CONSUMER_
BUFFER_MAX``) read from the log by then — a head start of at most members × that bound.

Run alone: ``python benchmarks/_bus_network.py PG_URL [EVENTS] [MEMBERS]``.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
STREAMS = 64
CREDITS = 10_000  # per member: more than the gateway holds for it, so the window never runs dry
BUFFER_MAX = 2_000  # the gateway's default bound per session (also the most a batch can carry)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _token(tenant: str) -> str:
    import jwt

    return jwt.encode({"sub": "bench", "tenant": tenant, "roles": ["admin"], "exp": int(time.time()) + 3600},
                      SECRET, algorithm="HS256")


# ------------------------------------------------------------------ processes

def _gateway_main(pg_url: str, port: int) -> None:
    from syncline.api.app import create_app
    from syncline.api.settings import Settings
    from syncline.server import make_server

    settings = Settings(database_url=pg_url, redis_url=None, jwt_secret=SECRET, jwt_algorithm="HS256",
                        jwt_public_key=None, log_json=True, rest_rate_requests=10_000_000,
                        rate_limit_messages=10_000_000, bus_consumer_buffer_max=BUFFER_MAX,
                        bus_consumer_batch_max=CREDITS, webhook_url=None, webhook_secret=None,
                        activity_projections=False, prune_interval_s=0)
    server = make_server(create_app(settings), "127.0.0.1", port)
    asyncio.run(server.serve())


def _member_main(ws_base: str, token: str, group: str) -> None:
    from syncline.clientkit.bus_consumer import BusConsumer

    async def run() -> None:
        async with BusConsumer(ws_base, token, group=group, credits=0, max_batch=CREDITS, lease_s=60) as c:
            print("joined", c.session["session"], flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.readline)  # "go"
            await c.grant(CREDITS)
            n = 0
            while True:
                batch = await c.next_batch()
                n += len(batch)
                await c.ack([d["id"] for d in batch])

    asyncio.run(run())


# ------------------------------------------------------------------ the measurement

async def _publish(pg_url: str, tenant: str, events: int) -> int:
    from syncline.engine.events import NewEvent, StreamWrite
    from syncline.store import open_store

    store = await open_store(pg_url)
    try:
        last = 0
        per_call = 2000
        for start in range(0, events, per_call):
            n = min(per_call, events - start)
            writes = [StreamWrite(f"orders/{s}", tuple(NewEvent("item.added", {"n": start + i})
                                                      for i in range(s, n, STREAMS)))
                      for s in range(min(STREAMS, n))]
            r = await store.append_many(tenant, writes)
            last = max(last, max(w.last_position for w in r.streams))
        return last
    finally:
        await store.close()


async def _group(store, tenant: str, group: str) -> dict | None:
    from syncline.bus import Bus

    return next((g for g in await Bus(store).groups(tenant) if g["group"] == group), None)


async def network_group_eps(pg_url: str, events: int, members: int = 4) -> float:
    from syncline.store import open_store

    tenant = f"net{uuid.uuid4().hex[:8]}"
    group = "bench"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    me = str(Path(__file__).resolve())
    gateway = subprocess.Popen([sys.executable, me, "_gateway", pg_url, str(port)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: list[subprocess.Popen] = []
    store = None
    try:
        import httpx

        async with httpx.AsyncClient() as h:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await h.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not start")
                await asyncio.sleep(0.1)
        last = await _publish(pg_url, tenant, events)
        token = _token(tenant)
        for _ in range(members):
            procs.append(subprocess.Popen([sys.executable, me, "_member", f"ws://127.0.0.1:{port}", token, group],
                                          env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True))
        sessions = []
        for p in procs:
            line = await asyncio.get_running_loop().run_in_executor(None, p.stdout.readline)
            if not line.startswith("joined"):
                raise RuntimeError(f"a member did not join: {line!r}")
            sessions.append(line.split()[1])
        store = await open_store(pg_url)
        deadline = time.monotonic() + 60
        while True:  # an even split before timing (members joined one after another)
            g = await _group(store, tenant, group)
            owned = sorted(len(m["partitions"]) for m in g["members"]) if g else []
            if len(owned) == members and owned[-1] - owned[0] <= 1 and not g["unowned"]:
                break
            if time.monotonic() > deadline:
                break  # measure anyway: the split evens out as they go
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {token}"}) as h:
            held = sum([(await h.get(f"/v1/bus/consumers/{s}")).json()["waiting"] for s in sessions])
        # (read from the log and waiting in the gateway before the clock starts: the head start)
        print(f"network_group_eps: split {owned}, {held} of {events} events already waiting in the gateway",
              file=sys.stderr)
        from syncline.store.bus import GroupStore

        checkpoints = GroupStore(store, tenant, group)  # (one small query: the lowest partition checkpoint)
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        while True:
            low = await checkpoints.low_watermark()
            if low >= last:
                break
            if os.environ.get("BENCH_VERBOSE"):
                print(f"{time.perf_counter() - t0:.1f}s low={low} of {last}", file=sys.stderr)
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("the group did not finish in 600 s")
            await asyncio.sleep(0.05)
        return events / (time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)
        gateway.terminate()
        try:
            gateway.wait(20)
        except subprocess.TimeoutExpired:
            gateway.kill()
        if store is not None:
            await store.close()


if __name__ == "__main__":
    if sys.argv[1] == "_gateway":
        _gateway_main(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "_member":
        _member_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
        m = int(sys.argv[3]) if len(sys.argv) > 3 else 4
        print(json.dumps({"network_group_eps": round(asyncio.run(network_group_eps(sys.argv[1], n, m)))}))
