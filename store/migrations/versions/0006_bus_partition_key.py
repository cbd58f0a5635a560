"""The bus's partition key on every event: ``events.pkey``, filled on append.

A consumer group splits its events into partitions by ``crc32(tenant NUL stream) %
partitions`` (bus/events.partition_of). With the key stored, a member in its own
process reads only the rows of the partitions it holds (``pkey % partitions IN
(...)``) instead of reading and decoding the whole log and dropping three quarters
of it (benchmarks/bus.py). The key is ``store/bus_schema.partition_key``, the same
function as before, so existing groups' checkpoints keep their meaning. Rows written
before this revision keep NULL; readers treat NULL as "any partition" and split
those in Python as before.

PostgreSQL: ``syncline_append()`` takes one more array, ``e_pkey`` (store/pg_writer.py).
SQLite: the writers insert the column (store/sqlite_writer.py, store/sqlite_sync_log.py).

Also ``bus_partitions.consumed``: events a group's members handled, added to with
each checkpoint write, so ``/metrics`` and ``syncline bus groups`` can show a group's
consumed count and rate from any process (api/metrics_bus.py).

Revision ID: 0006
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GENESIS_HEX = "00" * 32

# 0004's function with e_pkey added (the signature changes, so the old one is dropped).
OLD_SIGNATURE = """(
    p_position bigint, p_time_us bigint, a_tenant text[], a_stream text[], a_version int[], a_hash bytea[],
    k_tenant text[], k_key text[], k_present boolean[], e_id text[], e_tenant text[], e_stream text[],
    e_version int[], e_type text[], e_schema smallint[], e_actor_user text[], e_actor_client text[],
    e_clock bytea[], e_payload bytea[], e_meta bytea[], e_retention text[], e_prev_hash bytea[], e_hash bytea[],
    i_tenant text[], i_key text[], i_fingerprint bytea[], i_result bytea[]
)"""

CREATE = r"""
CREATE OR REPLACE FUNCTION syncline_append(
    -- what the plan assumed: the log head, each stream's head (version 0 and a NULL
    -- hash: no such stream; a_tenant of one element: all streams of that tenant), and
    -- whether each idempotency key is stored
    p_position bigint, p_time_us bigint,
    a_tenant text[], a_stream text[], a_version int[], a_hash bytea[],
    k_tenant text[], k_key text[], k_present boolean[],
    -- what it writes: events at positions p_position + 1, 2, ... at time p_time_us, in
    -- that order (empty arrays: none), and new idempotency keys. An events array of one
    -- element gives every event that value (often tenant, type, actor, retention).
    e_id text[], e_tenant text[], e_stream text[], e_version int[], e_type text[],
    e_schema smallint[], e_actor_user text[], e_actor_client text[], e_clock bytea[],
    e_payload bytea[], e_meta bytea[], e_retention text[], e_prev_hash bytea[], e_hash bytea[],
    -- the bus's partition key of each event (store/bus_schema.partition_key)
    e_pkey bigint[],
    i_tenant text[], i_key text[], i_fingerprint bytea[], i_result bytea[],
    -- the answer: r_ok, or (not r_ok) what is committed, for the writer to plan again
    OUT r_ok boolean, OUT r_position bigint, OUT r_time_us bigint,
    OUT r_tenants text[], OUT r_streams text[], OUT r_versions int[], OUT r_hashes bytea[],
    OUT r_key_tenants text[], OUT r_keys text[], OUT r_fingerprints bytea[], OUT r_results bytea[]
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    n int;
BEGIN
    IF cardinality(a_tenant) = 1 AND cardinality(a_stream) > 1 THEN
        a_tenant := array_fill(a_tenant[1], ARRAY[cardinality(a_stream)]);
    END IF;
    -- The lock that orders commits; held until this transaction commits or rolls back.
    PERFORM 1 FROM log_head WHERE id = 1 FOR UPDATE;
    -- A new statement, so a new READ COMMITTED snapshot, taken after the lock was
    -- granted: it includes the commit of whoever held the lock before us.
    SELECT l.position, l.time_us INTO r_position, r_time_us FROM log_head l WHERE l.id = 1;
    r_ok := r_position = p_position AND p_time_us >= r_time_us
        AND NOT EXISTS (
            SELECT 1 FROM unnest(a_tenant, a_stream, a_version, a_hash) AS a(t, s, v, h)
            LEFT JOIN streams st ON st.tenant = a.t AND st.stream = a.s
            WHERE coalesce(st.version, 0) <> a.v OR st.head_hash IS DISTINCT FROM a.h)
        AND NOT EXISTS (
            SELECT 1 FROM unnest(k_tenant, k_key, k_present) AS k(t, key, present)
            WHERE k.present <> EXISTS (SELECT 1 FROM idempotency i WHERE i.tenant = k.t AND i.key = k.key));
    IF NOT r_ok THEN
        SELECT array_agg(st.tenant), array_agg(st.stream), array_agg(st.version), array_agg(st.head_hash)
        INTO r_tenants, r_streams, r_versions, r_hashes
        FROM unnest(a_tenant, a_stream) AS a(t, s) JOIN streams st ON st.tenant = a.t AND st.stream = a.s;
        SELECT array_agg(i.tenant), array_agg(i.key), array_agg(i.fingerprint), array_agg(i.result)
        INTO r_key_tenants, r_keys, r_fingerprints, r_results
        FROM unnest(k_tenant, k_key) AS k(t, key) JOIN idempotency i ON i.tenant = k.t AND i.key = k.key;
        RETURN;
    END IF;
    n := cardinality(e_id);
    IF n > 0 THEN
        IF n > 1 THEN  -- widen the one-element arrays
            IF cardinality(e_tenant) = 1 THEN e_tenant := array_fill(e_tenant[1], ARRAY[n]); END IF;
            IF cardinality(e_stream) = 1 THEN e_stream := array_fill(e_stream[1], ARRAY[n]); END IF;
            IF cardinality(e_type) = 1 THEN e_type := array_fill(e_type[1], ARRAY[n]); END IF;
            IF cardinality(e_schema) = 1 THEN e_schema := array_fill(e_schema[1], ARRAY[n]); END IF;
            IF cardinality(e_actor_user) = 1 THEN e_actor_user := array_fill(e_actor_user[1], ARRAY[n]); END IF;
            IF cardinality(e_actor_client) = 1 THEN e_actor_client := array_fill(e_actor_client[1], ARRAY[n]); END IF;
            IF cardinality(e_clock) = 1 THEN e_clock := array_fill(e_clock[1], ARRAY[n]); END IF;
            IF cardinality(e_meta) = 1 THEN e_meta := array_fill(e_meta[1], ARRAY[n]); END IF;
            IF cardinality(e_retention) = 1 THEN e_retention := array_fill(e_retention[1], ARRAY[n]); END IF;
            IF cardinality(e_pkey) = 1 THEN e_pkey := array_fill(e_pkey[1], ARRAY[n]); END IF;
        END IF;
        -- a stream's new head is its last event; every tenant written exists from now on
        WITH ev AS (
            SELECT * FROM unnest(e_id, e_tenant, e_stream, e_version, e_type, e_schema, e_actor_user,
                                 e_actor_client, e_clock, e_payload, e_meta, e_retention, e_prev_hash, e_hash, e_pkey)
                     WITH ORDINALITY AS x(id, tenant, stream, version, type, schema, actor_user, actor_client,
                                          clock, payload, meta, retention, prev_hash, hash, pkey, i)
        ), ins AS (
            INSERT INTO events (position, id, tenant, stream, version, type, schema, time_us, actor_user,
                                actor_client, clock, payload, meta, retention, prev_hash, hash, pkey)
            SELECT p_position + i, id, tenant, stream, version, type, schema, p_time_us, actor_user,
                   actor_client, clock, payload, meta, retention, prev_hash, hash, pkey
            FROM ev
        ), tn AS (
            INSERT INTO tenants (id, created_us) SELECT DISTINCT tenant, p_time_us FROM ev
            ON CONFLICT (id) DO NOTHING
        )
        INSERT INTO streams (tenant, stream, version, head_hash, anchor_version, anchor_hash, updated_us)
        SELECT DISTINCT ON (tenant, stream) tenant, stream, version, hash, 0, '\x__GENESIS__'::bytea, p_time_us
        FROM ev ORDER BY tenant, stream, version DESC
        ON CONFLICT (tenant, stream) DO UPDATE
        SET version = EXCLUDED.version, head_hash = EXCLUDED.head_hash, updated_us = EXCLUDED.updated_us;
        UPDATE log_head SET position = p_position + n, time_us = p_time_us WHERE id = 1;
        -- delivered to LISTENers only if and when this transaction commits
        PERFORM pg_notify('syncline_log', (p_position + n)::text);
        r_position := p_position + n;
        r_time_us := p_time_us;
    END IF;
    IF cardinality(i_tenant) > 0 THEN
        INSERT INTO idempotency (tenant, key, fingerprint, result, created_us)
        SELECT t, k, f, r, p_time_us FROM unnest(i_tenant, i_key, i_fingerprint, i_result) AS x(t, k, f, r);
    END IF;
END
$fn$
""".replace("__GENESIS__", GENESIS_HEX)


def _has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in sa.inspect(op.get_bind()).get_columns(table))


def upgrade() -> None:
    # (columns already there are kept: a database whose version row was set back by hand,
    # as tests that rebuild an older revision do, migrates forward again)
    if not _has_column("events", "pkey"):
        op.add_column("events", sa.Column("pkey", sa.BigInteger, nullable=True))
    if not _has_column("bus_partitions", "consumed"):
        op.add_column("bus_partitions", sa.Column("consumed", sa.BigInteger, nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS syncline_append" + OLD_SIGNATURE)
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS syncline_append")
        spec = importlib.util.spec_from_file_location("m0004", Path(__file__).with_name("0004_pg_append_function.py"))
        m0004 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m0004)
        op.execute(m0004.CREATE)
    with op.batch_alter_table("events") as batch:
        batch.drop_column("pkey")
    with op.batch_alter_table("bus_partitions") as batch:
        batch.drop_column("consumed")
