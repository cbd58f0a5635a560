"""The y-websocket wire protocol (y-protocols), sans I/O.

One WebSocket binary frame carries exactly one message::

    0 SYNC             var-uint subtype, var-bytes payload
        0 STEP1          payload = state vector of the sender
        1 STEP2          payload = update: what the receiver of step 1 was missing
        2 UPDATE         payload = update: a live change
    1 AWARENESS        var-bytes awareness update (see engine.awareness)
    2 AUTH             var-uint subtype 0 (permission denied), var-string reason
    3 QUERY_AWARENESS  nothing: "send me every awareness state"

:func:`decode_message` turns a frame into one of the message dataclasses below or
raises :class:`~engine.errors.ProtocolError` — on any input, in time linear in
its length. Trailing bytes are refused. Updates are checked to decode as Yjs
updates (pycrdt) unless ``check_updates=False``, so a malformed update is refused
before anyone appends it to the log.

:func:`handle_sync` is the pure step-1 → step-2 helper, after pycrdt's
``handle_sync_message``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Union

import pycrdt

from .awareness import (
    AWARENESS_ENTRIES_MAX,
    AWARENESS_STATE_BYTES_MAX,
    AwarenessEntry,
    decode_awareness_update,
)
from .errors import ProtocolError
from .lib0 import Reader, write_var_bytes, write_var_string
from .yupdates import (
    EMPTY_UPDATE,
    as_bytes,
    check_header,
    check_state_vector,
    check_update,
    guard,
)


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


AUTH_PERMISSION_DENIED = 0

FRAME_BYTES_MAX = 16 * 1024 * 1024
REASON_BYTES_MAX = 4096


class UnknownMessageType(ProtocolError):
    """A well-formed frame of a type this side does not speak. y-websocket peers
    ignore these; a server may too (catch this subclass), or close."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    update: bytes  # the raw awareness update, to relay without re-encoding
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


SyncMessage = Union[SyncStep1, SyncStep2, SyncUpdate]
Message = Union[SyncStep1, SyncStep2, SyncUpdate, AwarenessMessage, PermissionDenied, QueryAwareness]


@dataclass(frozen=True, slots=True)
class Limits:
    frame_bytes_max: int = FRAME_BYTES_MAX
    reason_bytes_max: int = REASON_BYTES_MAX
    awareness_entries_max: int = AWARENESS_ENTRIES_MAX
    awareness_state_bytes_max: int = AWARENESS_STATE_BYTES_MAX


DEFAULT_LIMITS = Limits()


def decode_message(
    frame: bytes, *, limits: Limits = DEFAULT_LIMITS, check_updates: bool = True
) -> Message:
    """Decode one frame, or raise :class:`ProtocolError` (nothing else)."""
    if not isinstance(frame, bytes):
        if not isinstance(frame, (bytearray, memoryview)):
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        frame = bytes(frame)
    if len(frame) > limits.frame_bytes_max:
        raise ProtocolError(f"frame of {len(frame)} bytes is too large", reason="too_large")
    reader = Reader(frame)
    kind = reader.read_var_uint("message type")
    msg: Message
    if kind == MessageType.SYNC:
        sub = reader.read_var_uint("sync type")
        payload = reader.read_var_bytes(limits.frame_bytes_max, "sync payload")
        if sub == SyncType.STEP1:
            msg = SyncStep1(check_state_vector(payload))
        elif sub == SyncType.STEP2 or sub == SyncType.UPDATE:
            if check_updates:
                check_update(payload)
            msg = SyncStep2(payload) if sub == SyncType.STEP2 else SyncUpdate(payload)
        else:
            raise UnknownMessageType(f"unknown sync type {sub}", reason="unknown_sync_type")
    elif kind == MessageType.AWARENESS:
        payload = reader.read_var_bytes(limits.frame_bytes_max, "awareness payload")
        entries = decode_awareness_update(
            payload,
            entries_max=limits.awareness_entries_max,
            state_bytes_max=limits.awareness_state_bytes_max,
        )
        msg = AwarenessMessage(payload, entries)
    elif kind == MessageType.AUTH:
        sub = reader.read_var_uint("auth type")
        if sub != AUTH_PERMISSION_DENIED:
            raise UnknownMessageType(f"unknown auth type {sub}", reason="unknown_auth_type")
        msg = PermissionDenied(reader.read_var_string(limits.reason_bytes_max, "reason"))
    elif kind == MessageType.QUERY_AWARENESS:
        msg = QueryAwareness()
    else:
        raise UnknownMessageType(f"unknown message type {kind}", reason="unknown_message_type")
    reader.expect_end()
    return msg


