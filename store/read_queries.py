"""The SQL of the hot reads (a page of the log, a stream), compiled once per shape.

Filters are written once, as SQLAlchemy expressions; compiling one costs about as
much as decoding a few hundred rows, so each shape (dialect, scoped or not, filter,
page size) is compiled once and cached. What changes from page to page (tenant,
cursor, head, stream) is a named bind parameter (compiled with a placeholder value), filled in by ``params``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

from sqlalchemy import bindparam, or_, select, true
from sqlalchemy.engine import Dialect

from syncline.engine.filters import EventFilter, glob_to_like, prefix_to_like

from .rows import READ_COLUMNS, read_columns
from .schema import events, log_head, snapshots

COLS = [events.c[name] for name in READ_COLUMNS]
HEAD_SQL = "SELECT position FROM log_head WHERE id = 1"
_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    sql: str
    names: tuple[str, ...]  # the driver's positional parameters, by bind name
    values: dict[str, Any]  # values compiled in (filter patterns, limits)
    python_filter: bool = False  # part of the filter must be checked on decoded events
    chunk: int = 0  # rows per query (read_log pages)
    # READ_COLUMNS the query does not select because its WHERE clause binds them (same
    # names as the bind parameters); store.rows.decode_rows takes their values instead.
    left_out: tuple[str, ...] = ()
    # PostgreSQL log pages: the same page and the log head in one query (no ``head``
    # parameter; every row ends with the head; no events: one row of NULLs and the head).
    with_head: "CompiledQuery | None" = None

    def params(self, **given: Any) -> list[Any]:
        values = {**self.values, **given}
        return [values[n] for n in self.names]


class QueryCache:
    """A bounded cache of compiled queries; unhashable keys (a filter holding a list)
    are compiled every time."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._hits: dict[Hashable, CompiledQuery] = {}

    def compile(self, q: Any, **extra: Any) -> CompiledQuery:
        c = q.compile(dialect=self._dialect, compile_kwargs={"render_postcompile": True})
        return CompiledQuery(c.string, tuple(c.positiontup), dict(c.params), **extra)

    def get(self, key: Hashable, build: Callable[[], CompiledQuery]) -> CompiledQuery:
        try:
            hit = self._hits.get(key)
        except TypeError:
            return build()
        if hit is None:
            if len(self._hits) >= _CACHE_SIZE:
                self._hits.clear()
            hit = self._hits[key] = build()
        return hit

    def log_page(
        self, scoped: bool, f: EventFilter | None, limit: int, partitions: tuple[int, tuple[int, ...]] | None = None,
    ) -> CompiledQuery:
        """Events with cursor < position <= head, in position order; binds ``tenant``
        (when scoped), ``cursor`` and ``head``. With ``partitions`` = (P, owned), only
        events whose bus partition key (``pkey``, migration 0006) falls in ``owned``
        modulo P, and those without a key (written before it), which the bus splits
        itself."""

        def build() -> CompiledQuery:
            conds, python_filter = sql_filter(scoped, f)
            if partitions is not None:
                count, owned = partitions
                pkey = events.c.pkey
                conds.append(or_(pkey.is_(None), (pkey % count).in_(list(owned))))
            chunk = limit if not python_filter else min(limit * 4, 10_000)
            position = events.c.position
            left_out = ("tenant",) if scoped else ()

            def page(head: Any) -> Any:
                return (
                    select(*_columns(left_out))
                    .where(position > bindparam("cursor", 0, type_=position.type), position <= head, *conds)
                    .order_by(events.c.position)
                    .limit(chunk)
                )

            with_head = None
            if self._dialect.name == "postgresql":
                # The head and the page in one round trip, from one snapshot: the page is
                # a LATERAL subquery of the log_head row, LEFT JOINed so that an empty
                # page still returns the head. No ORDER BY outside: the caller checks the
                # rows' order (a nested loop keeps the subquery's), sorting only if needed.
                h = log_head.alias("h")
                e = page(h.c.position).lateral("e")
                q = select(*e.c, h.c.position.label("head")).select_from(h.outerjoin(e, true())).where(h.c.id == 1)
                with_head = self.compile(q, python_filter=python_filter, chunk=chunk, left_out=left_out)
            q = page(bindparam("head", 0, type_=position.type))
            return self.compile(q, python_filter=python_filter, chunk=chunk, left_out=left_out, with_head=with_head)

        return self.get(("log", scoped, f, limit, partitions), build)

    def stream(self, limited: bool) -> CompiledQuery:
        """One stream from a version; binds ``tenant``, ``stream``, ``from_version``
        and (when ``limited``) ``limit``."""

        def build() -> CompiledQuery:
            left_out = ("tenant", "stream")
            q = (
                select(*_columns(left_out))
                .where(
                    events.c.tenant == bindparam("tenant", ""),
                    events.c.stream == bindparam("stream", ""),
                    events.c.version >= bindparam("from_version", 1),
                )
                .order_by(events.c.version)
            )
            if limited:
                q = q.limit(bindparam("limit", 0))
            return self.compile(q, left_out=left_out)

        return self.get(("stream", limited), build)

    def snapshot(self, bounded: bool) -> CompiledQuery:
        """The newest snapshot (position, data, checksum) of a stream and kind; binds
        ``tenant``, ``stream``, ``kind`` and (when ``bounded``) ``at_or_before``."""

        def build() -> CompiledQuery:
            s = snapshots.c
            q = select(s.position, s.data, s.checksum).where(
                s.tenant == bindparam("tenant", ""), s.stream == bindparam("stream", ""),
                s.kind == bindparam("kind", ""),
            )
            if bounded:
                q = q.where(s.position <= bindparam("at_or_before", 0, type_=s.position.type))
            return self.compile(q.order_by(s.position.desc()).limit(1))

        return self.get(("snapshot", bounded), build)


def _columns(left_out: tuple[str, ...]) -> list:
    return [events.c[name] for name in read_columns(left_out)]


def sql_filter(scoped: bool, f: EventFilter | None) -> tuple[list, bool]:
    """WHERE terms for a log read (the tenant as bind parameter ``tenant``), and whether
    part of the filter is left for Python (payload predicates, globs LIKE cannot say)."""
    conds: list = []
    if scoped:
        conds.append(events.c.tenant == bindparam("tenant", ""))
    if f is None or f.is_empty:
        return conds, False
    python_needed = bool(f.where)
    stream_conds = [events.c.stream.like(prefix_to_like(p), escape="\\") for p in f.stream_prefixes]
    if f.streams:
        stream_conds.append(events.c.stream.in_(f.streams))
    if stream_conds:
        conds.append(or_(*stream_conds))
    if f.types:
        likes = [glob_to_like(t) for t in f.types]
        if all(like is not None for like in likes):
            conds.append(or_(*[events.c.type.like(like, escape="\\") for like in likes]))
        else:
            python_needed = True
    return conds, python_needed
