"""A bus consumer over the native WebSocket, with credit-based flow control.

    async with BusConsumer("ws://gw:8000", token, group="billing", credits=200) as c:
        async for batch in c:                      # lists of deliveries, in order per stream
            for d in batch:
                handle(d["event"])                  # make it idempotent: keyed by d["event"]["id"]
            await c.ack([d["id"] for d in batch])   # settles them and grants as many credits again

The server never sends more deliveries than the credits outstanding (``credits`` at the
start, then one back per ack or nack by default), so this consumer is never flooded:
what it has not asked for waits on the server. ``nack(ids, reason, delay_s=, trace=)``
fails deliveries (a counted attempt; the dead-letter queue after ``max_attempts``);
``extend(ids)`` asks for more time before the lease runs out. docs/protocol.md#bus-consumers.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, AsyncIterator

import websockets

from syncline.engine import protocol as P

from .errors import ClientKitError, ConnectionClosed


class ConsumerError(ClientKitError):
    code = "consumer_error"


class BusConsumer:
    def __init__(self, ws_base: str, token: str, *, group: str | None = None, kind: str = "group",
                 filter: dict[str, Any] | None = None, credits: int = 100, auto_credit: bool = True,
                 subprotocol: str = P.SUBPROTOCOL_MSGPACK, **options: Any) -> None:
        self.url = f"{ws_base.rstrip('/')}/v1/ws?token={token}"
        self.subprotocol = subprotocol
        self.spec = {k: v for k, v in dict(group=group, kind=kind, filter=filter, **options).items() if v is not None}
        self.credits = credits
        self.auto_credit = auto_credit
        self.id = "c1"
        self.session: dict[str, Any] | None = None
        self._ws: Any = None
        self._pinger: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self.unknown: list[str] = []  # ids the server said this consumer no longer held

    async def __aenter__(self) -> "BusConsumer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> dict[str, Any]:
        self._ws = await websockets.connect(self.url, subprotocols=[self.subprotocol], open_timeout=10,
                                            ping_interval=20, max_size=P.MAX_FRAME_BYTES * 2)
        await self._send(P.CONSUME, id=self.id, credits=self.credits, **self.spec)
        while True:
            msg = await self._recv()
            if msg["t"] == P.WELCOME:  # the server closes connections it hears nothing from
                self._pinger = asyncio.get_running_loop().create_task(self._ping(float(msg["heartbeat_s"])))
            elif msg["t"] == P.CONSUMING:
                self.session = msg
                return msg
            if msg["t"] == P.ERROR:
                raise ConsumerError(f"{msg.get('code')}: {msg.get('message')}", server_code=msg.get("code"))

    async def _ping(self, every_s: float) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(every_s)
                await self._send(P.PING)

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if self._ws is not None:
            try:
                await self._send(P.UNCONSUME, id=self.id)
            except Exception:
                pass
            await self._ws.close()
            self._ws = None

    async def _send(self, t: str, **fields: Any) -> None:
        await self._ws.send(P.encode_frame(P.message(t, **fields), self.subprotocol))

    async def _recv(self) -> dict[str, Any]:
        try:
            frame = await self._ws.recv()
        except websockets.ConnectionClosed as e:
            raise ConnectionClosed(str(e), close_code=e.rcvd.code if e.rcvd else None) from None
        return P.decode_frame(frame, self.subprotocol)

    async def next_batch(self) -> list[dict[str, Any]]:
        """The next pushed batch of deliveries (waits for one)."""
        while True:
            msg = await self._recv()
            t = msg["t"]
            if t == P.DELIVERIES:
                return msg["deliveries"]
            if t == P.SETTLED:
                self.unknown.extend(msg.get("unknown") or ())
            elif t == P.CONSUMER_CLOSED:
                raise ConnectionClosed(f"consumer closed: {msg.get('reason')}")
            elif t == P.ERROR:
                raise ConsumerError(f"{msg.get('code')}: {msg.get('message')}", server_code=msg.get("code"))
            elif t == P.BYE:
                raise ConnectionClosed(f"server said bye: {msg.get('code')}")

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        while True:
            yield await self.next_batch()

    async def grant(self, n: int) -> None:
        if n > 0:
            await self._send(P.CREDIT, id=self.id, n=n)

    async def ack(self, ids: list[str]) -> None:
        for chunk in _chunks(ids):
            await self._send(P.DACK, id=self.id, ids=chunk)
        if self.auto_credit:
            await self.grant(len(ids))

    async def nack(self, ids: list[str], reason: str, *, delay_s: float | None = None, trace: str = "") -> None:
        for chunk in _chunks(ids):
            await self._send(P.DNACK, id=self.id, ids=chunk, reason=reason[:2000], delay_s=delay_s,
                             trace=trace[:16_000])
        if self.auto_credit:
            await self.grant(len(ids))

    async def extend(self, ids: list[str], lease_s: float | None = None) -> None:
        for chunk in _chunks(ids):
            await self._send(P.EXTEND, id=self.id, ids=chunk, lease_s=lease_s)


def _chunks(ids: list[str], size: int = P.CONSUMER_IDS_MAX) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]

