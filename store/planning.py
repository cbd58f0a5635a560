"""Planning a group commit, for the store's writers: the log kernel's ``plan_batch``
(engine/logkernel.py) with the store's packer and id source.

Pure: given the batch, the current heads of the streams it touches and the
idempotency keys already stored, the kernel decides each call's outcome in arrival
order and builds the rows. Every adapter (SQL, memory, the simulator's sync logs)
runs the same plan, so they cannot disagree about versions, positions, hashes or
duplicates.
"""
from __future__ import annotations

from syncline.engine import logkernel
from syncline.engine.logkernel import BatchPlan, Head, StreamKey  # noqa: F401  (re-exported for the writers)

from .rows import PreparedAppend, _pack, new_event_ids

__all__ = ["BatchPlan", "Head", "StreamKey", "plan_batch"]


def plan_batch(
    batch: list[PreparedAppend],
    heads: dict[StreamKey, Head],
    stored_keys: dict[tuple[str, str], tuple[bytes, bytes]],
    position: int,
    time_us: int,
) -> BatchPlan:
    """``heads`` holds every stream of the batch that exists; ``stored_keys`` maps
    (tenant, key) to (fingerprint, encoded result) for keys already committed. Event
    ids the calls did not choose are fresh UUIDv7s from the OS's randomness."""
    return logkernel.plan_batch(batch, heads, stored_keys, position, time_us, new_ids=new_event_ids, pack=_pack)
