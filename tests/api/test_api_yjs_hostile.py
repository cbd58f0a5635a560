"""Hostile Yjs updates meet the gateway: refused before the log, the client told and
closed. (The stall budget under a flood of them is measured against a gateway in its
own process: tests/realtime/test_hostile_yjs.py.)"""
from __future__ import annotations

import asyncio

import httpx
import websockets

from syncline.engine.lib0 import write_var_uint as write_uint
from syncline.engine.yprotocol import encode_sync_update


def self_referencing(client: int, clock: int) -> bytes:
    """A one-struct update naming its own id as its origin: it can never be integrated."""
    c = write_uint(client)
    return b"\x01\x01" + c + write_uint(clock) + b"\x84" + c + write_uint(clock) + b"\x01x" + b"\x00"


async def test_a_never_fitting_update_is_refused_and_its_client_closed(srv):
    url = f"{srv.ws_url}/v1/yjs/hostile?token={srv.token(user='mallory')}"
    async with websockets.connect(url, ping_interval=None) as ws:
        await ws.recv()  # sync step 1
        await ws.send(encode_sync_update(self_referencing(4242, 0)))
        try:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 4400 and e.rcvd.reason == "update_never_fits"
    events = httpx.get(f"{srv.url}/v1/streams/doc/hostile", headers=srv.headers()).json()["events"]
    assert events == []  # nothing of it reached the log
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'syncline_yjs_refused_total{code="update_never_fits"} 1.0' in metrics
