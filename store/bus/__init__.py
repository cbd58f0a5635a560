"""Persistent state of the event bus (bus/ is the runtime): consumer group membership,
leases and checkpoints, attempts, dead letters, processed event ids."""
from .dlq import STATUSES, DeadLetter, DeadLetterStore
from .groups import Attempt, GroupStore, Lease, Membership, list_groups
from .processed import forget_processed, mark_processed

__all__ = [
    "Attempt", "DeadLetter", "DeadLetterStore", "GroupStore", "Lease", "Membership", "STATUSES",
    "forget_processed", "list_groups", "mark_processed",
]
