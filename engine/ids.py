"""UUID version 7 identifiers (RFC 9562), built from explicitly given time and randomness."""
from __future__ import annotations

import uuid


def uuid7(unix_ms: int, rand: bytes) -> str:
    """A UUIDv7 string from a millisecond timestamp and 10 random bytes.

    Time-ordered ids keep B-tree inserts local. The caller supplies both inputs, so
    the engine stays deterministic (the simulator passes a seeded source).
    """
    if len(rand) < 10:
        raise ValueError("uuid7 needs 10 random bytes")
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (int.from_bytes(rand[0:2], "big") & 0x0FFF) << 64
    value |= 0b10 << 62
    value |= int.from_bytes(rand[2:10], "big") & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))
