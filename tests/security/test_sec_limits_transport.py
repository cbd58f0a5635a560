"""Issue 15, item 3, at the transport (server/lean_ws.py over real sockets): nothing is
buffered once a close is decided, messages are bounded over all their fragments, an
incomplete message and an undecided handshake time out, what comes before the app accepts
(before authentication) has a smaller bound, and idle sockets are pinged, then closed.

The server runs in the test's event loop (uvicorn + the lean protocol + a small ASGI app),
so the tests look at the protocol objects' buffers directly.
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

from syncline.api.metrics import TRANSPORT_LIMIT_HITS
from syncline.server.lean_ws import LeanWebSocketProtocol, WsLimits

KB = 1024


class App:
    """``/refuse-after-accept``: accept, then close 4401 at once (what the gateway does with a
    missing token); ``/never``: never accepts; ``/slow-accept``: accepts once ``go`` is set;
    anything else echoes."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.received: list[int] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/never":  # (until the transport gives up on it: then a disconnect comes)
            assert (await receive())["type"] == "websocket.disconnect"
            return
        if path == "/slow-accept":
            await self.go.wait()
        await send({"type": "websocket.accept"})
        if path == "/refuse-after-accept":
            await send({"type": "websocket.close", "code": 4401, "reason": "token_missing"})
            return
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                return
            self.received.append(len(m.get("bytes") or m.get("text") or ""))
            await send({"type": "websocket.send", "bytes": b"ok"})


LIMITS = WsLimits(preauth_max=16 * KB, message_timeout_s=0.6, handshake_timeout_s=0.6, close_timeout_s=0.8,
                  close_discard_max=256 * KB, ping_interval_s=0.3, idle_timeout_s=1.0)


@pytest.fixture
async def server():
    started: list[tuple[uvicorn.Server, asyncio.Task]] = []

    async def start(limits: WsLimits = LIMITS, max_size: int = 1024 * KB) -> tuple[uvicorn.Server, int, App]:
        app = App()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        cfg = uvicorn.Config(app, lifespan="off", log_level="warning", ws=LeanWebSocketProtocol, ws_max_size=max_size,
                             ws_ping_interval=None)
        cfg.lean_limits = limits  # type: ignore[attr-defined]
        srv = uvicorn.Server(cfg)
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        started.append((srv, task))
        await until(lambda: srv.started, 10, "server started")
        return srv, sock.getsockname()[1], app

    yield start
    for srv, task in started:
        srv.should_exit = True
        await asyncio.wait_for(task, 15)


def conns(srv: uvicorn.Server) -> list[LeanWebSocketProtocol]:
    return [c for c in srv.server_state.connections if isinstance(c, LeanWebSocketProtocol)]


