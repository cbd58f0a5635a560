"""The per-tenant quota on Yjs documents' stored bytes (``SYNCLINE_DOC_QUOTA_BYTES_PER_TENANT``).

What counts: the payload bytes of every ``crdt.update`` event on the tenant's ``doc/…``
streams, whoever wrote it. A tenant's account is read from the store once (one
``SUM`` query, :meth:`SqlEventStore.doc_bytes`) the first time one of its documents is
written through this gateway; from then on the gateway's log follower, which reads every
``crdt.update`` of every tenant in position order (api/follower.py), adds each new one,
so writes made through other gateways, REST or the bus count too. A write that would
take the tenant past the quota is refused before it reaches the log
(:class:`QuotaExceeded`: close 4413 on Yjs, a rejected op on the native protocol) and
counted in ``syncline_limits_hit_total{limit="doc_quota"}``.

The follower lags the commit by a doorbell, so a burst can pass the quota by what one
connection's byte rate allows in that time (``SYNCLINE_YJS_RATE_BYTES_BURST``); the
account never forgets bytes (pruning and snapshots do not give quota back until the
gateway restarts and reads the account again).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .errors import QuotaExceeded

if TYPE_CHECKING:
    from .gateway import Gateway


class DocQuota:
    def __init__(self, gw: Gateway, limit: int) -> None:
        self.gw = gw
        self.limit = limit
        self.used: dict[str, int] = {}  # tenant -> bytes (only tenants read from the store)
        self._since: dict[str, int] = {}  # tenant -> follower position the account was read at
        self._loading: dict[str, asyncio.Future] = {}

    async def _load(self, tenant: str) -> int:
        fut = self._loading.get(tenant)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = self._loading[tenant] = asyncio.get_running_loop().create_future()
        try:
            since = self.gw.follower.cursor  # events after it reach seen(); some may be counted twice (safe side)
            reader = getattr(self.gw.store, "doc_bytes", None)
            used = await reader(tenant) if reader is not None else await self._scan(tenant)
            self.used[tenant] = self.used.get(tenant, 0) + used
            self._since[tenant] = since
            fut.set_result(self.used[tenant])
            return self.used[tenant]
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            self._loading.pop(tenant, None)

    async def _scan(self, tenant: str) -> int:
        """Stores without ``doc_bytes`` (the in-memory one): read the document updates."""
        from syncline.engine.filters import EventFilter

        f = EventFilter(stream_prefixes=("doc/",), types=("crdt.update",))
        total, after = 0, 0
        while True:
            page = await self.gw.store.read_log(tenant, after=after, limit=1000, filter=f)
            total += sum(len(e.data) for e in page.events if isinstance(e.data, (bytes, bytearray)))
            if page.next_after <= after or not page.events:
                return total
            after = page.next_after

    async def check(self, tenant: str, size: int) -> None:
        """Raise :class:`QuotaExceeded` if ``size`` more bytes would pass the tenant's quota."""
        if self.limit <= 0:
            return
        used = self.used.get(tenant) if tenant in self._since else None
        if used is None:
            used = await self._load(tenant)
        if used + size > self.limit:
            self.gw.metrics.limits_hit.labels("doc_quota").inc()
            raise QuotaExceeded(f"the tenant's documents hold {used} bytes; the quota is {self.limit}",
                                used=used, quota=self.limit)

    def seen(self, event: Any) -> None:
        """The follower read a ``crdt.update`` (every tenant, in position order)."""
        tenant = event.tenant
        since = self._since.get(tenant)
        if since is not None and event.position > since and isinstance(event.data, (bytes, bytearray)):
            self.used[tenant] += len(event.data)
