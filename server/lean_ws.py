"""A lean WebSocket protocol for uvicorn: an idle connection costs a few hundred bytes here.

uvicorn's own implementations keep, for every connection's whole life, a sans-I/O
``ServerProtocol`` (its parser generators, reader buffer, logger), the handshake
``Request`` / ``Response`` and their header objects, an ``asyncio.Queue`` for received
messages and an ``asyncio.Event`` for write flow control: about 14 KB per idle
connection (tracemalloc), half of everything an idle Yjs connection costs.
:class:`LeanWebSocketProtocol` keeps one object with ``__slots__`` and the ASGI scope.
The handshake's key lives only until the app accepts; a received message waits in a
deque that exists only while messages wait; a task blocked in ``receive()`` waits on one
future, made only while it waits; a sender blocked by a full write buffer waits on a
future made only then; a partial frame is kept in a buffer only until it is complete.

It is a plain RFC 6455 server (uvicorn passes it the upgrade request the HTTP protocol
parsed, then the socket): masked client frames, fragmented messages, ping → pong,
the closing handshake with the peer's code delivered to the app, UTF-8 checks on text
(1007), ``ws_max_size`` per message (1009), protocol errors (1002), reading paused while
``ws_max_queue`` messages wait for the app, ``ws_ping_interval`` / ``ws_ping_timeout``
keepalive. permessage-deflate is never negotiated (clients fall back to plain frames):
a compressing connection holds zlib state of tens of KB, and y-websocket frames are
small binary updates. The ASGI ``websocket.http.response`` extension is not offered (an
app refuses a handshake with ``websocket.close``, answered with 403).

Select it with ``syncline serve --ws lean`` (the default); uvicorn's own stay available.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.utils import ClientDisconnected, is_ssl

from syncline.api.metrics import TRANSPORT_LIMIT_HITS

from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Fragments,
    ProtocolViolation,
    accept_key,
    close_payload,
    encode_frame,
    next_frame,
    reassemble,
)

logger = logging.getLogger("uvicorn.error")

HANDSHAKE_MAX = 64 * 1024  # bytes of upgrade request; uvicorn's HTTP parser has already read it
CLOSE_TIMEOUT_S = 2.0  # how long to wait for the peer's close frame after ours (default)
CLOSE_IDLE = 4408  # the idle close: nothing received for ``idle_timeout_s`` (docs/protocol.md: stale)
CLOSE_POLICY = 1008  # a message left incomplete for longer than ``message_timeout_s``


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Bounds on what a peer can make a connection hold or wait for (api/settings.py
    ``ws_*``; docs/security.md#limits). ``ws_max_size`` (uvicorn's) stays the largest
    message once accepted, counted over all its fragments."""

    preauth_max: int = 64 * 1024  # bytes buffered before the app accepts (before authentication)
    message_timeout_s: float = 30.0  # one frame or fragmented message may stay incomplete this long
    handshake_timeout_s: float = 10.0  # the app accepts or refuses within this, else 503 and close
    close_timeout_s: float = CLOSE_TIMEOUT_S  # after our close frame, for the peer's
    close_discard_max: int = 1 << 20  # bytes read (and dropped) after our close frame, at most
    ping_interval_s: float = 0.0  # a ping after this long without traffic (0: none)
    inbox_max_bytes: int = 8 << 20  # reading pauses while this much waits for the app (or ws_max_queue messages)
    idle_timeout_s: float = 0.0  # close (4408) after this long without any frame in (0: never)


DEFAULT_LIMITS = WsLimits()


def _hit(limit: str) -> None:
    TRANSPORT_LIMIT_HITS[limit] = TRANSPORT_LIMIT_HITS.get(limit, 0) + 1

# Close codes a peer may send (RFC 6455 §7.4); 1005, 1006 and 1015 are never on the wire.
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

# Connection states.
HANDSHAKE, CONNECTING, OPEN, CLOSING, CLOSED = range(5)

