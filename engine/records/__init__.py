"""Records (``rec/<collection>/<id>``): field-level reconciliation of client ops.

Public API::

    reconcile(state, ops, config, *, now_ms=None) -> Reconciliation(state, events, outcomes)
    apply_record_event(state, recorded_event, registry=None) -> state
    fold_record_events(state, recorded_events, registry=None) -> state
    RecordsFolder(state, registry): .fold(events) page after page, .state() when needed
"""
from .config import LWW, MANUAL, CollectionPolicy, FieldPolicy, ResolutionConfig, Strategy, merged
from .errors import InvalidResolutionConfig, MergeFunctionRejected, UnknownMergeFunction
from .fold import RecordsFolder, apply_record_event, fold_record_events
from .merges import COUNTER, MAX, NO_INITIAL, UNION, MergeFunction, MergeRegistry, check_laws
from .ops import ClientOp, Op, ResolveOp, collection_of, op_from_wire
from .outcomes import Outcome, OutcomeKind, RejectReason, outcome_wire
from .payloads import (
    CONFLICT_DETECTED,
    CONFLICT_RESOLVED,
    CONFLICTS_STREAM,
    RECORD_PATCHED,
    StreamEvent,
    as_stream_writes,
)
from .reconciler import Reconciliation, reconcile
from .rules import config_from_rules, custom_merge, custom_refs, register_custom_merges, rules_of, same_rules
from .snapshots import (
    InvalidRecordState,
    decode_record_state,
    encode_record_state,
    record_snapshot,
    wire_values,
)
from .state import (
    Conflict,
    FieldState,
    LwwField,
    ManualField,
    MergeField,
    RecordsState,
    RecordState,
    Stamp,
    Write,
    conflict_id,
)

__all__ = [
    "InvalidRecordState",
    "decode_record_state",
    "encode_record_state",
    "record_snapshot",
    "wire_values",
    "CONFLICTS_STREAM",
    "CONFLICT_DETECTED",
    "CONFLICT_RESOLVED",
    "COUNTER",
    "LWW",
    "MANUAL",
    "MAX",
    "NO_INITIAL",
    "RECORD_PATCHED",
    "UNION",
    "ClientOp",
    "CollectionPolicy",
    "Conflict",
    "FieldPolicy",
    "FieldState",
    "InvalidResolutionConfig",
    "LwwField",
    "ManualField",
    "MergeField",
    "MergeFunction",
    "MergeFunctionRejected",
    "MergeRegistry",
    "Op",
    "Outcome",
    "outcome_wire",
    "OutcomeKind",
    "Reconciliation",
    "RecordState",
    "RecordsState",
    "RejectReason",
    "ResolutionConfig",
    "ResolveOp",
    "Stamp",
    "Strategy",
    "StreamEvent",
    "UnknownMergeFunction",
    "RecordsFolder",
    "Write",
    "apply_record_event",
    "as_stream_writes",
    "check_laws",
    "collection_of",
    "conflict_id",
    "fold_record_events",
    "merged",
    "op_from_wire",
    "reconcile",
    "config_from_rules",
    "custom_merge",
    "custom_refs",
    "register_custom_merges",
    "rules_of",
    "same_rules",
]
