"""The per-stream hash chain: each event's hash covers its content and its predecessor's hash.

Editing an event changes its hash; deleting one breaks the link from its successor;
moving one changes the version/position it is hashed with. Pruning keeps the hash of
the last pruned event as the stream's anchor, so what is left still verifies.
"""
from __future__ import annotations

import hashlib
from typing import Any

from .codec import pack

GENESIS = b"\x00" * 32

# Copying an empty hash object skips hashlib's lookup of the algorithm by name,
# which costs about as much as hashing a small event.
_SHA256 = hashlib.sha256()


def chain_hash(prev_hash: bytes, fields: list[Any]) -> bytes:
    """The hash of an event from its predecessor's hash and its fields, in this order:
    id, tenant, stream, version, position, type, schema, time_us, actor_user,
    actor_client, clock, payload, meta, retention (clock and meta ``b""`` when absent)."""
    return hash_packed(prev_hash, pack(fields))


def hash_packed(prev_hash: bytes, packed_fields: bytes) -> bytes:
    """``chain_hash`` for fields the caller already packed with ``engine.codec.pack``'s
    encoding (the store packs with a reused Packer)."""
    h = _SHA256.copy()
    h.update(prev_hash + packed_fields)
    return h.digest()


def event_hash(
    prev_hash: bytes,
    *,
    id: str,
    tenant: str,
    stream: str,
    version: int,
    position: int,
    type: str,
    schema: int,
    time_us: int,
    actor_user: str,
    actor_client: str,
    clock: bytes,
    payload: bytes,
    meta: bytes,
    retention: str,
) -> bytes:
    return chain_hash(
        prev_hash,
        [id, tenant, stream, version, position, type, schema, time_us,
         actor_user, actor_client, clock, payload, meta, retention],
    )
