"""msgpack encoding of payloads, and the canonical encoding used for hashes and checksums."""
from __future__ import annotations

from typing import Any

import msgpack

from .errors import UnencodablePayload


def pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise UnencodablePayload(f"payload cannot be encoded as msgpack: {e}") from e


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _normalize(obj: Any) -> Any:
    if isinstance(obj, dict):
        return [[_normalize(k), _normalize(v)] for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_normalize(v) for v in obj), key=repr)
    return obj


def canonical(obj: Any) -> bytes:
    """A byte encoding that is equal for equal values, whatever the dict/set order."""
    return pack(_normalize(obj))
