"""A small native-protocol test client on the `websockets` library."""
from __future__ import annotations

import asyncio
from typing import Any

import websockets

from syncline.engine import protocol as P


class NativeClient:
    def __init__(self, ws, subprotocol: str) -> None:
        self.ws = ws
        self.subprotocol = subprotocol

    @classmethod
    async def connect(cls, base: str, token: str | None, *, subprotocol: str = P.SUBPROTOCOL_MSGPACK,
                      query: str = "", headers: dict | None = None) -> "NativeClient":
        q = [f"token={token}"] if token else []
        if query:
            q.append(query)
        url = f"{base}/v1/ws" + ("?" + "&".join(q) if q else "")
        ws = await websockets.connect(url, subprotocols=[subprotocol], additional_headers=headers or {},
                                      open_timeout=10, ping_interval=None)
        return cls(ws, subprotocol)

    async def send(self, t: str, **fields: Any) -> None:
        await self.ws.send(P.encode_frame(P.message(t, **fields), self.subprotocol))

    async def send_raw(self, frame) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 5) -> dict:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        return P.decode_frame(frame, self.subprotocol)

    async def expect(self, t: str, timeout: float = 5, *, skip=("presence",)) -> dict:
        """The next message of type ``t`` (skipping message types in ``skip``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            msg = await self.recv(max(0.01, left))
            if msg["t"] == t:
                return msg
            if msg["t"] not in skip:
                raise AssertionError(f"expected {t!r}, got {msg!r}")

    async def closed(self, timeout: float = 5) -> tuple[int | None, list[dict]]:
        """Read until the server closes; returns (close code, messages seen)."""
        seen = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    seen.append(P.decode_frame(await self.ws.recv(), self.subprotocol))
        except websockets.ConnectionClosed as e:
            return (e.rcvd.code if e.rcvd else None), seen

    async def close(self) -> None:
        await self.ws.close()


async def ws_close_code(url: str, wait_s: float = 5, **kw) -> int | None:
    """Connect and return the close code the server answers with (None if it stays open)."""
    try:
        async with websockets.connect(url, open_timeout=10, ping_interval=None, **kw) as ws:
            try:
                async with asyncio.timeout(wait_s):
                    while True:
                        await ws.recv()
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None
            except TimeoutError:
                return None
    except websockets.InvalidStatus as e:
        return e.response.status_code
