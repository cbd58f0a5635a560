"""/metrics' per-group bus families over a real socket after a workload, and
`syncline serve --relay redis-streams` resuming after a SIGKILL without gaps."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from bus_helpers import eventually
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402

from syncline.bus import Batch, Bus, RetryPolicy  # noqa: E402
from syncline.engine.events import NewEvent  # noqa: E402
from syncline.store import open_store  # noqa: E402

FAMILIES = ("syncline_bus_published", "syncline_bus_consumed", "syncline_consumer_lag_events",
            "syncline_dead_letter_entries", "syncline_bus_processing_seconds")


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        out[("family", (("name", fam.name),))] = 1
    return out


def test_bus_metrics_families_present_and_moving_over_a_socket(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/bus.db"
    g = RunningGateway(base_settings(db, bus_metrics_interval_s=0.1)).start()
    try:
        before = _scrape(g.url)
        families = {k[1][0][1] for k in before if k[0] == "family"}
        assert set(FAMILIES) <= families, families
        assert before[("syncline_bus_published_total", ())] == 0

        async def workload() -> None:  # a group in the gateway's process, on its database
            store = await open_store(db, poll_interval_s=0.05)

            async def handler(batch: Batch) -> None:
                for d in batch.deliveries:
                    if d.event.data.get("poison"):
                        d.nack("cannot")

            m = await Bus(store).group("billing", handler, tenant="acme", partitions=2, batched=True,
                                       policy=RetryPolicy(retry_delay_s=0.001, max_attempts=2)).start()
            for i in range(20):
                await store.append("acme", f"inv/{i % 3}", [NewEvent("invoice.issued", {"i": i, "poison": i == 5})])
            await eventually(lambda: m.stats.handled == 19 and m.stats.dead_lettered == 1, what="the workload")
            await m.stop()
            for i in range(7):  # published while nobody consumes: lag
                await store.append("acme", "inv/late", [NewEvent("invoice.issued", {"i": i})])
            await store.close()

        asyncio.run(workload())
        group = (("group", "billing"), ("tenant", "acme"))

        def moved() -> bool:
            now = _scrape(g.url)
            return (now.get(("syncline_bus_published_total", ()), 0) >= 27
                    and now.get(("syncline_bus_consumed_total", group), 0) == 19
                    and now.get(("syncline_consumer_lag_events", group), 0) >= 7
                    and now.get(("syncline_dead_letter_entries", (*group[:1], ("status", "dead"), group[1])), 0) == 1
                    and now.get(("syncline_bus_processing_seconds_count", group), 0) >= 2)

        asyncio.run(eventually(moved, 15, "every bus family to move"))
    finally:
        g.stop()


# ----------------------------------------------------------------------- relay

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """``syncline serve --relay redis-streams`` on a SQLite file, as a child process."""

    def __init__(self, workdir: Path, db: str, redis_url: str, key: str) -> None:
        self.port = _free_port()
        self.log = workdir / "serve.log"
        self.cmd = [sys.executable, "-m", "syncline.cli", "serve", "--port", str(self.port), "--db", db,
                    "--redis", redis_url, "--relay", "redis-streams"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
        self.env.update({"SYNCLINE_RELAY_KEY": key, "SYNCLINE_POLL_INTERVAL_S": "0.1",
                         "SYNCLINE_PRUNE_INTERVAL_S": "0", "PYTHONUNBUFFERED": "1"})
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Serve":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_serving(self.proc, f"http://127.0.0.1:{self.port}", self.log.read_text)
        return self

    def readyz(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).json()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.mark.slow
def test_serve_relay_resumes_after_a_kill_without_gaps(tmp_path, redis_client_url):
    db = f"sqlite+aiosqlite:///{tmp_path}/relay.db"
    key = f"relay-test:{os.getpid()}"
    r = redis.Redis.from_url(redis_client_url)
    servers: list[Serve] = []

    async def publish(n: int, start: int) -> None:
        store = await open_store(db)
        try:
            for j in range(start, start + n):
                await store.append("acme" if j % 3 else "globex", f"s/{j % 7}", [NewEvent("x.made", {"j": j})])
        finally:
            await store.close()

    try:
        asyncio.run(publish(1, 0))  # creates the database before the server opens it
        servers.append(Serve(tmp_path, db, redis_client_url, key).start())
        ready = servers[0].readyz()
        assert ready["dependencies"]["relay"]["state"] == "up", ready
        asyncio.run(publish(300, 1))
        # killed mid-stream: as soon as some, not all, have reached Redis
        asyncio.run(eventually(lambda: r.xlen(key) >= 20, 30, "the relay to start publishing"))
        servers[0].kill()
        asyncio.run(publish(200, 301))  # while the server is down
        servers.append(Serve(tmp_path, db, redis_client_url, key).start())
        asyncio.run(publish(100, 501))
        asyncio.run(eventually(lambda: r.xlen(key) == 601, 60, "every event in Redis"))
        entries = r.xrange(key)
        positions = [int(eid.split(b"-")[0]) for eid, _ in entries]
        assert positions == list(range(1, 602))  # in log order, no gap, no duplicate
        assert sorted(int(f[b"position"]) for _, f in entries) == positions
        relay = servers[1].readyz()["dependencies"]["relay"]
        assert relay["state"] == "up" and relay["checkpoint"] == 601
    finally:
        for s in servers:
            s.kill()
        r.delete(key)
        r.close()
