"""Yjs update and state-vector bytes: validation and merged-update compaction.

An *update* is the Yjs binary (v1) encoding of some document changes; it is the
payload of a ``crdt.update`` event as is. A *state vector* is a var-uint count
followed by that many (client id, clock) var-uint pairs.

Everything that parses bytes from a peer raises :class:`InvalidUpdate` (a
:class:`~engine.errors.ProtocolError`) on bad input, whatever pycrdt raised.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import pycrdt

from .errors import ProtocolError
from .lib0 import Reader

EMPTY_UPDATE = b"\x00\x00"  # no structs, empty delete set
EMPTY_STATE_VECTOR = b"\x00"


class InvalidUpdate(ProtocolError):
    """Bytes that pycrdt cannot decode as a Yjs update or state vector."""

    code = "invalid_update"


class UpdateNeverFits(InvalidUpdate):
    """An update that can never be integrated: one of its structs names itself (or a
    later clock of its own client) as a neighbour or parent, its parts wait on each
    other, or it waits on an id refused as never fitting. Refused whole; the document
    is unchanged. The client that sent it is broken or hostile."""

    code = "update_never_fits"


class PendingOverflow(InvalidUpdate):
    """Holding this update until what it waits for arrives would take the document's
    waiting updates past their bound (count or bytes). Refused whole; the document is
    unchanged. A client that sends it can resend later (or sync step 2 in one piece)."""

    code = "pending_overflow"
    http_status = 429


def is_fatal(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit))


def as_bytes(data: object, what: str = "update") -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidUpdate(f"{what} must be bytes, got {type(data).__name__}", reason="not_bytes")


def guard(what: str):
    """Context manager mapping pycrdt's failures (ValueError, or a Rust panic surfacing as
    pyo3's PanicException, a BaseException) onto :class:`InvalidUpdate`."""
    return _Guard(what)


class _Guard:
    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc is None or isinstance(exc, ProtocolError) or is_fatal(exc):
            return False
        raise InvalidUpdate(f"cannot decode {self._what}: {exc}", reason="undecodable") from exc


def check_header(update: bytes) -> bytes:
    """Refuse an update whose leading client count exceeds its length.

    yrs reserves a hash map sized by that count before reading anything else, so
    a dozen bytes claiming 2**31 clients cost gigabytes and seconds. Every client
    block takes at least three bytes (struct count, client id, clock).
    """
    first = update[0] if update else 0x80
    if first < 0x80:  # the usual case: fewer than 128 clients
        return update
    reader = Reader(update)
    try:
        count = reader.read_var_uint("update client count")
    except ProtocolError as e:
        raise InvalidUpdate(f"bad update: {e.message}", **e.details) from e
    if count * 3 > reader.remaining:
        raise InvalidUpdate("update claims more clients than it has bytes", reason="too_large")
    return update


def check_state_vector(state_vector: bytes) -> bytes:
    """Validate the structure of a state vector (pure Python, no pycrdt); return it."""
    try:
        reader = Reader(state_vector)
        count = reader.read_var_uint("state vector length")
        # Each pair takes at least two bytes: a larger count is a lie, refuse before looping
        # (and before yrs reserves room for it).
        if count * 2 > reader.remaining:
            raise ProtocolError("state vector length exceeds its bytes", reason="truncated")
        for _ in range(count):
            reader.read_var_uint("client id")
            reader.read_var_uint("clock")
        reader.expect_end("state vector")
    except InvalidUpdate:
        raise
    except ProtocolError as e:
        raise InvalidUpdate(f"bad state vector: {e.message}", **e.details) from e
    return state_vector


def check_update(update: bytes) -> bytes:
    """Validate that ``update`` decodes as a Yjs update (without applying it); return it.

    Used before appending a peer's update to the log, so a malformed update never
    becomes part of the history every later replay would trip over.
    """
    # (as ``guard`` does, without the context manager: this runs once per keystroke)
    if type(update) is not bytes:
        update = as_bytes(update)
    if not update or update[0] >= 0x80:  # check_header returns at once otherwise
        check_header(update)
    try:
        _get_state(update)
    except BaseException as e:  # pyo3 panics are BaseExceptions
        if isinstance(e, ProtocolError) or is_fatal(e):
            raise
        raise InvalidUpdate(f"cannot decode update: {e}", reason="undecodable") from e
    return update


_get_state = pycrdt.get_state


def merge(updates: Iterable[bytes]) -> bytes:
    """Compact many updates into one equivalent update (pycrdt ``merge_updates``).

    Applying the result to any document has the same effect as applying every
    input, in any order; the merged form is usually much smaller than the sum.
    """
    parts = [check_header(as_bytes(u)) for u in updates]
    if not parts:
        return EMPTY_UPDATE
    if len(parts) == 1:
        return check_update(parts[0])
    with guard("updates to merge"):
        return pycrdt.merge_updates(*parts)
