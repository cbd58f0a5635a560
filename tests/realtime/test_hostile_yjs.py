"""Issue 19's stall budget, on a real `syncline serve` process: a hostile client floods
never-fitting Yjs updates (each refused before the log, the client closed, reconnecting
at once), while a second client's edits round-trip to a third and `/healthz` answers,
both under 50 ms at the 99th percentile. The flooder runs in its own process too, so the
measuring clients do not compete with it for an event loop."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pycrdt
from cluster import make_token
from rtclients import text_of, until, yclient

ROOT = Path(__file__).resolve().parents[2]
FLOODER = r"""
import signal, sys
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed
from syncline.engine.lib0 import write_var_uint as u
from syncline.engine.yprotocol import encode_sync_update
sent, clock = 0, 0
def done(*_):
    print(sent, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    try:
        with connect(sys.argv[1]) as ws:
            while True:
                c = u(999)
                ws.send(encode_sync_update(b"\x01\x01" + c + u(clock) + b"\x84" + c + u(clock) + b"\x01x\x00"))
                clock += 1
                sent += 1
    except (ConnectionClosed, OSError):
        pass
"""


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


async def test_a_flood_of_never_fitting_updates_does_not_stall_the_gateway(cluster_factory, tmp_path):
    gw = cluster_factory(f"sqlite+aiosqlite:///{tmp_path}/hostile.db", n=1, proxy=False).gateways[0]
    url = f"{gw.ws_url}/v1/yjs/shared?token={make_token('mallory')}"
    flood = subprocess.Popen([sys.executable, "-c", FLOODER, url],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trips: list[float] = []
    health: list[float] = []
    try:
        await asyncio.sleep(1.0)  # let it get going
        async with yclient(gw.ws_url, "shared", user="alice") as d1, yclient(gw.ws_url, "shared", user="bob") as d2, \
                httpx.AsyncClient(base_url=gw.url) as h:
            text = d1.get("text", type=pycrdt.Text)
            for i in range(60):
                t0 = time.perf_counter()
                text += "k"
                await until(lambda n=i + 1: len(text_of(d2)) == n, 5, "bob to see the keystroke", interval=0.001)
                trips.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert (await h.get("/healthz")).status_code == 200
                health.append(time.perf_counter() - t0)
            assert text_of(d1) == text_of(d2) == "k" * 60
    finally:
        flood.terminate()
        out, err = flood.communicate(timeout=10)
    sent = int(out.strip().splitlines()[-1]) if out.strip() else 0
    assert sent >= 200, ("the hostile client never got going", err[-500:])
    refused = gw.metric('syncline_yjs_refused_total{code="update_never_fits"}')
    assert refused and refused >= 100
    assert gw.get("/v1/streams/doc/shared", limit=1000).json()["events"][0]["actor"]["user"] == "alice"
    assert p99(trips) < 0.05, sorted(trips)[-5:]
    assert p99(health) < 0.05, sorted(health)[-5:]
