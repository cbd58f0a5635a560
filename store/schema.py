"""Table definitions (SQLAlchemy Core). Alembic migrations in store/migrations create them.

Positions come from the one-row ``log_head`` counter, never from a rowid or a
sequence: that keeps them gapless, in commit order, and never reused after pruning.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

# BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid itself (faster lookups).
Position = BigInteger().with_variant(Integer(), "sqlite")

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_us", BigInteger, nullable=False),
)

log_head = Table(
    "log_head",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=False),
    Column("id", String(36), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(128), nullable=False),
    Column("schema", SmallInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("actor_user", String(128), nullable=False),
    Column("actor_client", String(128), nullable=False),
    Column("clock", LargeBinary, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("meta", LargeBinary, nullable=True),
    Column("retention", String(16), nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    # the bus's partition key, crc32(tenant NUL stream) (store/bus_schema.partition_key;
    # migration 0006); NULL on rows written before it
    Column("pkey", BigInteger, nullable=True),
    UniqueConstraint("tenant", "stream", "version", name="uq_events_stream_version"),
    UniqueConstraint("id", name="uq_events_id"),
    Index("ix_events_tenant_position", "tenant", "position"),
    Index("ix_events_retention_time", "retention", "time_us"),
    Index("ix_events_time", "time_us"),
)

streams = Table(
    "streams",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("head_hash", LargeBinary(32), nullable=False),
    Column("anchor_version", Integer, nullable=False),  # last pruned version (0: none pruned)
    Column("anchor_hash", LargeBinary(32), nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "stream"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("result", LargeBinary, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "key"),
    Index("ix_idempotency_created", "created_us"),
)

# Durable subscription positions. tenant "*" marks a platform consumer over all tenants.
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("name", String(255), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "tenant"),
)

# Derived data: document/projection snapshots. Deleting them loses nothing.
snapshots = Table(
    "snapshots",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "stream", "kind", "position"),
)

# Signed audit checkpoints (store/audit.py, engine/auditlog.py). Never updated or deleted.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("heads", String(64), nullable=False),
    Column("streams", BigInteger, nullable=False),
    Column("critical", BigInteger, nullable=False),
    Column("pruned", BigInteger, nullable=False),
    Column("horizon", BigInteger, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("key", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

# What pruning deleted, one row per stream per prune (written in the prune's transaction):
# versions from_version..to_version, the last of them at anchor_position with hash
# anchor_hash (the stream's new anchor). anchor_position is NULL for rows backfilled by
# migration 0005 from anchors pruned before it.
prune_log = Table(
    "prune_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("time_us", BigInteger, nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("from_version", Integer, nullable=False),
    Column("to_version", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("anchor_position", BigInteger, nullable=True),
    Column("anchor_hash", LargeBinary(32), nullable=False),
    Index("ix_prune_log_stream", "tenant", "stream"),
)
