"""server/frames.py alone: client frames parsed and reassembled without a socket."""
from __future__ import annotations

import os
import struct

import pytest

from syncline.server.frames import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    ProtocolViolation,
    next_frame,
    reassemble,
)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_stream_of_frames_split_anywhere_parses_the_same():
    big = os.urandom(70_000)
    stream = (client_frame(OP_TEXT, b"hel", fin=False) + client_frame(OP_PING, b"p")
              + client_frame(OP_CONT, b"lo") + client_frame(OP_BINARY, big))
    for cut in (1, 2, 7, 50, len(stream) - 3):
        got, frags, data, at = [], None, stream[:cut], 0
        for chunk in (stream[:cut], stream):  # the rest arrives later
            data = chunk
            while (frame := next_frame(data, at, 1 << 20, frags.size if frags else 0)) is not None:
                opcode, fin, payload, at = frame
                if opcode >= 8:
                    got.append(("control", payload))
                    continue
                frags, message = reassemble(frags, opcode, fin, payload)
                if message is not None:
                    got.append(message)
        assert got == [("control", b"p"), (True, b"hello"), (False, big)]


@pytest.mark.parametrize("frame, code", [
    (client_frame(OP_TEXT, b"x", rsv=0x40), 1002),
    (bytes((0x81, 0x01)) + b"x", 1002),  # unmasked
    (client_frame(OP_PING, b"x" * 126), 1002),  # long control frame
    (client_frame(OP_BINARY, b"x" * 65), 1009),  # over max_size (64 here)
])
def test_violations_carry_their_close_code(frame, code):
    with pytest.raises(ProtocolViolation) as e:
        next_frame(frame, 0, 64, 0)
    assert e.value.code == code


def test_fragment_rules():
    with pytest.raises(ProtocolViolation):
        reassemble(None, OP_CONT, True, b"x")  # nothing to continue
    frags, message = reassemble(None, OP_TEXT, False, b"a")
    assert message is None and frags is not None
    with pytest.raises(ProtocolViolation):
        reassemble(frags, OP_BINARY, True, b"b")  # a new message inside a fragmented one
    # a continuation may not take the message past max_size
    with pytest.raises(ProtocolViolation) as e:
        next_frame(client_frame(OP_CONT, b"x" * 10), 0, 10, frags.size)
    assert e.value.code == 1009
