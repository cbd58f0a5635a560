"""The event log, stream heads, idempotency keys, checkpoints and snapshots.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "log_head",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO log_head (id, position, time_us) VALUES (1, 0, 0)")
    op.create_table(
        "events",
        sa.Column("position", POSITION, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("schema", sa.SmallInteger, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("actor_user", sa.String(128), nullable=False),
        sa.Column("actor_client", sa.String(128), nullable=False),
        sa.Column("clock", sa.LargeBinary, nullable=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("meta", sa.LargeBinary, nullable=True),
        sa.Column("retention", sa.String(16), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.UniqueConstraint("tenant", "stream", "version", name="uq_events_stream_version"),
        sa.UniqueConstraint("id", name="uq_events_id"),
    )
    op.create_index("ix_events_tenant_position", "events", ["tenant", "position"])
    op.create_index("ix_events_retention_time", "events", ["retention", "time_us"])
    op.create_index("ix_events_time", "events", ["time_us"])
    op.create_table(
        "streams",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("head_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("anchor_version", sa.Integer, nullable=False),
        sa.Column("anchor_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "stream"),
    )
    op.create_table(
        "idempotency",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("result", sa.LargeBinary, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key"),
    )
    op.create_index("ix_idempotency_created", "idempotency", ["created_us"])
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", "tenant"),
    )
    op.create_table(
        "snapshots",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "stream", "kind", "position"),
    )


def downgrade() -> None:
    for table in ("snapshots", "checkpoints", "idempotency", "streams", "events", "log_head", "tenants"):
        op.drop_table(table)