async def connect(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    return reader, writer, key


async def head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


def hdr(opcode: int, n: int, *, fin: bool = True) -> bytes:
    """A client frame header with a zero mask (the payload then goes unchanged)."""
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        h = bytes((b0, 0x80 | n))
    elif n < 65536:
        h = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        h = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return h + b"\0\0\0\0"


async def frames_until_close(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[list[int], int | None]:
    """Opcodes read up to the close frame, and its code (None: the socket ended first)."""
    seen: list[int] = []

    async def run() -> int | None:
        while True:
            try:
                b0, b1 = await reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)
            seen.append(b0 & 0x0F)
            if b0 & 0x0F == 8:
                return struct.unpack("!H", payload[:2])[0]

    code = await asyncio.wait_for(run(), timeout)
    return seen, code


async def at_eof(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


async def test_after_our_close_frame_nothing_is_buffered_and_the_socket_closes(server):
    srv, port, _ = await server()
    before = TRANSPORT_LIMIT_HITS.get("close_discard", 0)
    reader, writer, _ = await connect(port, "/refuse-after-accept")
    assert b" 101 " in await head(reader)
    # A continuation flood after the server's 4401 (issue 15: it used to be reassembled for 10 s),
    # read concurrently (the server resets the connection once it has dropped enough).
    closing = asyncio.create_task(frames_until_close(reader))
    writer.write(hdr(2, 64 * KB, fin=False) + b"x" * 64 * KB)
    sent, peak_buf = 64 * KB, 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        while loop.time() - start < 5:
            writer.write(hdr(0, 64 * KB, fin=False) + b"y" * 64 * KB)
            await asyncio.wait_for(writer.drain(), 5)
            sent += 64 * KB
            for c in conns(srv):
                peak_buf = max(peak_buf, len(c.buf or b""), c.frags.size if c.frags else 0)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
    _, code = await closing
    assert code == 4401
    assert await at_eof(reader, 3)
    assert peak_buf <= 14 + 125  # at most a frame header or a close frame is ever kept
    assert sent < 64 * 1024 * KB  # the server stopped reading soon (the kernel's buffers aside)
    assert TRANSPORT_LIMIT_HITS.get("close_discard", 0) == before + 1
    await until(lambda: not conns(srv), 5, "the connection gone")
    writer.close()


async def test_after_our_close_frame_the_peer_close_ends_it_or_the_timeout_does(server):
    srv, port, _ = await server()
    loop = asyncio.get_running_loop()
    # a conforming peer answers with its close frame: the server closes at once
    reader, writer, _ = await connect(port, "/refuse-after-accept")
    await head(reader)
    _, code = await frames_until_close(reader)
    assert code == 4401
    t0 = loop.time()
    writer.write(hdr(8, 2) + struct.pack("!H", 1000))
    assert await at_eof(reader, 2)
    await until(lambda: not conns(srv), 5, "the server to close the socket")
    assert loop.time() - t0 < 0.5
    # a silent peer (and one half-way through a frame): closed at close_timeout_s
    reader, writer, _ = await connect(port, "/refuse-after-accept")
    await head(reader)
    writer.write(hdr(2, 512 * KB) + b"z" * 100 * KB)  # a frame it never finishes
    _, code = await frames_until_close(reader)
    t0 = loop.time()
    assert code == 4401
    assert await at_eof(reader, 3)  # (the server half-closes right after its close frame)
    await until(lambda: not conns(srv), 5, "the server to close the socket")
    assert 0.3 < loop.time() - t0 < 2.0  # at close_timeout_s (0.8 s)
    writer.close()


async def test_message_size_counts_every_fragment(server):
    _, port, app = await server(max_size=100 * KB)
    reader, writer, _ = await connect(port, "/")
    await head(reader)
    writer.write(hdr(2, 40 * KB, fin=False) + b"a" * 40 * KB + hdr(0, 40 * KB, fin=False) + b"b" * 40 * KB
                 + hdr(0, 40 * KB, fin=True) + b"c" * 40 * KB)
    _, code = await frames_until_close(reader)
    assert code == 1009 and app.received == []
    # within the bound, fragments are one message
    reader, writer, _ = await connect(port, "/")
    await head(reader)
    writer.write(hdr(2, 40 * KB, fin=False) + b"a" * 40 * KB + hdr(0, 40 * KB) + b"b" * 40 * KB)
    await until(lambda: app.received == [80 * KB], 5, "the message")
    writer.close()


async def test_an_incomplete_message_times_out(server):
    srv, port, app = await server()
    before = TRANSPORT_LIMIT_HITS.get("message_timeout", 0)
    loop = asyncio.get_running_loop()
    # half of a frame, then nothing
    reader, writer, _ = await connect(port, "/")
    await head(reader)
    writer.write(hdr(2, 500 * KB) + b"h" * 250 * KB)
    t0 = loop.time()
    _, code = await frames_until_close(reader)
    assert code == 1008 and 0.4 < loop.time() - t0 < 3
    # a fragmented message whose end never comes
    reader2, writer2, _ = await connect(port, "/")
    await head(reader2)
    writer2.write(hdr(2, 10, fin=False) + b"0123456789")
    _, code = await frames_until_close(reader2)
    assert code == 1008
    assert TRANSPORT_LIMIT_HITS.get("message_timeout", 0) == before + 2
    # a sender that keeps completing messages is never cut, however long it sends
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None)
    for _ in range(12):
        await ws.send(b"m" * 200 * KB)
        assert await ws.recv() == b"ok"
        await asyncio.sleep(0.1)
    await ws.close()
    for w in (writer, writer2):
        w.close()


async def test_the_app_must_accept_or_refuse_in_time(server):
    _, port, _ = await server()
    reader, writer, _ = await connect(port, "/never")
    assert b" 503 " in (await head(reader)).split(b"\r\n")[0]
    writer.close()


async def test_before_the_app_accepts_only_a_little_is_buffered(server):
    srv, port, app = await server()
    reader, writer, _ = await connect(port, "/slow-accept")
    await until(lambda: conns(srv), 5, "the connection")
    writer.write(hdr(2, 32 * KB) + b"p" * 32 * KB)  # more than preauth_max (16 KiB), before the 101
    assert b" 400 " in (await head(reader)).split(b"\r\n")[0]
    app.go.set()
    writer.close()


async def test_idle_sockets_are_pinged_then_closed(server):
    _, port, _ = await server()
    # a peer that never answers: pings, then close 4408 at idle_timeout_s
    reader, writer, _ = await connect(port, "/")
    await head(reader)
    seen, code = await frames_until_close(reader, timeout=5)
    assert 9 in seen and code == 4408
    # a peer that answers pings (websockets does) stays open past it
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None, compression=None)
    await asyncio.sleep(2.0)
    await ws.send(b"still here")
    assert await ws.recv() == b"ok"
    await ws.close()
    writer.close()
