"""The event bus: a partition's in-flight mark (store/bus/groups.py), so an event that
crashes its worker process counts as an attempt.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bus_partitions") as batch:
        batch.add_column(sa.Column("inflight", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("bus_partitions") as batch:
        batch.drop_column("inflight")
