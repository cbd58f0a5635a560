"""The event bus: consumer groups, members and leases, partitions, attempts, dead letters,
processed event ids (store/bus_schema.py).

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SCOPE = ("scope", "group_name")


def _key() -> list:
    return [sa.Column("scope", sa.String(64), nullable=False), sa.Column("group_name", sa.String(128), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "bus_groups",
        *_key(),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("filter", sa.LargeBinary, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(*_SCOPE),
    )
    op.create_table(
        "bus_members",
        *_key(),
        sa.Column("member", sa.String(128), nullable=False),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("joined_us", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(*_SCOPE, "member"),
    )
    op.create_table(
        "bus_partitions",
        *_key(),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("lease_until_us", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(*_SCOPE, "partition"),
    )
    op.create_table(
        "bus_attempts",
        *_key(),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure_us", sa.BigInteger, nullable=False),
        sa.Column("last_failure_us", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("trace", sa.Text, nullable=False),
        sa.Column("member", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint(*_SCOPE, "event_id"),
    )
    op.create_index("ix_bus_attempts_partition", "bus_attempts", [*_SCOPE, "partition"])
    op.create_table(
        "bus_dead_letters",
        sa.Column("id", sa.String(36), primary_key=True),
        *_key(),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("event_tenant", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
        sa.Column("edited_data", sa.LargeBinary, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("trace", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure_us", sa.BigInteger, nullable=False),
        sa.Column("last_failure_us", sa.BigInteger, nullable=False),
        sa.Column("member", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=True),
        sa.Column("dead_count", sa.Integer, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(*_SCOPE, "event_id", name="uq_bus_dead_letters_event"),
    )
    op.create_index("ix_bus_dead_letters_status", "bus_dead_letters", [*_SCOPE, "status"])
    op.create_table(
        "bus_processed",
        *_key(),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("processed_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(*_SCOPE, "event_id"),
    )
    op.create_index("ix_bus_processed_time", "bus_processed", ["processed_us"])


def downgrade() -> None:
    for table in ("bus_processed", "bus_dead_letters", "bus_attempts", "bus_partitions", "bus_members", "bus_groups"):
        op.drop_table(table)