# Header names and values every upgrade request carries, shared by every connection's
# scope instead of one copy each (the scope lives as long as the connection).
_COMMON = {b: b for b in (
    b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-protocol",
    b"sec-websocket-extensions", b"user-agent", b"origin", b"pragma", b"cache-control", b"accept-encoding",
    b"accept-language", b"cookie", b"authorization", b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip",
    b"websocket", b"Upgrade", b"upgrade", b"13", b"no-cache", b"gzip, deflate, br", b"gzip, deflate",
    b"permessage-deflate; client_max_window_bits", b"permessage-deflate",
)}
# One scope["asgi"] dict per ASGI version, shared by every connection (nobody writes to it).
_ASGI: dict[str, dict[str, str]] = {}


def _address(transport: Any, name: str) -> tuple | None:
    """``(host, port)`` of a TCP transport: the tuple asyncio already keeps in the
    transport's extra info (uvicorn's helpers ask the socket again and keep a new one)."""
    info = transport.get_extra_info(name)
    if isinstance(info, tuple) and len(info) >= 2:
        return info if len(info) == 2 else info[:2]
    return None


def _http_response(status: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [b"HTTP/1.1 " + status.encode() + b"\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    if body or not status.startswith("101"):
        lines.append(b"content-length: %d\r\nconnection: close\r\n" % len(body))
    return b"".join(lines) + b"\r\n" + body


class LeanWebSocketProtocol(asyncio.Protocol):
    __slots__ = (
        "config", "app", "server_state", "app_state", "loop", "transport", "scope", "state",
        "buf", "frags", "inbox", "waiter", "read_paused",
        "write_paused", "drain", "key", "timer", "ping_payload", "disconnect_code",
        "limits", "partial_timer", "last_in", "skip", "drained", "queued",
    )

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: Any = None
        self.scope: dict | None = None
        self.state = HANDSHAKE
        self.buf: bytearray | None = None  # received bytes of an incomplete request or frame
        self.frags: Fragments | None = None  # a fragmented message in flight
        self.inbox: deque | None = None  # messages waiting for the app's receive()
        self.waiter: asyncio.Future | None = None  # the app's pending receive()
        self.read_paused = False
        self.write_paused = False
        self.drain: asyncio.Future | None = None  # a send() waiting for resume_writing
        self.key: bytes | None = None  # Sec-WebSocket-Key, until the app accepts
        self.timer: asyncio.TimerHandle | None = None  # keepalive ping, pong deadline or close timeout
        self.ping_payload: bytes | None = None
        self.disconnect_code: int | None = None  # set once websocket.disconnect was delivered
        self.limits: WsLimits = getattr(config, "lean_limits", None) or DEFAULT_LIMITS
        self.partial_timer: asyncio.TimerHandle | None = None  # while a message is incomplete
        self.last_in = 0.0  # loop time of the last bytes received (the idle close)
        self.skip = 0  # CLOSING: payload bytes of the frame being discarded still to come
        self.drained = 0  # CLOSING: bytes read and dropped after our close frame
        self.queued = 0  # bytes of the messages waiting in ``inbox``

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._cancel_timer()
        self._cancel_partial()
        self.buf = self.frags = None
        self._deliver_disconnect(1006)
        self.state = CLOSED
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)  # a blocked send() wakes up and raises ClientDisconnected
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass  # close the transport: the peer is gone without a closing handshake

    def pause_writing(self) -> None:
        self.write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._flow()

    def _flow(self) -> None:
        """Read from the socket only while it helps: not while ``ws_max_queue`` messages
        wait for the app (TCP then pushes back on the peer), and not while our writes to
        a peer that does not read are piling up (its pings would only add pongs). While
        closing, always read: the peer's close frame is awaited."""
        state = self.state
        pause = state == OPEN and (self.write_paused or (self.inbox is not None and (
            len(self.inbox) >= self.config.ws_max_queue or self.queued > self.limits.inbox_max_bytes)))
        if pause != self.read_paused and state != CLOSED:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def shutdown(self) -> None:
        """Server shutdown: close 1012 (service restart); the app sees the disconnect."""
        self._cancel_timer()
        self._cancel_partial()
        if self.state == OPEN:
            self._deliver_disconnect(1012)
            self.transport.write(encode_frame(OP_CLOSE, close_payload(1012)))
        elif self.state == CONNECTING:
            self._deliver_disconnect(1006)
            self.transport.write(_http_response("500 Internal Server Error", []))
        self.state = CLOSED
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == CLOSED:
            return
        if state == CLOSING:  # our close frame is out: nothing is kept, only its answer awaited
            self._discard(data)
            return
        self.last_in = self.loop.time()
        buf = self.buf
        if buf is not None:
            buf += data
            data = buf
        used = 0
        if state == HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0 and len(data) <= HANDSHAKE_MAX:
                if buf is None:
                    self.buf = bytearray(data)
                return
            if end < 0 or not self._handshake(bytes(data[:end])):
                self._reject("400 Bad Request")
                return
            used = end + 4
        if self.state >= OPEN:
            # (While the app decides, early frames stay buffered: a client may not send
            # before the 101, and a close frame cannot be sent before it either.)
            try:
                with memoryview(data) as view:
                    used, completed = self._frames(view, used)
            except ProtocolViolation as e:
                if e.code == 1009:
                    _hit("message_size")
                self._fail(e.code, e.reason, garbled=True)
                return
            if self.state == CLOSED:
                self.buf = None
                return
            if self.state == CLOSING:  # the app closed while these frames came in
                rest = bytes(data[used:])
                self.buf = None
                self._discard(rest, count=False)
                return
            if completed and self.partial_timer is not None:
                self._cancel_partial()  # progress: the next incomplete message gets its own time
        if used >= len(data):
            self.buf = None
        elif buf is None:
            self.buf = bytearray(data[used:])
        else:
            del buf[:used]
        if self.state == CONNECTING and self.buf is not None and len(self.buf) > self.limits.preauth_max:
            _hit("preauth_size")
            self._reject("400 Bad Request")  # (before the app accepted: before authentication)
            return
        if self.state == OPEN and (self.buf is not None or self.frags is not None):
            if self.partial_timer is None and self.limits.message_timeout_s:
                self.partial_timer = self.loop.call_later(self.limits.message_timeout_s, self._partial_timeout)
        elif self.partial_timer is not None:
            self._cancel_partial()
        if self.inbox is not None and (len(self.inbox) >= self.config.ws_max_queue
                                       or self.queued > self.limits.inbox_max_bytes):
            self._flow()

    # -- the opening handshake -------------------------------------------------

    def _handshake(self, head: bytes) -> bool:
        """Check the upgrade request and start the app; False: answer 400."""
        request_line, *lines = head.split(b"\r\n")
        method, _, rest = request_line.partition(b" ")
        target, _, version = rest.rpartition(b" ")
        headers = []
        key = ws_version = None
        subprotocols: list[str] = []
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep:
                return False
            name, value = name.strip().lower(), value.strip()
            headers.append((_COMMON.get(name, name), _COMMON.get(value, value)))
            if name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-version":
                ws_version = value
            elif name == b"sec-websocket-protocol":
                subprotocols += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
        if method != b"GET" or version != b"HTTP/1.1" or not target.startswith(b"/") or ws_version != b"13":
            return False
        try:
            if key is None or len(base64.b64decode(key, validate=True)) != 16:
                return False
        except (ValueError, binascii.Error):
            return False
        self.key = key
        raw_path, _, query = target.partition(b"?")
        config, transport = self.config, self.transport
        root = config.root_path
        self.scope = {
            "type": "websocket",
            "asgi": _ASGI.get(config.asgi_version) or _ASGI.setdefault(
                config.asgi_version, {"version": config.asgi_version, "spec_version": "2.3"}),
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": _address(transport, "sockname"),
            "client": _address(transport, "peername"),
            "root_path": root,
            "path": root + unquote(raw_path.decode("ascii", "surrogateescape")),
            "raw_path": root.encode("ascii") + raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
        }
        self.state = CONNECTING
        if self.limits.handshake_timeout_s:
            self.timer = self.loop.call_later(self.limits.handshake_timeout_s, self._handshake_timeout)
        self._deliver({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi())
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)
        return True

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.state == CONNECTING:  # the app neither accepted nor refused in time
            _hit("handshake_timeout")
            self._reject("503 Service Unavailable")

    def _reject(self, status: str) -> None:
        """Answer the upgrade request with an HTTP error and close."""
        self._cancel_timer()
        self.transport.write(_http_response(status, []))
        self._deliver_disconnect(1006)
        self.state = CLOSED
        self.buf = None
        self.transport.close()

    async def _run_asgi(self) -> None:
        code = 1000
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            code = 1011
        if self.state == CONNECTING:
            self._reject("500 Internal Server Error")
        elif self.state == OPEN:  # the app returned without closing: close for it
            self._fail(code, "")
        elif self.state != CLOSING:  # (CLOSING: wait for the peer's close frame or the timeout)
            self.transport.close()

    # -- frames in -------------------------------------------------------------

    def _frames(self, data: Any, at: int) -> tuple[int, int]:
        """Handle every complete frame in ``data`` from offset ``at``; return where the
        first incomplete one starts (framing: server/frames.py), and how many data
        messages completed."""
        max_size = self.config.ws_max_size
        completed = 0
        while self.state == OPEN or self.state == CONNECTING:
            frags = self.frags
            frame = next_frame(data, at, max_size, frags.size if frags is not None else 0)
            if frame is None:
                break
            opcode, fin, payload, at = frame
            if opcode >= 8:
                self._control(opcode, payload)
                continue
            self.frags, message = reassemble(frags, opcode, fin, payload)
            if message is not None:
                completed += 1
                if self.state == OPEN:  # (not accepted yet: nothing reaches the app)
                    self._message(*message)
        return at, completed

    def _message(self, text: bool, payload: bytes) -> None:
        if text:
            try:
                queued = self._deliver({"type": "websocket.receive", "text": payload.decode()})
            except UnicodeDecodeError:
                raise ProtocolViolation(1007, "invalid UTF-8") from None
        else:
            queued = self._deliver({"type": "websocket.receive", "bytes": payload})
        if queued:
            self.queued += len(payload)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self.state == OPEN:
                self.transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            if self.ping_payload is not None and payload == self.ping_payload:
                self.ping_payload = None
                self._cancel_timer()
                self._schedule_ping()
        elif opcode == OP_CLOSE:
            self._peer_closed(payload)
        else:
            raise ProtocolViolation(1002, f"unknown opcode {opcode}")

    def _peer_closed(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise ProtocolViolation(1002, "bad close frame")
        code, reason = 1005, ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
                raise ProtocolViolation(1002, "bad close code")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                raise ProtocolViolation(1007, "invalid UTF-8 in close reason") from None
        if self.state == OPEN:  # the peer starts the closing handshake: answer with its code
            self.transport.write(encode_frame(OP_CLOSE, close_payload(code)))
        self._deliver_disconnect(code, reason)
        self.state = CLOSED
        self.buf = self.frags = None
        self._cancel_timer()
        self._cancel_partial()
        self.transport.close()

    def _fail(self, code: int, reason: str, *, garbled: bool = False) -> None:
        """Close for a reason of ours: a close frame with ``code``; then, as after the app's
        close, what the peer still sends is read and dropped (so its kernel does not reset
        the connection before it has read our close frame) until its close frame, the close
        timeout or the discard budget. ``garbled``: the framing cannot be trusted any more
        (a protocol violation): everything that follows is dropped unparsed."""
        if self.state == OPEN:
            self.transport.write(encode_frame(OP_CLOSE, close_payload(code, reason)))
            self._deliver_disconnect(code, reason)
            if garbled:
                self.buf = None
                self.skip = 1 << 62
            self._closing()
            return
        self._deliver_disconnect(code, reason)
        self.state = CLOSED
        self.buf = self.frags = None
        self._cancel_timer()
        self._cancel_partial()
        self.transport.close()

    def _partial_timeout(self) -> None:
        self.partial_timer = None
        if self.state == OPEN and (self.buf is not None or self.frags is not None):
            _hit("message_timeout")
            self._fail(CLOSE_POLICY, "message incomplete for too long")

    def _cancel_partial(self) -> None:
        if self.partial_timer is not None:
            self.partial_timer.cancel()
            self.partial_timer = None

    # -- after our close frame: discard, keep nothing -----------------------------

    def _closing(self) -> None:
        """Our close frame is written: drop what is buffered (a half-received frame is
        skipped, not completed), wait at most ``close_timeout_s`` for the peer's close
        frame, reading at most ``close_discard_max`` more bytes."""
        self.state = CLOSING
        self.frags = None
        self._cancel_timer()
        self._cancel_partial()
        # Nothing more is written: half-close now, so the peer reads our close frame and an
        # end of stream even if we reset the connection later (a peer still sending when
        # its socket is closed gets a reset, and a reset drops what it had not read yet).
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            pass
        self.timer = self.loop.call_later(self.limits.close_timeout_s, self._close_now)
        buf, self.buf = self.buf, None
        if buf:
            self._discard(bytes(buf), count=False)
        if self.read_paused and self.state == CLOSING:  # keep reading until the peer's close frame arrives
            self._flow()

    def _close_now(self) -> None:
        self.timer = None
        self.state = CLOSED
        self.buf = None
        self.transport.close()

    def _discard(self, data: Any, *, count: bool = True) -> None:
        """CLOSING: skip frames without keeping their payloads; a close frame ends it.
        Only a frame header or a close frame (at most 14 + 125 bytes) is ever kept."""
        if count:
            self.drained += len(data)
            if self.drained > self.limits.close_discard_max:
                # Enough: read no more (TCP pushes back on the peer); the close timeout ends it.
                if self.drained - len(data) <= self.limits.close_discard_max:
                    _hit("close_discard")
                    self.transport.pause_reading()
                return
        at = 0
        skip = self.skip
        if skip:
            n = min(skip, len(data))
            self.skip = skip - n
            at = n
            if at >= len(data):
                return
        if self.buf:
            data = bytes(self.buf) + bytes(data[at:])
            at = 0
        n = len(data)
        while n - at >= 2:
            b0, b1 = data[at], data[at + 1]
            length, head = b1 & 0x7F, 2 + (4 if b1 & 0x80 else 0)
            if length == 126:
                head += 2
            elif length == 127:
                head += 8
            if n - at < head:
                break
            if length >= 126:
                length = int.from_bytes(data[at + 2:at + (4 if length == 126 else 10)], "big")
            if b0 & 0x0F == OP_CLOSE:
                if length > 125 or not b1 & 0x80:
                    self._cancel_timer()
                    self._close_now()
                    return
                if n - at < head + length:
                    break
                self._cancel_timer()
                self.buf = None
                self.state = CLOSED  # the closing handshake is complete
                self.transport.close()
                return
            if n - at - head < length:
                self.skip = length - (n - at - head)
                at = n
                break
            at += head + length
        self.buf = bytearray(data[at:]) if at < n else None

    # -- ASGI receive ------------------------------------------------------------

    def _deliver(self, message: dict) -> bool:
        """Hand ``message`` to the app's pending receive, else queue it (True)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():  # else the receiving task was cancelled: queue it
                waiter.set_result(message)
                return False
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append(message)
        return True

    def _deliver_disconnect(self, code: int, reason: str = "") -> None:
        if self.disconnect_code is None and self.scope is not None:
            self.disconnect_code = code
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})

    def receive(self) -> asyncio.Future:
        """The ASGI ``receive``: a future (awaitable) for the next message."""
        fut = self.loop.create_future()
        inbox = self.inbox
        if inbox:
            message = inbox.popleft()
            fut.set_result(message)
            if self.queued:
                data = message.get("bytes") or message.get("text") or b""
                self.queued = max(0, self.queued - len(data)) if inbox else 0
            if not inbox:
                self.inbox = None
            if self.read_paused:
                self._flow()
        elif self.disconnect_code is not None:
            fut.set_result({"type": "websocket.disconnect", "code": self.disconnect_code, "reason": ""})
        else:
            self.waiter = fut
        return fut

    # -- ASGI send -----------------------------------------------------------------

    async def send(self, message: dict) -> None:
        if self.write_paused and self.state != CLOSED:
            if self.drain is None:
                self.drain = self.loop.create_future()
            await asyncio.shield(self.drain)
        kind = message["type"]
        state = self.state
        if state == OPEN:
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is not None:
                    self.transport.write(encode_frame(OP_BINARY, data))
                else:
                    text = message.get("text")
                    if text is not None:
                        self.transport.write(encode_frame(OP_TEXT, text.encode()))
            elif kind == "websocket.close":
                code, reason = message.get("code", 1000), message.get("reason") or ""
                self.transport.write(encode_frame(OP_CLOSE, close_payload(code, reason)))
                self._deliver_disconnect(code, reason)
                self._closing()
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'.")
        elif state == CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._reject("403 Forbidden")
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.accept' or 'websocket.close', but got '{kind}'.")
        elif state == CLOSED or self.transport.is_closing():
            raise ClientDisconnected()
        else:  # CLOSING
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")

    def _accept(self, message: dict) -> None:
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                   (b"sec-websocket-accept", accept_key(self.key))]
        headers += self.server_state.default_headers
        headers += [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers") or ()]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        self.key = None
        self.state = OPEN
        self._cancel_timer()  # (the handshake timeout)
        self.last_in = self.loop.time()
        self.transport.write(_http_response("101 Switching Protocols", headers))
        self._schedule_ping()
        if self.buf:  # frames the client sent before the 101
            self.data_received(b"")

    # -- keepalive and timers --------------------------------------------------------

    def _schedule_ping(self) -> None:
        limits = self.limits
        if limits.ping_interval_s or limits.idle_timeout_s:
            if self.state == OPEN:
                self.timer = self.loop.call_later(
                    min(x for x in (limits.ping_interval_s, limits.idle_timeout_s) if x), self._keepalive)
            return
        interval = self.config.ws_ping_interval
        if interval and self.state == OPEN:
            self.timer = self.loop.call_later(interval, self._ping)

    def _keepalive(self) -> None:
        """Ping a peer quiet for ``ping_interval_s``; close one quiet for ``idle_timeout_s``
        (any frame in counts, pongs included)."""
        self.timer = None
        if self.state != OPEN:
            return
        limits = self.limits
        quiet = self.loop.time() - self.last_in
        if limits.idle_timeout_s and quiet >= limits.idle_timeout_s:
            _hit("idle_timeout")
            self._fail(CLOSE_IDLE, "stale")
            return
        if limits.ping_interval_s and quiet >= limits.ping_interval_s - 0.001:
            self.transport.write(encode_frame(OP_PING, b""))
        waits = [limits.ping_interval_s] if limits.ping_interval_s else []
        if limits.idle_timeout_s:
            waits.append(max(0.001, limits.idle_timeout_s - quiet))
        self.timer = self.loop.call_later(min(waits), self._keepalive)

    def _ping(self) -> None:
        self.timer = None
        if self.state != OPEN:
            return
        self.ping_payload = struct.pack("!I", random.getrandbits(32))
        self.transport.write(encode_frame(OP_PING, self.ping_payload))
        timeout = self.config.ws_ping_timeout
        if timeout:
            self.timer = self.loop.call_later(timeout, self._fail, 1011, "keepalive ping timeout")
        else:
            self._schedule_ping()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