# -- encoders ----------------------------------------------------------------

_SYNC_STEP1 = bytes((MessageType.SYNC, SyncType.STEP1))
_SYNC_STEP2 = bytes((MessageType.SYNC, SyncType.STEP2))
_SYNC_UPDATE = bytes((MessageType.SYNC, SyncType.UPDATE))
_AWARENESS = bytes((MessageType.AWARENESS,))
_AUTH_DENIED = bytes((MessageType.AUTH, AUTH_PERMISSION_DENIED))
_QUERY_AWARENESS = bytes((MessageType.QUERY_AWARENESS,))


def encode_sync_step1(state_vector: bytes) -> bytes:
    return _SYNC_STEP1 + write_var_bytes(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return _SYNC_STEP2 + write_var_bytes(update)


def encode_sync_update(update: bytes) -> bytes:
    return _SYNC_UPDATE + write_var_bytes(update)


def encode_awareness(awareness_update: bytes) -> bytes:
    return _AWARENESS + write_var_bytes(awareness_update)


def encode_permission_denied(reason: str) -> bytes:
    return _AUTH_DENIED + write_var_string(reason)


def encode_query_awareness() -> bytes:
    return _QUERY_AWARENESS


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, SyncStep1):
        return encode_sync_step1(msg.state_vector)
    if isinstance(msg, SyncStep2):
        return encode_sync_step2(msg.update)
    if isinstance(msg, SyncUpdate):
        return encode_sync_update(msg.update)
    if isinstance(msg, AwarenessMessage):
        return encode_awareness(msg.update)
    if isinstance(msg, PermissionDenied):
        return encode_permission_denied(msg.reason)
    if isinstance(msg, QueryAwareness):
        return encode_query_awareness()
    raise TypeError(f"not a y-protocol message: {type(msg).__name__}")


# -- sync steps --------------------------------------------------------------


def _state_vector(doc: Any) -> bytes:
    if isinstance(doc, pycrdt.Doc):
        return doc.get_state()
    return doc.state_vector()


def _diff(doc: Any, state_vector: bytes) -> bytes:
    if isinstance(doc, pycrdt.Doc):
        with guard("state vector"):
            return doc.get_update(state_vector)
    return doc.diff(state_vector)


def _apply(doc: Any, update: bytes) -> None:
    if isinstance(doc, pycrdt.Doc):
        update = check_header(as_bytes(update))
        with guard("update"):
            doc.apply_update(update)
    else:
        doc.apply_update(update)


def sync_step1(doc: Any) -> bytes:
    """The step-1 frame announcing ``doc``'s state vector (a pycrdt ``Doc`` or an
    ``engine.documents.Document``)."""
    return encode_sync_step1(_state_vector(doc))


def handle_sync(doc: Any, msg: SyncMessage | bytes) -> bytes | None:
    """Process a sync message against ``doc``; return the reply frame, if any.

    Step 1 → the step-2 frame with everything the peer lacks. Step 2 and update →
    the update is applied to ``doc`` and there is no reply. (A server that must
    append to the log before applying handles those two itself.)
    """
    # (bytes may hold any message, not only a sync one)
    m: Message = decode_message(bytes(msg)) if isinstance(msg, (bytes, bytearray, memoryview)) else msg
    if isinstance(m, SyncStep1):
        return encode_sync_step2(_diff(doc, m.state_vector))
    if isinstance(m, (SyncStep2, SyncUpdate)):
        if m.update != EMPTY_UPDATE:
            _apply(doc, m.update)
        return None
    raise ProtocolError(f"not a sync message: {type(m).__name__}", reason="not_sync")
