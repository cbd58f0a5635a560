"""UUID version 7 identifiers (RFC 9562), built from explicitly given time and randomness."""
from __future__ import annotations

_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_RAND_A = 0x0FFF << 64
_RAND_B = 0x3FFF_FFFF_FFFF_FFFF


def uuid7(unix_ms: int, rand: bytes) -> str:
    """A UUIDv7 string from a millisecond timestamp and 10 random bytes.

    Time-ordered ids keep B-tree inserts local. The caller supplies both inputs, so
    the engine stays deterministic (the simulator passes a seeded source). Formatted
    by hand: ``str(uuid.UUID(...))`` was a third of the cost of an append.
    """
    if len(rand) < 10:
        raise ValueError("uuid7 needs 10 random bytes")
    r = int.from_bytes(rand[:10], "big")
    value = ((unix_ms & 0xFFFF_FFFF_FFFF) << 80) | _VERSION_VARIANT | ((r << 48) & _RAND_A) | (r & _RAND_B)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
