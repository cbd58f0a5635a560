"""Signed audit checkpoints: what a checkpoint attests, and how it is encoded. Pure.

A checkpoint attests the whole log at one position P:

- ``position``  the log head P (every position 1..P was assigned, gaplessly);
- ``heads``     a hash over every stream's head as of P: (tenant, stream, version,
                hash of that version's event);
- ``streams``   how many streams existed at P;
- ``critical``  how many ``critical`` events have a position <= P (they are never pruned,
                so this count can only grow and is checkable for every checkpoint);
- ``pruned``    how many events pruning had deleted when it was signed;
- ``horizon``   the highest position pruning had deleted up to (below it some heads as of
                older checkpoints are gone, so their heads are no longer checkable);
- ``prev``      the SHA-256 of the previous checkpoint's signed body (a chain: deleting
                or altering a checkpoint in the middle breaks the next one's link);
- ``seq``       its number (1, 2, ...), ``time_us``, and ``key`` (the signing key's id).

The body is canonical JSON (sorted keys, no spaces), signed with Ed25519 by the store
(store/audit.py; the private key lives outside the database).

The heads hash is a multiset hash, so a verifier walking the log in position order can
update it per event and compare it at every checkpoint in O(1), and a signer can update
it for the streams that changed since its last checkpoint: each head is expanded with
SHAKE-256 to 512 bytes and the heads are summed modulo 2**4096 (AdHash; Wagner's
generalized-birthday attack on an n-bit modular sum costs about 2**(2*sqrt(n)), here
2**128); the attested value is the SHA-256 of that sum. Moving a stream's head
subtracts its old term and adds the new one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

FORMAT = 1
_LANE_BYTES = 512
_MOD = 1 << (_LANE_BYTES * 8)
_shake = hashlib.shake_256
GENESIS_PREV = "00" * 32


def _term(tenant: str, stream: str, version: int, hash_: bytes) -> int:
    t, s = tenant.encode(), stream.encode()
    # length-prefixed, so no two different heads encode alike (the hash is 32 bytes)
    data = b"%d:%b%d:%b%d.%b" % (len(t), t, len(s), s, version, bytes(hash_))
    return int.from_bytes(_shake(data).digest(_LANE_BYTES), "big")


class HeadsHash:
    """The multiset hash over stream heads; ``set`` moves one stream's head."""

    __slots__ = ("_sum", "_heads")

    def __init__(self) -> None:
        self._sum = 0
        self._heads: dict[tuple[str, str], tuple[int, bytes]] = {}

    def set(self, tenant: str, stream: str, version: int, hash_: bytes) -> None:
        key = (tenant, stream)
        old = self._heads.get(key)
        if old is not None:
            self._sum -= _term(tenant, stream, old[0], old[1])
        self._sum = (self._sum + _term(tenant, stream, version, hash_)) % _MOD
        self._heads[key] = (version, bytes(hash_))

    def get(self, tenant: str, stream: str) -> tuple[int, bytes] | None:
        return self._heads.get((tenant, stream))

    @property
    def streams(self) -> int:
        return len(self._heads)

    def hexdigest(self) -> str:
        return hashlib.sha256(self._sum.to_bytes(_LANE_BYTES, "big")).hexdigest()


def heads_digest(heads: list[tuple[str, str, int, bytes]]) -> str:
    h = HeadsHash()
    for t, s, v, x in heads:
        h.set(t, s, v, x)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    position: int
    time_us: int
    heads: str
    streams: int
    critical: int
    pruned: int
    horizon: int
    prev: str
    key: str
    signature: str = ""  # hex; not part of the body

    def body(self) -> bytes:
        """The signed bytes."""
        d = asdict(self)
        d.pop("signature")
        d["v"] = FORMAT
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """What the next checkpoint's ``prev`` must be."""
        return hashlib.sha256(self.body()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Checkpoint":
        return cls(
            seq=int(d["seq"]), position=int(d["position"]), time_us=int(d["time_us"]), heads=str(d["heads"]),
            streams=int(d["streams"]), critical=int(d["critical"]), pruned=int(d["pruned"]), horizon=int(d["horizon"]),
            prev=str(d["prev"]),
            key=str(d["key"]), signature=str(d.get("signature", "")),
        )


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One thing ``verify`` found wrong. ``kind`` is stable (listed in
    docs/security.md#audit-trail-and-refused-attempts)."""

    kind: str
    detail: str
    seq: int | None = None
    position: int | None = None


# The kinds verify reports beyond the per-stream chain breaks.
KINDS = (
    "stream_row_missing",      # events exist for a stream that has no streams row
    "position_beyond_head",    # an event's position is past the log head
    "event_count_mismatch",    # events present + events pruned != log head (positions are gapless)
    "prune_record_mismatch",   # a stream's pruned prefix does not match the prune records
    "no_public_key",           # checkpoints exist but no public key was given to check them
    "no_checkpoints",          # a key is configured but the database holds no checkpoint
    "checkpoint_signature",    # a checkpoint's signature does not verify (or its key is unknown)
    "checkpoint_chain",        # seq gap, or prev does not match the previous checkpoint
    "checkpoint_ahead",        # a checkpoint's position is past the log head
    "checkpoint_heads",        # the stream heads at a checkpoint's position differ from the signed hash
    "checkpoint_critical",     # the count of critical events at a checkpoint's position differs
    "checkpoint_pruned",       # fewer events are recorded as pruned than a checkpoint attests
    "unsigned_prune",          # more events are recorded as pruned than the newest checkpoint attests
    "checkpoint_missing",      # an exported checkpoint is not in the database
    "checkpoint_altered",      # an exported checkpoint differs from the database's copy
    "unsigned_critical",       # critical events after the newest checkpoint (they are always signed)
)
