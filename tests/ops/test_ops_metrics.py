"""Every metric family added for operations (docs/observability.md#metrics) moves under a
scripted workload: REST appends, a native WebSocket subscriber, a poll, a record
conflict, a Yjs update between two real Yjs clients, an invalid traceparent; scraped
over a real socket before and after."""
from __future__ import annotations

import asyncio
import time

import httpx
import pycrdt
import websockets
from api_wsclient import NativeClient
from ops_scrape import scrape, value
from services_support import PrivateRedis
from waiting import until, wait_for

from syncline.engine import protocol as P
from syncline.engine.clocks import HLCTimestamp


class _Channel:
    """pycrdt's Channel over a websockets connection (as tests/api/test_api_yjs.py)."""

    def __init__(self, ws, path: str) -> None:
        self.ws, self._path = ws, path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.ws.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        return await self.ws.recv()


def _op(op_id: str, client: str, ms: int, title: str) -> dict:
    return {"kind": "op", "op": op_id, "client": client, "user": "alice", "stream": "rec/notes/n1",
            "vc": {client: 1}, "hlc": HLCTimestamp(ms, 0, client).encode(), "set": {"title": title}}


async def _yjs_edit(srv) -> None:
    """A writer and a reader on one document: the writer's update reaches the reader."""
    writer_doc, reader_doc = pycrdt.Doc(), pycrdt.Doc()
    url = f"{srv.ws_url}/v1/yjs/pad?token={srv.token()}"
    async with websockets.connect(url, ping_interval=None) as w, websockets.connect(url, ping_interval=None) as r:
        async with pycrdt.Provider(writer_doc, _Channel(w, "pad")) as pw, \
                pycrdt.Provider(reader_doc, _Channel(r, "pad")) as pr:
            await asyncio.wait_for(pw.synced.wait(), 5)
            await asyncio.wait_for(pr.synced.wait(), 5)
            writer_doc.get("text", type=pycrdt.Text).insert(0, "hello")
            await until(lambda: str(reader_doc.get("text", type=pycrdt.Text)) == "hello", 5, "the reader's text")


async def test_every_added_family_moves_under_a_scripted_workload(gateway, redis_url):
    srv = gateway(redis_url=redis_url)
    wait_for(lambda: srv.gw.hub.redis_state == "up", 10, "the hub to reach Redis")
    before = scrape(srv.url)

    sub = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    await sub.expect(P.WELCOME)
    await sub.send(P.SUB, id="s1", streams=["notes/1"], after=0)
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers()) as c:
        for i in range(3):
            r = await c.post("/v1/streams/notes/1", json={"events": [{"type": "note.added", "data": {"i": i}}]})
            assert r.status_code == 201, r.text
        got = 0
        while got < 3:
            got += len((await sub.expect(P.EVENTS))["events"])
        assert (await c.get("/v1/events/poll", params={"after": 0})).json()["events"]
        # A record conflict: two clients wrote the title concurrently (neither saw the other).
        now = int(time.time() * 1000)
        first = (await c.post("/v1/ops", json={"ops": [_op("o1", "ca", now, "a")]})).json()["results"][0]
        second = (await c.post("/v1/ops", json={"ops": [_op("o2", "cb", now + 1, "b")]})).json()["results"][0]
        assert (first["kind"], second["kind"]) == ("applied", "merged"), (first, second)
        r = await c.get("/v1/streams/notes/1", headers={"traceparent": "00-garbage"})
        assert r.status_code == 200
    await _yjs_edit(srv)
    await sub.close()

    after = scrape(srv.url)
    moved = {
        ("syncline_events_appended_total", ("via", "rest")),
        ("syncline_events_appended_total", ("via", "ops")),
        ("syncline_events_appended_total", ("via", "yjs")),
        ("syncline_events_delivered_total", ("path", "native")),
        ("syncline_events_delivered_total", ("path", "poll")),
        ("syncline_events_delivered_total", ("path", "yjs")),
        ("syncline_delivery_latency_seconds_count", ("endpoint", "native")),
        ("syncline_delivery_latency_seconds_count", ("endpoint", "yjs")),
        ("syncline_store_latency_seconds_count", ("op", "append")),
        ("syncline_store_latency_seconds_count", ("op", "commit")),
        ("syncline_store_latency_seconds_count", ("op", "read")),
        ("syncline_traceparent_invalid_total", ("path", "rest")),
    }
    stuck = [(name, label) for name, label in moved
             if value(after, name, **{label[0]: label[1]}) <= value(before, name, **{label[0]: label[1]})]
    assert not stuck, f"families that did not move: {stuck}"
    assert value(after, "syncline_conflicts_total", strategy="lww", outcome="merged") == 1.0
    assert value(after, "syncline_redis_up") == 1.0
    assert ("syncline_hub_queue_depth", ()) in after
    # Delivered within the histogram's range: the latency is commit to frame written, not garbage.
    for endpoint in ("native", "yjs"):
        total = value(after, "syncline_delivery_latency_seconds_sum", endpoint=endpoint)
        count = value(after, "syncline_delivery_latency_seconds_count", endpoint=endpoint)
        assert 0 <= total / count < 5, (endpoint, total, count)
    # Bounded label sets: no tenant, user, stream or document name in any label.
    for (name, labels), _ in after.items():
        if name.startswith(("syncline_delivery", "syncline_store", "syncline_conflicts", "syncline_events_")):
            assert all(v not in ("acme", "alice", "bob", "pad", "notes/1") for _, v in labels), (name, labels)


def test_redis_up_gauge_follows_redis(gateway, tmp_path):
    redis = PrivateRedis().start()
    try:
        srv = gateway(redis_url=redis.url)
        wait_for(lambda: value(scrape(srv.url), "syncline_redis_up") == 1.0, 10, "redis_up 1")
        redis.kill()
        wait_for(lambda: value(scrape(srv.url), "syncline_redis_up") == 0.0, 10, "redis_up 0")
        redis.start()
        wait_for(lambda: value(scrape(srv.url), "syncline_redis_up") == 1.0, 15, "redis_up 1 again")
    finally:
        redis.stop()
    plain = gateway()
    assert value(scrape(plain.url), "syncline_redis_up") == -1.0  # not configured
