"""Pure pieces of incremental sync: delta cursors, snapshot checksums and chunking.

A delta cursor is opaque to clients: it carries the position to continue after and
a fingerprint of the stream selection, so a cursor cannot be replayed against a
different set of streams. A snapshot's checksum is the sha256 of the canonical
encoding of (position, content); chunks carry their index, the total and the
snapshot checksum, and reassembly verifies all of it.

Chunks come in two encodings of the same ``[position, content]``: msgpack bytes (the
default, what the native protocol sends) and, for clients that ask for JSON, pieces of
its JSON text with bytes written as ``{"$b64": ...}`` (the native protocol's JSON
convention). Both reassemble to the same content and check against the same checksum.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence, cast

from .codec import canonical, pack, unpack
from .errors import IntegrityViolation, ValidationError
from .events import POSITION_MAX
from .filters import EventFilter
from .protocol import InvalidMessage, from_json_value, to_json_value


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


def chunk_snapshot_json(position: int, content: Any, checksum: str, chunk_chars: int = 256 * 1024) -> list[Chunk]:
    """``chunk_snapshot`` for JSON clients: each chunk's ``data`` is a piece (``chunk_chars``
    characters) of the JSON text of ``[position, content]``, as a ``str``."""
    if chunk_chars <= 0:
        raise ValidationError("chunk size must be positive")
    text = json.dumps(to_json_value([position, content]), separators=(",", ":"), ensure_ascii=False)
    total = max(1, -(-len(text) // chunk_chars))
    # (``Chunk.data`` holds a str here: the JSON text's piece, sent as a JSON string)
    return [Chunk(i, total, checksum, cast(bytes, text[i * chunk_chars:(i + 1) * chunk_chars])) for i in range(total)]


def assemble_json_snapshot(chunks: Sequence[Chunk]) -> tuple[int, Any, str]:
    """``assemble_snapshot`` for chunks from ``chunk_snapshot_json`` (``data`` a str):
    the same checks, the same (position, content, checksum), bytes restored."""
    if not chunks:
        raise ValidationError("no chunks")
    total, checksum = chunks[0].total, chunks[0].checksum
    ordered = sorted(chunks, key=lambda c: c.index)
    if [c.index for c in ordered] != list(range(total)) or any(
        c.total != total or c.checksum != checksum or not isinstance(c.data, str) for c in ordered
    ):
        raise SnapshotChecksumMismatch("the chunks do not form one complete snapshot")
    try:
        position, content = from_json_value(json.loads("".join(cast(str, c.data) for c in ordered)))
    except (ValueError, TypeError, InvalidMessage) as e:
        raise SnapshotChecksumMismatch("the snapshot does not decode") from e
    if snapshot_checksum(position, content) != checksum:
        raise SnapshotChecksumMismatch("the snapshot does not match its checksum")
    return position, content, checksum
