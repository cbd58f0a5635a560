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


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # top bits 10, then 2 random


def uuid7_many(unix_ms: int, rand: bytes, n: int) -> list[str]:
    """``n`` UUIDv7 strings sharing one millisecond, from ``10 * n`` random bytes.

    A group commit numbers a whole batch at one time, so the 48-bit time prefix is
    formatted once and each id only slices its own 20 hex digits of randomness
    (74 random bits, as in ``uuid7``). Same validity and ordering by time as
    ``uuid7``, at a fraction of the cost per id.
    """
    if len(rand) < 10 * n:
        raise ValueError("uuid7_many needs 10 random bytes per id")
    t = f"{unix_ms & 0xFFFF_FFFF_FFFF:012x}"
    prefix = f"{t[:8]}-{t[8:]}-7"
    hx = rand.hex()
    v = _VARIANT
    return [
        f"{prefix}{hx[j:j + 3]}-{v[hx[j + 3]]}{hx[j + 4:j + 7]}-{hx[j + 7:j + 19]}"
        for j in range(0, 20 * n, 20)
    ]
