"""Pure pieces of incremental sync: delta cursors, snapshot checksums and chunking.

A delta cursor is opaque to clients: it carries the position to continue after and
a fingerprint of the stream selection, so a cursor cannot be replayed against a
different set of streams. A snapshot's checksum is the sha256 of the canonical
encoding of (position, content); chunks carry their index, the total and the
snapshot checksum, and reassembly verifies all of it.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from .codec import canonical, pack, unpack
from .errors import IntegrityViolation, ValidationError
from .events import POSITION_MAX
from .filters import EventFilter


class InvalidCursor(ValidationError):
    code = "invalid_cursor"


class SnapshotChecksumMismatch(IntegrityViolation):
    code = "snapshot_checksum_mismatch"


def selection_fingerprint(f: EventFilter) -> str:
    body = canonical([sorted(f.streams), sorted(f.stream_prefixes), sorted(f.types)])
    return hashlib.sha256(body).hexdigest()[:16]


def encode_cursor(after: int, f: EventFilter) -> str:
    return base64.urlsafe_b64encode(pack([1, after, selection_fingerprint(f)])).decode().rstrip("=")


def decode_cursor(cursor: str, f: EventFilter) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, after, fp = unpack(base64.urlsafe_b64decode(padded.encode()))
    except Exception as e:  # base64, msgpack or unpacking: all mean a cursor we did not issue
        raise InvalidCursor("the cursor is not one this server issued") from e
    if version != 1 or not isinstance(after, int) or not 0 <= after <= POSITION_MAX:
        raise InvalidCursor("the cursor is not one this server issued")
    if fp != selection_fingerprint(f):
        raise InvalidCursor("the cursor belongs to a different selection of streams")
    return after


def snapshot_checksum(position: int, content: Any) -> str:
    return hashlib.sha256(canonical([position, content])).hexdigest()


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    total: int
    checksum: str  # of the whole snapshot
    data: bytes


def chunk_snapshot(position: int, content: Any, checksum: str, chunk_bytes: int = 256 * 1024) -> list[Chunk]:
    if chunk_bytes <= 0:
        raise ValidationError("chunk size must be positive")
    blob = pack([position, content])
    total = max(1, -(-len(blob) // chunk_bytes))
    return [Chunk(i, total, checksum, blob[i * chunk_bytes:(i + 1) * chunk_bytes]) for i in range(total)]


def assemble_snapshot(chunks: Sequence[Chunk]) -> tuple[int, Any, str]:
    """(position, content, checksum) from all chunks, in any order; raises if any is
    missing, duplicated, from another snapshot, or the content does not match."""
    if not chunks:
        raise ValidationError("no chunks")
    total, checksum = chunks[0].total, chunks[0].checksum
    ordered = sorted(chunks, key=lambda c: c.index)
    if [c.index for c in ordered] != list(range(total)) or any(
        c.total != total or c.checksum != checksum for c in ordered
    ):
        raise SnapshotChecksumMismatch("the chunks do not form one complete snapshot")
    try:
        position, content = unpack(b"".join(c.data for c in ordered))
    except Exception as e:
        raise SnapshotChecksumMismatch("the snapshot does not decode") from e
    if snapshot_checksum(position, content) != checksum:
        raise SnapshotChecksumMismatch("the snapshot does not match its checksum")
    return position, content, checksum
