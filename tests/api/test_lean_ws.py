"""server/lean_ws.py over real sockets: uvicorn serving a small ASGI app with the lean protocol.

The server runs in the test's own event loop, so the tests can look at the protocol
objects (read paused, buffers dropped) and call flow-control hooks directly. Clients
are the ``websockets`` library (a conforming peer) and raw sockets for what a
conforming client never sends (unmasked frames, bad UTF-8, no pong).
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import pytest
import uvicorn
import websockets
from waiting import until

from syncline.server import coalescing_ws_protocol
from syncline.server.lean_ws import LeanWebSocketProtocol, accept_key


class EchoApp:
    """Echoes every message; ``close-me`` → close 4001 "bye"; ``/refuse`` closes before
    accepting; ``/boom`` raises before accepting; ``/hold`` reads nothing until ``release``
    is set. Records every disconnect message it receives."""

    def __init__(self) -> None:
        self.disconnects: list[dict] = []
        self.scopes: list[dict] = []
        self.received: list[Any] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        protocols = list(scope["subprotocols"])
        await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None,
                    "headers": [(b"x-app", b"yes")]})
        if scope["path"] == "/hold":
            await self.release.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                return
            self.received.append(message.get("bytes", message.get("text")))
            if message.get("text") == "close-me":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                continue
            await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})


@pytest.fixture
async def server():
    started: list[tuple[uvicorn.Server, asyncio.Task]] = []

    async def start(app: Any = None, *, coalesce: bool = False, **config: Any) -> tuple[uvicorn.Server, int, Any]:
        app = app or EchoApp()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        ws = coalescing_ws_protocol(LeanWebSocketProtocol) if coalesce else LeanWebSocketProtocol
        cfg = uvicorn.Config(app, lifespan="off", log_level="warning", ws=ws, **config)
        srv = uvicorn.Server(cfg)
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        started.append((srv, task))
        await until(lambda: srv.started, 10, "server started")
        return srv, sock.getsockname()[1], app

    yield start
    for srv, task in started:
        srv.should_exit = True
        await asyncio.wait_for(task, 15)


def protocols(srv: uvicorn.Server) -> list[LeanWebSocketProtocol]:
    return [c for c in srv.server_state.connections if isinstance(c, LeanWebSocketProtocol)]


# -- raw client helpers ---------------------------------------------------------


async def raw_connect(port: int, path: str = "/", version: bytes = b"13") -> tuple[Any, Any, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: " + version + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head, key


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, m | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, m | 126, n)
    else:
        header = struct.pack("!BBQ", first, m | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: Any) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
    assert not b1 & 0x80, "server frames are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await reader.readexactly(n)


async def read_close(reader: Any) -> int:
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0]


# -- tests ------------------------------------------------------------------------


@pytest.mark.parametrize(("coalesce", "http"), [(False, "httptools"), (True, "httptools"), (False, "h11")])
async def test_handshake_scope_and_messages_both_ways(server, coalesce, http) -> None:
    srv, port, app = await server(coalesce=coalesce, http=http)
    async with websockets.connect(f"ws://127.0.0.1:{port}/room%201/x?token=abc", subprotocols=["msgpack", "json"],
                                  additional_headers={"X-Correlation-ID": "c-1"}) as ws:
        assert ws.subprotocol == "msgpack"
        assert ws.response.headers["x-app"] == "yes"
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        big = os.urandom(300_000)  # arrives in many TCP reads, 64-bit length
        await ws.send(big)
        assert await ws.recv() == big
        mid = os.urandom(1000)  # 16-bit length
        await ws.send(mid)
        assert await ws.recv() == mid
        scope = app.scopes[0]
        assert scope["path"] == "/room 1/x" and scope["raw_path"] == b"/room%201/x"
        assert scope["query_string"] == b"token=abc"
        assert list(scope["subprotocols"]) == ["msgpack", "json"]
        assert (b"x-correlation-id", b"c-1") in scope["headers"]
        assert scope["client"][0] == "127.0.0.1" and scope["server"][1] == port
        (proto,) = protocols(srv)
        # Idle and open: nothing of the handshake or of past messages is kept.
        await until(lambda: proto.waiter is not None, 5, "app waiting in receive()")
        assert proto.key is None and proto.buf is None and proto.inbox is None and proto.frags is None
    await until(lambda: app.disconnects, 5, "disconnect delivered")
    assert app.disconnects[0]["code"] == 1000


async def test_fragmented_messages_are_reassembled(server) -> None:
    _, port, app = await server()
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(["frag", "mented ", "text"])
        assert await ws.recv() == "fragmented text"
        await ws.send([b"ab", b"", b"cd"])
        assert await ws.recv() == b"abcd"
    # A control frame between fragments, and a continuation with nothing to continue.
    reader, writer, head, _ = await raw_connect(port)
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(client_frame(1, b"one ", fin=False) + client_frame(9, b"p") + client_frame(0, b"two"))
    assert await read_frame(reader) == (10, b"p")
    assert await read_frame(reader) == (1, b"one two")
    writer.write(client_frame(0, b"orphan"))
    assert await read_close(reader) == 1002
    writer.close()


async def test_ping_is_answered_and_keepalive_closes_a_silent_peer(server) -> None:
    _, port, _ = await server(ws_ping_interval=0.1, ws_ping_timeout=0.3)
    async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
        latency = await asyncio.wait_for(await ws.ping(b"abc"), 5)
        assert latency >= 0
        await asyncio.sleep(0.6)  # several server pings, all answered by the client library
        await ws.send("still here")
        assert await ws.recv() == "still here"
    reader, writer, _, _ = await raw_connect(port)
    opcode, payload = await read_frame(reader)  # a server ping we never answer
    assert opcode == 9 and len(payload) == 4
    assert await read_close(reader) == 1011
    writer.close()


async def test_close_both_ways_delivers_codes(server) -> None:
    srv, port, app = await server()
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send("close-me")
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 4001 and info.value.rcvd.reason == "bye"
    await until(lambda: app.disconnects, 5, "server-side close delivered")
    assert app.disconnects[-1]["code"] == 4001
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
    await ws.close(4002, "client done")
    assert ws.close_code == 4002  # the server echoed the client's code
    await until(lambda: len(app.disconnects) == 2, 5, "client close delivered")
    assert app.disconnects[-1] == {"type": "websocket.disconnect", "code": 4002, "reason": "client done"}
    await until(lambda: not protocols(srv), 5, "connections released")


async def test_oversize_message_is_refused_with_1009(server) -> None:
    _, port, app = await server(ws_max_size=1024)
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        await ws.send(b"x" * 1024)  # at the limit: fine
        assert await ws.recv() == b"x" * 1024
        await ws.send(b"x" * 1025)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1009
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        await ws.send([b"y" * 600, b"y" * 600])  # too big only once reassembled
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1009
    await until(lambda: len(app.disconnects) == 2, 5, "disconnects delivered")
    assert [d["code"] for d in app.disconnects] == [1009, 1009]


async def test_protocol_violations(server) -> None:
    _, port, app = await server()
    cases = [
        (client_frame(2, b"plain", mask=False), 1002),  # clients must mask
        (client_frame(1, b"\xff\xfe"), 1007),  # text must be UTF-8
        (client_frame(9, b"p" * 126), 1002),  # control frames carry at most 125 bytes
        (client_frame(3, b"?"), 1002),  # reserved opcode
        (bytes((0xC2, 0x80)) + os.urandom(4), 1002),  # RSV1 without an extension
    ]
    for frame, code in cases:
        reader, writer, _, _ = await raw_connect(port)
        writer.write(frame)
        assert await read_close(reader) == code
        assert await reader.read() == b""  # and the server closes the socket
        writer.close()
    await until(lambda: len(app.disconnects) == len(cases), 5, "disconnects delivered")
    assert [d["code"] for d in app.disconnects] == [code for _, code in cases]


async def test_handshake_refusals(server) -> None:
    _, port, _ = await server()
    _, writer, head, key = await raw_connect(port, "/")
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-accept: " + accept_key(key) in head
    writer.close()
    for path, version, status in [("/refuse", b"13", b"403"), ("/boom", b"13", b"500"), ("/", b"8", b"400")]:
        reader, writer, head, _ = await raw_connect(port, path, version)
        assert head.startswith(b"HTTP/1.1 " + status), head
        writer.close()
    # permessage-deflate offered, never negotiated
    async with websockets.connect(f"ws://127.0.0.1:{port}/", compression="deflate") as ws:
        assert "sec-websocket-extensions" not in ws.response.headers
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_client_vanishing_delivers_disconnect(server) -> None:
    srv, port, app = await server()
    reader, writer, _, _ = await raw_connect(port)
    writer.write(client_frame(2, b"half", fin=False) + client_frame(0, b"...")[:3])  # mid-message, mid-frame
    await until(lambda: protocols(srv) and protocols(srv)[0].buf is not None, 5, "partial frame buffered")
    writer.transport.abort()
    await until(lambda: app.disconnects, 5, "disconnect delivered")
    assert app.disconnects[0]["code"] == 1006
    await until(lambda: not protocols(srv), 5, "connection released")


async def test_reading_pauses_while_the_app_is_behind(server) -> None:
    srv, port, app = await server(app=EchoApp(), ws_max_queue=4)
    async with websockets.connect(f"ws://127.0.0.1:{port}/hold") as ws:
        for i in range(50):
            await ws.send(str(i))
        (proto,) = protocols(srv)
        await until(lambda: proto.read_paused, 5, "reading paused")
        assert len(proto.inbox) < 50  # the rest waits in the kernel's buffers, not here
        app.release.set()
        for i in range(50):
            assert await ws.recv() == str(i)
        assert not proto.read_paused and proto.inbox is None


async def test_send_waits_while_the_transport_is_paused(server) -> None:
    srv, port, _ = await server()
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send("warm")
        assert await ws.recv() == "warm"
        (proto,) = protocols(srv)
        proto.pause_writing()  # as the transport does when its buffer is over the high-water mark
        assert proto.read_paused  # a peer that does not read is not read from either
        proto.read_paused = False  # (let this one message in, to see the app's send wait)
        proto.transport.resume_reading()
        await ws.send("held")
        await until(lambda: proto.drain is not None, 5, "send() waiting for the transport")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        proto.resume_writing()
        assert await asyncio.wait_for(ws.recv(), 5) == "held"
        assert proto.drain is None and not proto.read_paused


async def test_server_shutdown_closes_with_1012(server) -> None:
    srv, port, app = await server()
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
    srv.should_exit = True
    with pytest.raises(websockets.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd.code == 1012
    await until(lambda: app.disconnects, 5, "disconnect delivered")
    assert app.disconnects[0]["code"] == 1012
