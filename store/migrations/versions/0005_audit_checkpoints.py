"""Signed audit checkpoints and prune records (store/audit.py).

``audit_checkpoints`` holds the Ed25519-signed checkpoints of the log head;
``prune_log`` one row per stream per prune, so ``verify`` can match every stream's
pruned prefix (its anchor) and the count of deleted events against a record. Anchors
left by prunes before this revision are backfilled as one record per stream (their
anchor position is unknown: NULL).

Revision ID: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", _ID, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("heads", sa.String(64), nullable=False),
        sa.Column("streams", sa.BigInteger, nullable=False),
        sa.Column("critical", sa.BigInteger, nullable=False),
        sa.Column("pruned", sa.BigInteger, nullable=False),
        sa.Column("horizon", sa.BigInteger, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_table(
        "prune_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=False),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("anchor_position", sa.BigInteger, nullable=True),
        sa.Column("anchor_hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_index("ix_prune_log_stream", "prune_log", ["tenant", "stream"])
    op.execute(
        "INSERT INTO prune_log (time_us, tenant, stream, from_version, to_version, count, anchor_position, "
        "anchor_hash) SELECT updated_us, tenant, stream, 1, anchor_version, anchor_version, NULL, anchor_hash "
        "FROM streams WHERE anchor_version > 0"
    )


def downgrade() -> None:
    op.drop_index("ix_prune_log_stream", table_name="prune_log")
    op.drop_table("prune_log")
    op.drop_table("audit_checkpoints")
