"""Persistent state of the event bus (bus/ is the runtime): consumer group membership,
leases and checkpoints, attempts, dead letters, processed event ids."""
from .dlq import STATUSES, AmbiguousId, DeadLetter, DeadLetterStore
from .groups import Attempt, GroupStore, Lease, Membership, bus_figures, list_groups, unowned_mirrors
from .processed import forget_processed, mark_processed

__all__ = [
    "AmbiguousId", "Attempt", "DeadLetter", "DeadLetterStore", "GroupStore", "Lease", "Membership", "STATUSES",
    "bus_figures", "forget_processed", "list_groups", "mark_processed", "unowned_mirrors",
]
