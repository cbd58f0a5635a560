"""Tables of the event bus (bus/, store/bus/).
Migrations: store/migrations/versions/0002_bus.py, 0003_bus_inflight.py, 0006_bus_partition_key.py.

Every row is scoped by ``scope`` (the group's tenant, or ``"*"`` for a platform group
that reads all tenants) and ``group_name``. A group's stream of work is split into a
fixed number of partitions by hashing (tenant, stream); a partition is leased by one
live member at a time and carries its own checkpoint, so events of one stream are
handled in order, by one member at a time.
"""
from __future__ import annotations

import functools
import zlib

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from .schema import metadata

SCOPE_ALL = "*"


@functools.lru_cache(maxsize=65_536)  # streams repeat; the cache is bounded
def partition_key(tenant: str, stream: str) -> int:
    """The bus's partition key of a stream, stored on every event as ``events.pkey``
    (migration 0006): a group of P partitions puts the stream in ``key % P``. Stable
    across processes and restarts (unlike ``hash()``), so a stream always lands in the
    same partition and its events are handled in order by whoever owns it."""
    return zlib.crc32(f"{tenant}\x00{stream}".encode())


def partition_keys(tenants: list[str], streams: list[str]) -> list[int]:
    """partition_key of each (tenant, stream), computed once per distinct stream."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for k in zip(tenants, streams):
        v = seen.get(k)
        if v is None:
            v = seen[k] = partition_key(*k)
        out.append(v)
    return out

bus_groups = Table(
    "bus_groups",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("partitions", Integer, nullable=False),
    Column("filter", LargeBinary, nullable=True),  # msgpack, informational (members pass their own)
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "group_name"),
)

# Live members: a member is alive while expires_us is in the future (heartbeats renew it).
bus_members = Table(
    "bus_members",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("member", String(128), nullable=False),
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("joined_us", BigInteger, nullable=False),
    Column("heartbeat_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "group_name", "member"),
)

# Assignment, lease and checkpoint of each partition. ``position``: every event of the
# partition at or below it is handled (or dead-lettered). ``epoch`` grows with every
# claim and fences checkpoint writes from a member that lost the lease. ``inflight``
# (migration 0003): the owner may have handed events up to here to its handler; written
# before it does, reset on a clean release, so a new owner that finds it above
# ``position`` knows the previous owner died with that range in hand.
bus_partitions = Table(
    "bus_partitions",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("owner", String(128), nullable=True),
    Column("epoch", BigInteger, nullable=False),
    Column("lease_until_us", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("inflight", BigInteger, nullable=False, server_default="0"),
    # events the group's handlers acked, added to with each checkpoint write: a counter
    # across every member and restart (redeliveries after a crash count again; dead
    # letters and events the filter skips do not count), for metrics (migration 0006)
    Column("consumed", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("scope", "group_name", "partition"),
)

# Failed attempts of the event a partition is stuck on (at most one per partition, since a
# partition is handled in order); read back when another member takes the partition over.
bus_attempts = Table(
    "bus_attempts",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failure_us", BigInteger, nullable=False),
    Column("last_failure_us", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("trace", Text, nullable=False),
    Column("member", String(128), nullable=False),
    PrimaryKeyConstraint("scope", "group_name", "event_id"),
    Index("ix_bus_attempts_partition", "scope", "group_name", "partition"),
)

# One entry per (group, event): dead-lettering the same event again updates it.
# status: dead | requeued | redelivering | resolved | discarded
bus_dead_letters = Table(
    "bus_dead_letters",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("event_tenant", String(64), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("type", String(128), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("event", LargeBinary, nullable=False),  # msgpack of the original envelope (RecordedEvent.to_wire)
    Column("edited_data", LargeBinary, nullable=True),  # msgpack of the edited payload, if edited
    Column("reason", Text, nullable=False),
    Column("trace", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failure_us", BigInteger, nullable=False),
    Column("last_failure_us", BigInteger, nullable=False),
    Column("member", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=True),
    Column("dead_count", Integer, nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    UniqueConstraint("scope", "group_name", "event_id", name="uq_bus_dead_letters_event"),
    Index("ix_bus_dead_letters_status", "scope", "group_name", "status"),
)

# Idempotent consumers: event ids a group has handled, written in the handler's transaction.
bus_processed = Table(
    "bus_processed",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("group_name", String(128), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("processed_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "group_name", "event_id"),
    Index("ix_bus_processed_time", "processed_us"),
)
