"""RFC 6455 framing, sans I/O: encode server frames, parse and reassemble client frames.

The lean WebSocket protocol (``server/lean_ws.py``) owns the connection; this module
only turns bytes into frames and frames into messages, so it can be tested alone.
A fragmented message's state is an object that exists only while one is in flight,
so an idle connection carries nothing for it.
"""
from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

try:  # websockets' C helper: XOR with the 4-byte mask
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class ProtocolViolation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return b"" if code == 1005 else struct.pack("!H", code) + reason.encode()[:123]


def next_frame(data: Any, at: int, max_size: int, fragments_size: int) -> tuple[int, bool, bytes, int] | None:
    """The client frame starting at ``at``: ``(opcode, fin, unmasked payload, where the
    next frame starts)``, or None if it is not complete yet. ``fragments_size``: the bytes
    of the fragmented message in flight (a continuation may not take it past
    ``max_size``). Raises :class:`ProtocolViolation` with the close code to send."""
    n = len(data)
    if n - at < 2:
        return None
    b0, b1 = data[at], data[at + 1]
    opcode, length = b0 & 0x0F, b1 & 0x7F
    if b0 & 0x70:
        raise ProtocolViolation(1002, "reserved bits set")
    if not b1 & 0x80:
        raise ProtocolViolation(1002, "unmasked client frame")
    start = at + 6
    if length == 126:
        start += 2
        if n < start:
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
    elif length == 127:
        start += 8
        if n < start:
            return None
        length = int.from_bytes(data[at + 2:at + 10], "big")
    if opcode >= 8:
        if not b0 & 0x80 or length > 125:
            raise ProtocolViolation(1002, "fragmented or long control frame")
    elif (fragments_size if opcode == OP_CONT else 0) + length > max_size:
        raise ProtocolViolation(1009, "message too big")
    end = start + length
    if n < end:
        return None
    return opcode, bool(b0 & 0x80), apply_mask(data[start:end], data[start - 4:start]), end


class Fragments:
    """A fragmented message in flight."""

    __slots__ = ("parts", "size", "text")

    def __init__(self, first: bytes, text: bool) -> None:
        self.parts = [first]
        self.size = len(first)
        self.text = text


def reassemble(frags: Fragments | None, opcode: int, fin: bool,
               payload: bytes) -> tuple[Fragments | None, tuple[bool, bytes] | None]:
    """Feed one data frame: ``(the fragments still in flight, the complete message as
    (is text, payload) or None)``."""
    if opcode == OP_CONT:
        if frags is None:
            raise ProtocolViolation(1002, "continuation without a message")
        frags.parts.append(payload)
        frags.size += len(payload)
        if not fin:
            return frags, None
        return None, (frags.text, b"".join(frags.parts))
    if opcode in (OP_TEXT, OP_BINARY):
        if frags is not None:
            raise ProtocolViolation(1002, "new message inside a fragmented one")
        if not fin:
            return Fragments(payload, opcode == OP_TEXT), None
        return None, (opcode == OP_TEXT, payload)
    raise ProtocolViolation(1002, f"unknown opcode {opcode}")
