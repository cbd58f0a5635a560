"""Typed errors of the records core (codes are stable; see engine/errors.py)."""
from __future__ import annotations

from ..errors import ValidationError


class MergeFunctionRejected(ValidationError):
    """``MergeRegistry.register`` refused a function (a law failed on the samples)."""

    code = "merge_function_rejected"

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message, **details)
        self.code = code  # one of the MERGE_* codes below


MERGE_NOT_COMMUTATIVE = "merge_function_not_commutative"
MERGE_NOT_ASSOCIATIVE = "merge_function_not_associative"
MERGE_NOT_IDEMPOTENT = "merge_function_not_idempotent"
MERGE_BAD_IDENTITY = "merge_function_bad_identity"
MERGE_BAD_SAMPLES = "merge_function_bad_samples"
MERGE_NAME_TAKEN = "merge_function_name_taken"
MERGE_RAISED = "merge_function_raised"


class UnknownMergeFunction(ValidationError):
    code = "unknown_merge_function"


class InvalidResolutionConfig(ValidationError):
    code = "invalid_resolution_config"
