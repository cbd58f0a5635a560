"""One consumer group, three members in three runtimes, on PostgreSQL, over real sockets:
a Python member in-process (``bus.group``), a Python member over the native WebSocket in a
subprocess, and the JavaScript example (``node consumer.mjs``) over REST. The WebSocket
member SIGKILLs itself mid-batch. Every event must take effect exactly once (the
idempotent handler of effects.py / consumer.mjs), each stream's events in order, and a
poison event must reach the dead-letter queue with its trace after 3 attempts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from effects import PoisonError, apply_effect, prepare, read_effects
from waiting import until

from syncline.bus import Bus
from syncline.clientkit.publisher import Publisher
from syncline.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_CONSUMER = ROOT / "examples" / "bus-consumer-node" / "consumer.mjs"
STREAMS, PER_STREAM = 24, 100  # 2,400 events (+ the poison)


async def _groups(c: httpx.AsyncClient) -> list[dict]:
    r = await c.get("/v1/bus/groups")
    assert r.status_code == 200, r.text
    return r.json()["groups"]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
async def test_three_runtimes_one_group_sigkill_poison(net_gateway, pg_clean_url, tmp_path):
    srv = net_gateway(pg_clean_url)
    effects = tmp_path / "effects"
    prepare(effects)
    token = srv.token(tenant="acme", user="svc")
    admin = httpx.AsyncClient(base_url=srv.url, headers=srv.headers(tenant="acme", user="ops", roles=("admin",)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ws = subprocess.Popen([sys.executable, str(HERE / "ws_member.py"), srv.ws_url, token, "net", str(effects), "150"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    node = subprocess.Popen(["node", str(NODE_CONSUMER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "SYNCLINE_URL": srv.url, "SYNCLINE_TOKEN": token, "GROUP": "net",
                                 "EFFECTS_DIR": str(effects), "MEMBER": "node", "WAIT_S": "1", "LEASE_S": "10",
                                 "FAIL_TYPES": "poison.pill"})
    store = await open_store(pg_clean_url, poll_interval_s=0.1)

    async def local(d) -> None:
        ev = d.event
        wire = {"id": ev.id, "stream": ev.stream, "version": ev.version, "type": ev.type}
        apply_effect(effects, wire, "local", d.attempt, f"local{d.attempt}")

    member = None
    try:
        member = await Bus(store).group("net", local, tenant="acme", lease_s=3.0).start()

        async def three_share() -> bool:
            gs = [g for g in await _groups(admin) if g["group"] == "net"]
            return bool(gs) and len([m for m in gs[0]["members"] if m["partitions"]]) == 3
        await until(three_share, 60, "three members owning partitions")

        published: dict[str, str] = {}
        async with Publisher(srv.url, token) as pub:
            for chunk in range(0, PER_STREAM, 50):
                for s in range(STREAMS):
                    r = await pub.publish(f"orders/{s}", [{"type": "item.added", "data": {"n": chunk + i}}
                                                          for i in range(50)])
                    published.update(dict.fromkeys(r.event_ids, f"orders/{s}"))
            poison = (await pub.publish("poison/1", [{"type": "poison.pill", "data": {}}])).event_ids[0]

        await until(lambda: ws.poll() is not None, 60, "the WebSocket member to kill itself mid-batch")
        ws_out = ws.stdout.read()
        assert ws.returncode == -9, (ws.returncode, ws_out, ws.stderr.read()[-2000:])
        killed_at = [line.split()[1] for line in ws_out.splitlines() if line.startswith("kill ")]
        assert killed_at, ws_out

        await until(lambda: len(read_effects(effects)) >= len(published), 120,
                    f"{len(published)} effects (node: {node.poll()})")

        async def dead_letter():
            r = await admin.get("/v1/bus/dead-letters", params={"group": "net"})
            return [e for e in r.json()["entries"] if e["event_id"] == poison]
        entries = await until(dead_letter, 60, "the poison event in the dead-letter queue")
    finally:
        if member is not None:
            await member.stop()
        await store.close()
        node.terminate()
        if ws.poll() is None:
            ws.kill()
        node.wait(10)
        ws.wait(10)
        await admin.aclose()

    done = read_effects(effects)
    # Exactly once: every published event has its one effect, nothing else has one.
    assert set(done) == set(published)
    members = {e["member"] for e in done.values()}
    assert {"local", "node"} <= members and any(m.startswith("ws-") for m in members), members
    # The event the WebSocket member died holding was delivered again and found done.
    dups = {p.name.split(".")[0] for p in (effects / "dups").iterdir()}
    assert killed_at[0] in dups
    # Per-stream order: effects happened in version order.
    by_stream = defaultdict(list)
    for e in done.values():
        by_stream[e["stream"]].append(e)
    for stream, es in by_stream.items():
        es.sort(key=lambda e: e["version"])
        assert [e["version"] for e in es] == list(range(1, PER_STREAM + 1)), stream
        times = [e["at_us"] for e in es]
        assert times == sorted(times), f"{stream} took effect out of order"
    # The poison: 3 attempts, then the DLQ with why and where.
    (entry,) = entries
    assert entry["attempts"] == 3
    assert "poison.pill" in entry["reason"]
    assert entry["trace"] and ("Error" in entry["trace"] or "Traceback" in entry["trace"]), entry
    assert PoisonError.__name__ in entry["trace"] or "consumer.mjs" in entry["trace"] or "ws_member" in entry["trace"]
