"""The event store on SQLAlchemy 2 async Core: one implementation for SQLite and PostgreSQL.

The dialect differences (engines, pragmas, the cross-process doorbell) live in
store/sqlite.py and store/postgres.py; everything that decides what is written
lives here and in store/planning.py.
"""
from __future__ import annotations

from time import perf_counter
from typing import Any, Callable, Sequence

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from syncline.engine.errors import StoreUnavailable, UnknownTenant
from syncline.engine.events import AppendResult, NewEvent, RecordedEvent, StreamWrite, check_stream, check_tenant
from syncline.engine.filters import EventFilter, prefix_to_like
from syncline.engine.ports import ChainBreak, LogPage, PruneReport, VerifyReport
from syncline.engine.upcasting import UpcasterRegistry

from .appender import GroupCommitter, Pending
from .base import StoreBase, check_chain, check_scope, wall_clock_us
from .doorbell import LocalDoorbell
from .errors import db_errors, map_db_error
from .read_queries import COLS, HEAD_SQL, CompiledQuery, QueryCache
from .rows import DEFAULT_MAX_PAYLOAD, PreparedAppend, decode_rows, prepare
from .schema import checkpoints, events, idempotency, log_head, prune_log, snapshots, streams, tenants

DOC_PREFIX = "doc/"
_VERIFY_COLS = COLS + [events.c.prev_hash, events.c.hash]


