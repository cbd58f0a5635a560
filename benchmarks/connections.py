"""Idle WebSocket connections: how many one server process holds, and the memory each costs.

N authenticated y-websocket connections (a JWT in the query string) to one document on
one server process, opened in steps and left idle; the server's resident memory (VmRSS
from /proc) is read before the first connection and after each step, once it has
settled. KB per connection = (RSS after N − RSS before) / N. Syncline (``syncline
serve``, its default WebSocket implementation) and the anchor (pycrdt-websocket under
uvicorn, in-memory rooms) in the same run. Loopback only; the clients are spread over
several processes (asyncio + ``websockets``), each raising its open-files limit.

    python benchmarks/connections.py [--quick] [--n 10000] [--ws IMPL]
    python benchmarks/connections.py --tracemalloc [--n 500] [--ws IMPL]

``--tracemalloc``: the server runs in this process under tracemalloc (the clients in
another); prints the Python memory allocated per idle connection and where it goes.
Unlike RSS it does not depend on allocator fragmentation or load: use it to compare
changes.

Last line: JSON with ``connections_held``, ``kb_per_conn``, ``anchor_kb_per_conn``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fanout import OUT, Server, raise_nofile, token  # noqa: E402

CLIENT_PROCS = 2


def client_proc(url: str, count: int, conn_q: mp.Queue, stop: mp.Event) -> None:
    """Open ``count`` connections (at most 200 handshakes at a time), report how many
    are open, hold them until ``stop``."""
    raise_nofile()

    async def main() -> None:
        import websockets

        sem = asyncio.Semaphore(200)
        conns = []

        async def one() -> None:
            async with sem:
                try:
                    ws = await websockets.connect(url, compression=None, ping_interval=None, open_timeout=120,
                                                  max_queue=4)
                    await asyncio.wait_for(ws.recv(), 30)  # the server's sync step 1: fully set up
                    conns.append(ws)
                except Exception:
                    pass

        await asyncio.gather(*(one() for _ in range(count)))
        conn_q.put(len(conns))
        while not stop.is_set():
            await asyncio.sleep(0.2)
        open_ = sum(1 for ws in conns if ws.state.name == "OPEN")
        conn_q.put(open_)
        for ws in conns:
            ws.transport.abort()

    asyncio.run(main())


def settle_rss(server: Server, wait_s: float = 2.0) -> int:
    """RSS after the server has been quiet (idle CPU) for a moment."""
    time.sleep(0.5)
    last = server.cpu_s()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(wait_s / 2)
        now = server.cpu_s()
        if now - last < 0.02:
            break
        last = now
    return server.rss_kb()


def measure(server: Server, steps: list[int]) -> dict:
    path = f"/v1/yjs/idle-{server.port}"
    url = server.url(path) + f"?token={token()}"
    # Warm up: the first connection loads the document and imports the lazy parts.
    stop = mp.Event()
    q: mp.Queue = mp.Queue()
    warm = mp.Process(target=client_proc, args=(url, 1, q, stop))
    warm.start()
    q.get(timeout=60)
    base = settle_rss(server)
    held, points, procs = 1, [(1, base)], [warm]
    for n in steps:
        add = n - held
        per = [add // CLIENT_PROCS + (1 if i < add % CLIENT_PROCS else 0) for i in range(CLIENT_PROCS)]
        started = []
        for k in per:
            if k:
                p = mp.Process(target=client_proc, args=(url, k, q, stop))
                p.start()
                started.append(p)
        opened = sum(q.get(timeout=600) for _ in started)
        procs += started
        held += opened
        rss = settle_rss(server)
        points.append((held, rss))
        print(f"  {server.label:28} {held:6} connections  RSS {rss / 1024:8.1f} MiB  "
              f"{(rss - base) / max(1, held - 1):6.1f} KB/conn", flush=True)
        if opened < add:
            print(f"  {server.label}: only {opened} of {add} opened; stopping here", flush=True)
            break
    stop.set()
    still_open = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    n, rss = points[-1]
    return {"held": min(n, still_open), "kb_per_conn": (rss - base) / max(1, n - 1), "base_kb": base,
            "points": points}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in results.items():
        xs = [n for n, _ in r["points"]]
        ax.plot(xs, [(rss - r["base_kb"]) / 1024 for _, rss in r["points"]], marker="o",
                label=f"{label}: {r['kb_per_conn']:.1f} KB/conn")
    ax.set_xlabel("idle connections")
    ax.set_ylabel("server RSS growth, MiB")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def traced(n: int, ws: str, top: int = 60) -> None:
    """Python allocations per idle connection: the server in this process (a thread
    with its own event loop) under tracemalloc, ``n`` clients from one other process."""
    import gc
    import tempfile
    import threading
    import tracemalloc

    from fanout import SECRET, free_port

    os.environ.update(SYNCLINE_JWT_SECRET=SECRET, SYNCLINE_LOG_FORMAT="json", SYNCLINE_PRUNE_INTERVAL_S="0",
                      SYNCLINE_RATE_LIMIT_MESSAGES="100000000",
                      # 10,000 sockets of one user from one address: the caps are lifted
                      SYNCLINE_WS_MAX_CONNECTIONS_PER_USER="0", SYNCLINE_WS_MAX_CONNECTIONS_PER_IP="0")
    import logging

    from syncline.api.app import create_app
    from syncline.api.logging import configure_logging
    from syncline.api.settings import Settings
    from syncline.server import make_server

    configure_logging(True, logging.WARNING)  # no log line per connection
    tmp = tempfile.mkdtemp(prefix="conn-trace-")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/trace.db", port=free_port())
    app = create_app(settings)
    server = make_server(app, "127.0.0.1", settings.port, ws=ws)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"ws://127.0.0.1:{settings.port}/v1/yjs/idle-trace?token={token()}"

    def idle_snapshot(wait_s: float = 2.0) -> "tracemalloc.Snapshot":
        time.sleep(wait_s)
        gc.collect()
        return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])

    stop, q = mp.Event(), mp.Queue()
    warm = mp.Process(target=client_proc, args=(url, 1, q, stop))
    warm.start()
    q.get(timeout=60)
    tracemalloc.start(8)
    before = idle_snapshot()
    p = mp.Process(target=client_proc, args=(url, n, q, stop))
    p.start()
    opened = q.get(timeout=600)
    after = idle_snapshot()
    tracemalloc.stop()
    stop.set()
    for proc in (warm, p):
        q.get(timeout=120)
        proc.join(30)
    server.should_exit = True
    thread.join(30)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"{ws}: {opened} idle connections, {total / opened / 1024:.2f} KB allocated per connection "
          f"(tracemalloc)")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / opened:8.0f} B  {stat.count_diff / opened:5.1f} blocks  "
              f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}")
    print(json.dumps({"ws_impl": ws, "connections": opened, "traced_kb_per_conn": round(total / opened / 1024, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--ws", default="lean", help="WebSocket implementation for Syncline (syncline serve --ws)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="in-process: Python allocations per connection and where they go (default n=500)")
    args = ap.parse_args()
    raise_nofile()
    if args.tracemalloc:
        traced(args.n or 500, args.ws)
        return
    n = args.n or (1000 if args.quick else 10_000)
    steps = sorted({max(2, n // 10), n // 2, n})
    print(f"up to {n} idle connections; load avg {os.getloadavg()}", flush=True)
    results = {}
    for server in (Server("syncline", args.ws), Server("anchor")):
        server.start()
        try:
            results[server.label] = measure(server, steps)
        finally:
            server.stop()
    plot(results, OUT / "connections.png")
    ours, anchor = results[f"syncline/{args.ws}"], results["anchor"]
    print(json.dumps({
        "connections_held": ours["held"],
        "kb_per_conn": round(ours["kb_per_conn"], 1),
        "anchor_kb_per_conn": round(anchor["kb_per_conn"], 1),
        "anchor_connections_held": anchor["held"],
        "target_n": n,
        "ws_impl": args.ws,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
