"""An in-memory event store: for tests, and held to the same conformance suite as
the SQL stores (tests/store/). It plans appends with the same log kernel
(engine/logkernel.py, through store/planning.py) and stores the same rows, so hashes
and positions are identical. (The simulator's synchronous log is
store/memory_sync_log.py, on the same kernel.)"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Sequence

from syncline.engine.errors import UnknownTenant
from syncline.engine.events import AppendResult, RecordedEvent, StreamWrite, check_stream, check_tenant
from syncline.engine.filters import EventFilter
from syncline.engine.hashchain import GENESIS
from syncline.engine.ports import LogPage, PruneReport, VerifyReport
from syncline.engine.upcasting import UpcasterRegistry

from .base import StoreBase, check_chain, check_scope, wall_clock_us
from .doorbell import LocalDoorbell
from .planning import Head, plan_batch
from .rows import DEFAULT_MAX_PAYLOAD, READ_COLUMNS, decode_row, prepare


class MemoryEventStore(StoreBase):
    def __init__(
        self,
        *,
        upcasters: UpcasterRegistry | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock_us: Callable[[], int] = wall_clock_us,
        poll_interval_s: float = 1.0,
        doorbell: Any | None = None,
    ) -> None:
        self.dialect = "memory"
        self.doorbell = doorbell or LocalDoorbell()
        self.upcasters = upcasters
        self.max_payload = max_payload
        self.poll_interval_s = poll_interval_s
        self._clock_us = clock_us
        self._positions: list[int] = []  # sorted; parallel to _rows
        self._rows: list[dict[str, Any]] = []
        self._streams: dict[tuple[str, str], dict[str, Any]] = {}
        self._stream_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._keys: dict[tuple[str, str], tuple[bytes, bytes, int]] = {}
        self._tenants: set[str] = set()
        self._head = 0
        self._head_time = 0
        self._checkpoints: dict[tuple[str, str], int] = {}
        self._snapshots: dict[tuple[str, str, str], dict[int, tuple[bytes, str]]] = {}

    async def append_many(
        self, tenant: str, writes: Sequence[StreamWrite], *, idempotency_key: str | None = None
    ) -> AppendResult:
        call = prepare(tenant, writes, idempotency_key, self.max_payload)
        heads = {
            (tenant, w.stream): Head(s["version"], s["head_hash"])
            for w in call.writes
            if (s := self._streams.get((tenant, w.stream))) is not None
        }
        keys = {}
        if idempotency_key and (k := self._keys.get((tenant, idempotency_key))):
            keys[(tenant, idempotency_key)] = (k[0], k[1])
        time_us = max(self._clock_us(), self._head_time)
        plan = plan_batch([call], heads, keys, self._head, time_us)
        outcome = plan.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        for row in plan.rows:
            self._rows.append(row)
            self._positions.append(row["position"])
            self._stream_rows.setdefault((row["tenant"], row["stream"]), []).append(row)
        for (t, s), h in plan.heads.items():
            head = self._streams.setdefault(
                (t, s), {"tenant": t, "stream": s, "anchor_version": 0, "anchor_hash": GENESIS}
            )
            head.update(version=h.version, head_hash=h.hash)
        for k in plan.new_keys:
            self._keys[(k["tenant"], k["key"])] = (k["fingerprint"], k["result"], k["created_us"])
        if plan.rows:
            self._tenants.update(plan.tenants)
            self._head, self._head_time = plan.last_position, time_us
            await self.doorbell.ring(tenant, self._head)
        return outcome

    def _decode(self, row: dict[str, Any]) -> RecordedEvent:
        return decode_row([row[c] for c in READ_COLUMNS], self.upcasters)

    async def read_stream(
        self, tenant: str, stream: str, *, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        check_tenant(tenant)
        check_stream(stream)
        rows = [r for r in self._stream_rows.get((tenant, stream), ()) if r["version"] >= from_version]
        return [self._decode(r) for r in rows[:limit]]

    async def stream_version(self, tenant: str, stream: str) -> int:
        check_tenant(tenant)
        check_stream(stream)
        s = self._streams.get((tenant, stream))
        return s["version"] if s else 0

    async def stream_versions(self, tenant: str, names: Sequence[str]) -> dict[str, int]:
        check_tenant(tenant)
        return {n: h["version"] for n in set(names) if (h := self._streams.get((tenant, n))) is not None}

    async def head_position(self) -> int:
        return self._head

    async def read_log(
        self,
        tenant: str | None,
        *,
        after: int = 0,
        limit: int = 1000,
        filter: EventFilter | None = None,
        all_tenants: bool = False,
    ) -> LogPage:
        check_scope(tenant, all_tenants)
        limit = max(1, min(int(limit), 10_000))
        head = self._head
        found: list[RecordedEvent] = []
        cursor = after
        for row in self._rows[bisect.bisect_right(self._positions, after):]:
            if len(found) == limit:
                break
            cursor = row["position"]
            if tenant is not None and row["tenant"] != tenant:
                continue
            ev = self._decode(row)
            if filter is None or filter.matches(ev):
                found.append(ev)
        else:
            cursor = head
        return LogPage(tuple(found), max(cursor, after), head)

    async def position_at_time(self, time_us: int) -> int:
        best = 0
        for row in self._rows:
            if row["time_us"] <= time_us:
                best = row["position"]
        return best

    async def save_checkpoint(self, name: str, tenant: str, position: int) -> None:
        self._checkpoints[(name, tenant)] = position

    async def load_checkpoint(self, name: str, tenant: str) -> int | None:
        return self._checkpoints.get((name, tenant))

    async def save_snapshot(
        self, tenant: str, stream: str, kind: str, position: int, data: bytes, checksum: str
    ) -> None:
        check_tenant(tenant)
        check_stream(stream)
        self._snapshots.setdefault((tenant, stream, kind), {}).setdefault(position, (bytes(data), checksum))

    async def load_snapshot(
        self, tenant: str, stream: str, kind: str, *, at_or_before: int | None = None
    ) -> tuple[int, bytes, str] | None:
        snaps = self._snapshots.get((tenant, stream, kind), {})
        ok = [p for p in snaps if at_or_before is None or p <= at_or_before]
        if not ok:
            return None
        p = max(ok)
        return (p, *snaps[p])

    async def tenant_exists(self, tenant: str) -> bool:
        return tenant in self._tenants

    async def list_tenants(self) -> list[str]:
        return sorted(self._tenants)

    async def list_streams(self, tenant: str, *, prefix: str = "", limit: int = 10_000) -> list[tuple[str, int]]:
        check_tenant(tenant)
        found = sorted((s, h["version"]) for (t, s), h in self._streams.items() if t == tenant and s.startswith(prefix))
        return found[:limit]

    async def verify(self, tenant: str | None = None, stream: str | None = None) -> VerifyReport:
        if tenant is not None and check_tenant(tenant) not in self._tenants:
            raise UnknownTenant(f"no tenant {tenant!r}", tenant=tenant)
        breaks = []
        n_streams = n_events = 0
        for (t, s), head in sorted(self._streams.items()):
            if (tenant is not None and t != tenant) or (stream is not None and s != stream):
                continue
            rows = sorted(self._stream_rows.get((t, s), ()), key=lambda r: r["version"])
            n_streams += 1
            n_events += len(rows)
            breaks.extend(check_chain(head, rows))
        return VerifyReport(n_streams, n_events, tuple(breaks))

    async def prune(
        self,
        *,
        retention_s: float = 7 * 86400,
        now_us: int | None = None,
        respect_checkpoints: bool = True,
        tenant: str | None = None,
    ) -> PruneReport:
        if tenant is not None and check_tenant(tenant) not in self._tenants:
            raise UnknownTenant(f"no tenant {tenant!r}", tenant=tenant)
        cutoff = (now_us if now_us is not None else self._clock_us()) - int(retention_s * 1_000_000)
        limit_pos = min(self._checkpoints.values()) if respect_checkpoints and self._checkpoints else None

        def expired(r: dict[str, Any]) -> bool:
            return r["retention"] == "standard" and r["time_us"] < cutoff and (tenant is None or r["tenant"] == tenant)

        held_back = sum(1 for r in self._rows if expired(r) and limit_pos is not None and r["position"] > limit_pos)
        doomed: set[int] = set()
        touched = 0
        for key, rows in self._stream_rows.items():
            covered = None  # a document's updates are its only copy until a snapshot covers them
            if key[1].startswith("doc/"):
                covered = max(self._snapshots.get((key[0], key[1], "ydoc"), {0: None}))
            n = 0
            for r in rows:  # rows are in version order: prune only a prefix
                if not expired(r) or (limit_pos is not None and r["position"] > limit_pos):
                    break
                if covered is not None and r["position"] > covered:
                    break
                n += 1
            if n:
                last = rows[n - 1]
                self._streams[key].update(anchor_version=last["version"], anchor_hash=last["hash"])
                doomed.update(r["position"] for r in rows[:n])
                self._stream_rows[key] = rows[n:]
                touched += 1
        if doomed:
            keep = [r for r in self._rows if r["position"] not in doomed]
            self._rows = keep
            self._positions = [r["position"] for r in keep]
        self._keys = {k: v for k, v in self._keys.items() if v[2] >= cutoff}
        details: dict[str, Any] = {}
        if held_back and limit_pos is not None:
            (name, t), pos = min(self._checkpoints.items(), key=lambda kv: (kv[1], kv[0]))
            details["held_back_by"] = {"name": name, "tenant": t, "position": pos}
        return PruneReport(len(doomed), touched, held_back, details)

    async def close(self) -> None:
        await self.doorbell.close()