class SqlEventStore(StoreBase):
    """Append-only, tenant-scoped event log on SQLite or PostgreSQL.

    Appends go through the group committer to ``writer`` (store/sqlite_writer.py,
    store/pg_writer.py), the one hot path written against the raw driver. Everything
    else is SQLAlchemy Core: reads on ``read_engine``, admin writes (checkpoints,
    snapshots, pruning) on ``write_engine``; on PostgreSQL both are one engine.
    """

    def __init__(
        self,
        write_engine: AsyncEngine,
        read_engine: AsyncEngine,
        writer: Any,
        *,
        doorbell: Any | None = None,
        upcasters: UpcasterRegistry | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock_us: Callable[[], int] = wall_clock_us,
        poll_interval_s: float = 1.0,
        max_batch_events: int = 4096,
        on_close: Callable[[], Any] | None = None,
        sqlite_reader: Any | None = None,
        audit_key: Any | None = None,
        audit_checkpoint_every: int = 1000,
        page_engine: AsyncEngine | None = None,
        page_disconnects: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._w = write_engine
        self._writer = writer
        self._r = read_engine
        # Hot raw-driver reads (log pages, streams) on PostgreSQL: a pool without the
        # pre-ping (store/postgres.py create_page_engine); a page read that fails with one
        # of ``page_disconnects`` drops its connection and is read again once.
        self._pages = page_engine or read_engine
        self._page_disconnects = page_disconnects
        self.dialect = write_engine.dialect.name
        self.doorbell = doorbell or LocalDoorbell()
        self.upcasters = upcasters
        self.max_payload = max_payload
        self._clock_us = clock_us
        self.poll_interval_s = poll_interval_s
        self._known_tenants: set[str] = set()
        self._committer: GroupCommitter[PreparedAppend] = GroupCommitter(
            self._commit, max_batch_events=max_batch_events
        )
        self._on_close = on_close
        self._sqlite_reader = sqlite_reader
        self._queries = QueryCache(read_engine.dialect)
        # Signed audit checkpoints (store/audit.py): only with a private key, which lives
        # outside the database (SYNCLINE_AUDIT_KEY_FILE / SYNCLINE_AUDIT_KEY).
        self.signer: Any | None = None
        if audit_key is not None:
            from .audit import AuditSigner

            self.signer = AuditSigner(self, audit_key, every=audit_checkpoint_every)

    @property
    def engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        """(write, read) engines, for components that keep their own tables in the log's
        database and share its transactions (the event bus, store/bus/). On PostgreSQL
        both are one engine."""
        return self._w, self._r

    # ------------------------------------------------------------------ writes

    async def append_many(
        self, tenant: str, writes: Sequence[StreamWrite], *, idempotency_key: str | None = None
    ) -> AppendResult:
        started = perf_counter()
        prepared = prepare(tenant, self._stamped(writes), idempotency_key, self.max_payload)
        try:
            return await self._committer.submit(prepared, prepared.event_count)
        finally:
            if self._observe is not None:
                self._observe("append", perf_counter() - started)

    async def append(
        self,
        tenant: str,
        stream: str,
        events_: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        # StoreBase.append, one coroutine shorter: single appends are the hot path.
        started = perf_counter()
        writes = (StreamWrite(stream, tuple(events_), expected_version),)
        if self._trace_meta is not None:
            writes = self._stamped(writes)
        prepared = prepare(tenant, writes, idempotency_key, self.max_payload)
        try:
            return await self._committer.submit(prepared, prepared.event_count)
        finally:
            if self._observe is not None:
                self._observe("append", perf_counter() - started)

    async def _commit(self, batch: list[Pending[PreparedAppend]]) -> None:
        started = perf_counter()
        try:
            plan = await self._writer.commit([p.item for p in batch], self._clock_us)
        except Exception as e:
            err = map_db_error(e)
            if len(batch) == 1 or isinstance(err, StoreUnavailable):
                for p in batch:
                    p.future.set_exception(err)
                return
            # Something in one call broke the whole transaction (a caller-chosen event
            # id that already exists, say). Retry each call alone so only it fails.
            for p in batch:
                await self._commit([p])
            return
        for p, outcome in zip(batch, plan.outcomes):
            if isinstance(outcome, Exception):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)
        if self._observe is not None:
            self._observe("commit", perf_counter() - started)
        if plan.values:
            self._known_tenants.update(plan.tenants)
            if self.signer is not None:
                self.signer.note(plan.values)
            await self.doorbell.ring(batch[0].item.tenant, plan.last_position)

    # ------------------------------------------------------------------- reads

    async def _fetch_page(
        self, query: CompiledQuery, given: dict[str, Any], *, read_head: bool = False
    ) -> tuple[int | None, list[RecordedEvent]]:
        """Run a compiled events query on the raw driver and decode the rows.

        The hot read path: the SQL was compiled once (store/read_queries.py), the driver
        runs it. Row processing through SQLAlchemy and aiosqlite cost about 40% of a
        full read (benchmarks/store_append.py). With ``read_head`` the log head is read
        first, on the same connection, and bound as ``head``. On SQLite all of it and
        the decoding run in a reader thread: one hop of the event loop per page.
        """
        if read_head:
            given["head"] = None  # filled in below, or by the reader thread
        params = query.params(**given)
        head_at = query.names.index("head") if read_head else None
        known = {name: given[name] for name in query.left_out}  # bound, so not selected
        if self._sqlite_reader is not None:
            return await self._sqlite_reader.fetch_page(query.sql, params, self.upcasters, head_at, known)
        both = query.with_head if read_head else None
        for again in (True, False):
            async with self._pages.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                try:
                    if both is not None:  # PostgreSQL: page and head in one query
                        rows = await raw.fetch(both.sql, *both.params(**given))
                        head = rows[0][-1]
                        if rows[0][0] is None:  # the LEFT JOIN's row: no events up to the head
                            return head, []
                        if any(rows[k][0] >= rows[k + 1][0] for k in range(len(rows) - 1)):
                            rows.sort(key=lambda r: r[0])  # (never seen: the join keeps the page's order)
                        return head, decode_rows(rows, self.upcasters, trailing_head=True, **known)
                    head = None
                    if head_at is not None:
                        head = params[head_at] = await raw.fetchval(HEAD_SQL)
                    return head, decode_rows(await raw.fetch(query.sql, *params), self.upcasters, **known)
                except self._page_disconnects:
                    await conn.invalidate()
                    if not again:
                        raise
        raise AssertionError("unreachable")

    async def _fetch_rows(self, query: CompiledQuery, given: dict[str, Any]) -> list[Any]:
        """Run a compiled query on the raw driver; its rows, not decoded."""
        params = query.params(**given)
        if self._sqlite_reader is not None:
            return await self._sqlite_reader.fetch_rows(query.sql, params)
        for again in (True, False):
            async with self._pages.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                try:
                    return await raw.fetch(query.sql, *params)
                except self._page_disconnects:
                    await conn.invalidate()
                    if not again:
                        raise
        raise AssertionError("unreachable")

    @db_errors
    async def read_stream(
        self, tenant: str, stream: str, *, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        check_tenant(tenant)
        check_stream(stream)
        given = {"tenant": tenant, "stream": stream, "from_version": from_version}
        if limit is not None:
            given["limit"] = limit
        started = perf_counter()
        page = (await self._fetch_page(self._queries.stream(limit is not None), given))[1]
        if self._observe is not None:
            self._observe("read", perf_counter() - started)
        return page

    @db_errors
    async def stream_version(self, tenant: str, stream: str) -> int:
        check_tenant(tenant)
        check_stream(stream)
        async with self._r.connect() as conn:
            v = (
                await conn.execute(
                    select(streams.c.version).where(streams.c.tenant == tenant, streams.c.stream == stream)
                )
            ).scalar()
        return v or 0

    @db_errors
    async def stream_versions(self, tenant: str, names: Sequence[str]) -> dict[str, int]:
        """Versions of several streams in one query (absent streams are left out)."""
        check_tenant(tenant)
        found: dict[str, int] = {}
        names = sorted(set(names))
        async with self._r.connect() as conn:
            for i in range(0, len(names), 500):
                rows = await conn.execute(
                    select(streams.c.stream, streams.c.version).where(
                        streams.c.tenant == tenant, streams.c.stream.in_(names[i:i + 500])
                    )
                )
                found.update({r[0]: r[1] for r in rows})
        return found

    @db_errors
    async def head_position(self) -> int:
        async with self._r.connect() as conn:
            return (await conn.execute(select(log_head.c.position).where(log_head.c.id == 1))).scalar_one()

    @db_errors
    async def read_log(
        self,
        tenant: str | None,
        *,
        after: int = 0,
        limit: int = 1000,
        filter: EventFilter | None = None,
        all_tenants: bool = False,
        partitions: tuple[int, tuple[int, ...]] | None = None,
    ) -> LogPage:
        """A page of the log. ``partitions`` = (P, owned partitions) narrows it to the events
        a consumer group member holding those partitions of P needs (bus/reader.py),
        plus any written before the partition key was stored; ``next_after`` still
        says how far the page covers every partition in ``owned``."""
        check_scope(tenant, all_tenants)
        limit = max(1, min(int(limit), 10_000))
        query = self._queries.log_page(tenant is not None, filter, limit, partitions)
        python_filter, chunk = query.python_filter, query.chunk
        given: dict[str, Any] = {"tenant": tenant} if tenant is not None else {}
        # The head is read first (in the same hop as the first page): every position up
        # to it is committed (positions are gapless and in commit order), so
        # "position <= head" is a consistent window and a filtered page may safely
        # advance the cursor to the head.
        head: int | None = None
        found: list[RecordedEvent] = []
        cursor = after
        scanned = 0
        started = perf_counter()
        while True:
            given["cursor"] = cursor
            if head is None:
                head, batch = await self._fetch_page(query, given, read_head=True)
            else:
                given["head"] = head
                _, batch = await self._fetch_page(query, given)
            if not batch:
                cursor = max(cursor, head)
                break
            scanned += len(batch)
            if python_filter:
                for ev in batch:
                    cursor = ev.position
                    if filter.matches(ev):
                        found.append(ev)
                        if len(found) == limit:
                            break
            else:
                found.extend(batch)
                cursor = batch[-1].position
            if len(batch) < chunk and len(found) < limit:
                cursor = head  # nothing else matches up to the head
                break
            if not (cursor < head and len(found) < limit and scanned < limit * 20):
                break
        if self._observe is not None:
            self._observe("read", perf_counter() - started)
        return LogPage(tuple(found), max(cursor, after), head)

    reads_partitions = True  # read_log takes ``partitions`` (the bus's reader asks)

    @db_errors
    async def position_at_time(self, time_us: int) -> int:
        """The last position committed at or before ``time_us`` (0 if none)."""
        async with self._r.connect() as conn:
            p = (await conn.execute(select(func.max(events.c.position)).where(events.c.time_us <= time_us))).scalar()
        return p or 0

    # ---------------------------------------------------- checkpoints, snapshots

    @db_errors
    async def save_checkpoint(self, name: str, tenant: str, position: int) -> None:
        """Durable subscription position; tenant ``"*"`` is a platform consumer."""
        now = self._clock_us()
        ins = pg_insert(checkpoints) if self.dialect == "postgresql" else sqlite_insert(checkpoints)
        stmt = ins.values(name=name, tenant=tenant, position=position, updated_us=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name", "tenant"], set_={"position": position, "updated_us": now}
        )
        async with self._w.begin() as conn:
            await conn.execute(stmt)

    @db_errors
    async def load_checkpoint(self, name: str, tenant: str) -> int | None:
        async with self._r.connect() as conn:
            return (
                await conn.execute(
                    select(checkpoints.c.position).where(checkpoints.c.name == name, checkpoints.c.tenant == tenant)
                )
            ).scalar()

    @db_errors
    async def save_snapshot(
        self, tenant: str, stream: str, kind: str, position: int, data: bytes, checksum: str
    ) -> None:
        check_tenant(tenant)
        check_stream(stream)
        ins = pg_insert(snapshots) if self.dialect == "postgresql" else sqlite_insert(snapshots)
        stmt = ins.values(
            tenant=tenant, stream=stream, kind=kind, position=position, data=data, checksum=checksum,
            created_us=self._clock_us(),
        ).on_conflict_do_nothing(index_elements=["tenant", "stream", "kind", "position"])
        async with self._w.begin() as conn:
            await conn.execute(stmt)

    @db_errors
    async def load_snapshot(
        self, tenant: str, stream: str, kind: str, *, at_or_before: int | None = None
    ) -> tuple[int, bytes, str] | None:
        """The newest snapshot (position, data, checksum) at or before a position."""
        check_tenant(tenant)
        # The raw read path, like events. Through SQLAlchemy and aiosqlite this took a
        # pooled connection of its own (opened on first use: a thread and pragmas), a
        # BEGIN, the query and a reset-on-return rollback, a thread hop each; here it
        # is one hop on SQLite. (Most of the wait seen right after a big read_stream
        # was that read's result being freed inside the next hop: see
        # SqliteReader._run.)
        query = self._queries.snapshot(at_or_before is not None)
        given = {"tenant": tenant, "stream": stream, "kind": kind, "at_or_before": at_or_before}
        rows = await self._fetch_rows(query, given)
        if not rows:
            return None
        position, data, checksum = rows[0]
        return position, bytes(data), checksum

    # ------------------------------------------------------------------- admin

    @db_errors
    async def tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        async with self._r.connect() as conn:
            found = (await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant))).scalar() is not None
        if found:
            self._known_tenants.add(tenant)
        return found

    @db_errors
    async def list_tenants(self) -> list[str]:
        async with self._r.connect() as conn:
            return list((await conn.execute(select(tenants.c.id).order_by(tenants.c.id))).scalars())

    @db_errors
    async def list_streams(self, tenant: str, *, prefix: str = "", limit: int = 10_000) -> list[tuple[str, int]]:
        """(stream, version) of a tenant's streams, by name."""
        check_tenant(tenant)
        q = select(streams.c.stream, streams.c.version).where(streams.c.tenant == tenant)
        if prefix:
            q = q.where(streams.c.stream.like(prefix_to_like(prefix), escape="\\"))
        async with self._r.connect() as conn:
            rows = (await conn.execute(q.order_by(streams.c.stream).limit(limit))).all()
        return [(r[0], r[1]) for r in rows]

    @db_errors
    async def doc_bytes(self, tenant: str) -> int:
        """Stored payload bytes of the tenant's Yjs document updates (``crdt.update`` on
        ``doc/…``): what the per-tenant document quota counts (api/quota.py)."""
        check_tenant(tenant)
        q = select(func.coalesce(func.sum(func.length(events.c.payload)), 0)).where(
            events.c.tenant == tenant, events.c.stream.like(prefix_to_like(DOC_PREFIX), escape="\\"),
            events.c.type == "crdt.update")
        async with self._r.connect() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    @db_errors
    async def verify(self, tenant: str | None = None, stream: str | None = None) -> VerifyReport:
        """Walk the hash chain of every stream (or one tenant, or one stream)."""
        if tenant is not None:
            check_tenant(tenant)
            if not await self.tenant_exists(tenant):
                raise UnknownTenant(f"no tenant {tenant!r}", tenant=tenant)
        q = select(streams)
        if tenant is not None:
            q = q.where(streams.c.tenant == tenant)
        if stream is not None:
            q = q.where(streams.c.stream == check_stream(stream))
        breaks: list[ChainBreak] = []
        n_streams = n_events = 0
        async with self._r.connect() as conn:
            heads = (await conn.execute(q.order_by(streams.c.tenant, streams.c.stream))).mappings().all()
            for h in heads:
                rows = (
                    await conn.execute(
                        select(*_VERIFY_COLS)
                        .where(events.c.tenant == h["tenant"], events.c.stream == h["stream"])
                        .order_by(events.c.version)
                    )
                ).mappings().all()
                n_streams += 1
                n_events += len(rows)
                breaks.extend(check_chain(h, rows))
            # Events of a stream that has no streams row are outside every chain walked above.
            orphans = select(events.c.tenant, events.c.stream, func.min(events.c.version),
                             func.min(events.c.position), func.count()).where(
                ~select(streams.c.version).where(streams.c.tenant == events.c.tenant,
                                                 streams.c.stream == events.c.stream).exists())
            if tenant is not None:
                orphans = orphans.where(events.c.tenant == tenant)
            if stream is not None:
                orphans = orphans.where(events.c.stream == stream)
            for t, s, v, p, n in (await conn.execute(orphans.group_by(events.c.tenant, events.c.stream))).all():
                n_events += n
                breaks.append(ChainBreak(t, s, v, p, "stream_row_missing"))
        return VerifyReport(n_streams, n_events, tuple(breaks))

    @db_errors
    async def prune(
        self,
        *,
        retention_s: float = 7 * 86400,
        now_us: int | None = None,
        respect_checkpoints: bool = True,
        tenant: str | None = None,
    ) -> PruneReport:
        """Delete ``standard`` events older than the retention period.

        Only a prefix of each stream is pruned, so the rest of the chain still links to
        the stream's anchor (the hash of the last pruned event). ``critical`` events are
        never pruned, ``doc/`` updates only where a document snapshot covers them, and
        nothing past the lowest durable checkpoint is pruned unless
        ``respect_checkpoints`` is False. Positions are never reused: they come from
        log_head, which pruning does not touch.
        """
        if tenant is not None and not await self.tenant_exists(check_tenant(tenant)):
            raise UnknownTenant(f"no tenant {tenant!r}", tenant=tenant)
        cutoff = (now_us if now_us is not None else self._clock_us()) - int(retention_s * 1_000_000)
        async with self._w.begin() as conn:
            await conn.execute(select(log_head.c.position).where(log_head.c.id == 1).with_for_update())
            limit_pos = None
            details: dict[str, Any] = {}
            if respect_checkpoints:
                from .bus.groups import refresh_mirrors  # (store.bus builds on this module)

                # Bus groups mirror their low watermark here; bring the mirrors up to date
                # first, and report those no group owns any more (store/bus/groups.py).
                details["unowned_checkpoints"] = await refresh_mirrors(conn)
                c = checkpoints.c
                lowest = (await conn.execute(
                    select(c.name, c.tenant, c.position).order_by(c.position, c.name, c.tenant).limit(1))).first()
                if lowest is not None:
                    limit_pos = lowest.position
                    details["lowest_checkpoint"] = {"name": lowest.name, "tenant": lowest.tenant,
                                                    "position": lowest.position}
            expired = and_(events.c.retention == "standard", events.c.time_us < cutoff)
            if tenant is not None:
                expired = and_(expired, events.c.tenant == tenant)
            held_back = 0
            candidate = expired
            if limit_pos is not None:
                held_back = (
                    await conn.execute(select(func.count()).where(expired, events.c.position > limit_pos))
                ).scalar_one()
                candidate = and_(expired, events.c.position <= limit_pos)
            cand_streams = (
                await conn.execute(
                    select(events.c.tenant, events.c.stream, func.max(events.c.version))
                    .where(candidate)
                    .group_by(events.c.tenant, events.c.stream)
                )
            ).all()
            deleted = touched = 0
            for t, s, _ in cand_streams:
                stream_candidate = candidate
                if s.startswith(DOC_PREFIX):
                    # A document's updates are its only copy until a snapshot covers them.
                    covered = (
                        await conn.execute(
                            select(func.max(snapshots.c.position)).where(
                                snapshots.c.tenant == t, snapshots.c.stream == s, snapshots.c.kind == "ydoc"
                            )
                        )
                    ).scalar() or 0
                    stream_candidate = and_(candidate, events.c.position <= covered)
                # The first event of the stream that must stay bounds the prunable prefix.
                barrier = (
                    await conn.execute(
                        select(func.min(events.c.version)).where(
                            events.c.tenant == t, events.c.stream == s, ~stream_candidate
                        )
                    )
                ).scalar()
                upto = select(func.max(events.c.version)).where(
                    events.c.tenant == t, events.c.stream == s, stream_candidate
                )
                if barrier is not None:
                    upto = upto.where(events.c.version < barrier)
                last = (await conn.execute(upto)).scalar()
                if last is None:
                    continue
                anchor, anchor_position = (
                    await conn.execute(
                        select(events.c.hash, events.c.position).where(
                            events.c.tenant == t, events.c.stream == s, events.c.version == last
                        )
                    )
                ).one()
                first = (
                    await conn.execute(
                        select(func.min(events.c.version)).where(events.c.tenant == t, events.c.stream == s)
                    )
                ).scalar_one()
                res = await conn.execute(
                    delete(events).where(events.c.tenant == t, events.c.stream == s, events.c.version <= last)
                )
                await conn.execute(
                    update(streams)
                    .where(streams.c.tenant == t, streams.c.stream == s)
                    .values(anchor_version=last, anchor_hash=anchor)
                )
                # The prune record verify matches the anchor and the deleted count against.
                await conn.execute(
                    insert(prune_log).values(
                        time_us=self._clock_us(), tenant=t, stream=s, from_version=first, to_version=last,
                        count=res.rowcount or 0, anchor_position=anchor_position, anchor_hash=anchor,
                    )
                )
                deleted += res.rowcount or 0
                touched += 1
            await conn.execute(delete(idempotency).where(idempotency.c.created_us < cutoff))
        if deleted and self.signer is not None:
            await self.signer.sync()  # sign the pruned state: its count of deleted events
        if held_back and "lowest_checkpoint" in details:
            details["held_back_by"] = details["lowest_checkpoint"]
        return PruneReport(deleted, touched, held_back, details)

    async def close(self) -> None:
        await self._committer.close()
        if self.signer is not None:
            await self.signer.close()  # signs what was committed since the last checkpoint
        await self._writer.close()
        if self._sqlite_reader is not None:
            self._sqlite_reader.close()
        await self.doorbell.close()
        if self._on_close is not None:
            await self._on_close()
        await self._w.dispose()
        if self._r is not self._w:
            await self._r.dispose()
        if self._pages is not self._r:
            await self._pages.dispose()

