"""The bus on the native WebSocket: ``publish``, and consumers with credit-based flow control.

The protocol core (engine/session.py) checks, tenant-checks and rate-limits these
messages and hands them here as ``BusRequest`` effects; this module performs them for
one connection (docs/protocol.md#bus-consumers):

- ``publish`` appends through the same checks as ``POST /v1/streams/...`` and answers
  ``published`` once committed, with the positions (``key``: an idempotency key, as
  REST's ``Idempotency-Key``; a repeat answers the first result, ``duplicate: true``).
- ``consume`` opens a consumer session (api/bus_sessions.py) bound to the connection.
  The server pushes ``deliveries`` only against credits the client granted (``credits``
  on ``consume``, then ``credit {id, n}``): it never has more deliveries in flight to
  the client than credits given, so a slow consumer is never flooded; what it cannot
  take yet waits in the session's bounded buffer, and behind that in the log.
- ``dack`` / ``dnack`` / ``extend`` settle deliveries; ``unconsume`` leaves (what is
  held goes back uncounted). When the connection drops, the sessions close as
  ``disconnected``: fetched deliveries count as failed attempts.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from syncline.engine import protocol as P
from syncline.engine.consumer_wire import parse_spec
from syncline.engine.errors import SynclineError, TenantViolation, ValidationError

from .bus_sessions import ConsumerSession, wire
from .routes_events import append_checked

if TYPE_CHECKING:
    from .ws_native import NativeConnection


class _Consumer:
    __slots__ = ("session", "credits", "scheduled")

    def __init__(self, session: ConsumerSession, credits: int) -> None:
        self.session = session
        self.credits = credits
        self.scheduled = False


class ConnectionBus:
    def __init__(self, conn: NativeConnection) -> None:
        self.conn = conn
        self.consumers: dict[str, _Consumer] = {}

    async def handle(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        try:
            if t == P.PUBLISH:
                await self._publish(msg)
            elif t == P.CONSUME:
                await self._consume(msg)
            else:
                c = self.consumers.get(msg["id"])
                if c is None or c.session.closed:
                    self.conn.gw.consumers.count_refusal("consumer_not_found")
                    self._error(msg["id"], "consumer_not_found", "no such consumer on this connection")
                    return
                if t == P.CREDIT:
                    c.credits = min(c.credits + msg["n"], P.CREDITS_MAX)
                    self._push(msg["id"])
                elif t == P.DACK:
                    self._settled(msg["id"], "dack", c.session.ack(msg["ids"]))
                elif t == P.DNACK:
                    unknown = c.session.nack(msg["ids"], msg.get("reason") or "nacked by consumer",
                                             msg.get("delay_s"), msg.get("trace") or "")
                    self._settled(msg["id"], "dnack", unknown)
                elif t == P.EXTEND:
                    lease = msg.get("lease_s") or c.session.spec.lease_s
                    limit = self.conn.gw.consumers.limits.lease_max_s
                    if lease > limit:
                        raise ValidationError(f"lease_s: at most {limit:g} seconds", field="lease_s")
                    self._settled(msg["id"], "extend", c.session.extend(msg["ids"], lease))
                elif t == P.UNCONSUME:
                    del self.consumers[msg["id"]]
                    await self.conn.gw.consumers.close(c.session, "left")
                    self.conn.send(P.message(P.CONSUMER_CLOSED, id=msg["id"], reason="left"))
        except SynclineError as e:
            if isinstance(e, TenantViolation):
                await self.conn.gw.security_event(self.conn.principal, "cross_tenant_consumer",
                                                  target=str((msg.get("filter") or {}).get("tenant"))[:80])
            if t == P.CONSUME:
                self.conn.gw.consumers.count_refusal(e.code)
            self._error(msg.get("id"), e.code, e.public_message, e.details if e.http_status < 500 else None)

    def _error(self, ref: Any, code: str, message: str, details: dict | None = None) -> None:
        out: dict[str, Any] = {"t": P.ERROR, "code": code, "message": message, "ref": ref}
        if details:
            out["details"] = details
        self.conn.send(out)

    def _settled(self, ref: str, op: str, unknown: list[str]) -> None:
        if unknown:  # (settlements that went through are not answered: the client need not wait)
            self.conn.send(P.message(P.SETTLED, id=ref, op=op, unknown=unknown))

    async def _publish(self, msg: dict[str, Any]) -> None:
        conn = self.conn
        from .auth import WRITE

        p = conn.principal
        if not p.can(WRITE):
            from syncline.engine.errors import Forbidden

            raise Forbidden("publishing needs the write permission")
        items = []
        for e in msg["events"]:
            if not isinstance(e, dict) or not isinstance(e.get("type"), str) or not isinstance(e.get("meta", {}), dict):
                raise ValidationError("each event is {type, data, [meta], [schema], [id], [clock]}", field="events")
            items.append({"type": e["type"], "data": e.get("data"), "schema": e.get("schema", 1), "id": e.get("id"),
                          "meta": e.get("meta") or {}, "clock": e.get("clock") or {}})
        result = await append_checked(conn.gw, p, p.tenant, msg["stream"], items, msg.get("expected_version"),
                                      msg.get("key"), correlation_id=None, via="ws")
        conn.send(P.message(P.PUBLISHED, id=msg["id"], **result))

    async def _consume(self, msg: dict[str, Any]) -> None:
        conn, gw = self.conn, self.conn.gw
        sub_id = msg["id"]
        old = self.consumers.pop(sub_id, None)
        if old is not None:  # the same id again replaces the consumer
            await gw.consumers.close(old.session, "left")
        spec = parse_spec({k: v for k, v in msg.items() if v is not None}, conn.principal.tenant, gw.consumers.limits)
        session = await gw.consumers.open(spec, conn.principal, conn_id=conn.conn_id, conn_count=len(self.consumers))
        c = self.consumers[sub_id] = _Consumer(session, msg.get("credits") or 0)
        session.on_ready = lambda: self._schedule(sub_id)
        conn.send(P.message(P.CONSUMING, id=sub_id, credits=c.credits, **session.describe()))
        self._push(sub_id)

    def _schedule(self, sub_id: str) -> None:
        """Push once the loop turns: deliveries handed over in one turn go in one frame."""
        c = self.consumers.get(sub_id)
        if c is not None and not c.scheduled and c.credits > 0:
            c.scheduled = True
            asyncio.get_running_loop().call_soon(self._push, sub_id)

    def _push(self, sub_id: str) -> None:
        c = self.consumers.get(sub_id)
        if c is None:
            return
        c.scheduled = False
        s = c.session
        while c.credits > 0 and s.buffer and not self.conn.outbox.closed:
            got = s.take(min(c.credits, s.spec.max_batch))
            c.credits -= len(got)
            now, wall = time.monotonic(), time.time()
            self.conn.send(P.message(P.DELIVERIES, id=sub_id, deliveries=wire(got, now, wall),
                                     credits=c.credits))

    async def close(self) -> None:
        """The connection ended: every consumer session closes as ``disconnected`` (what it
        held counts as failed attempts), or as ``shutdown`` when the gateway is stopping
        (the consumer did nothing wrong: what it held goes back uncounted)."""
        consumers, self.consumers = self.consumers, {}
        gw = self.conn.gw
        reason = "shutdown" if gw.shutting_down else "disconnected"
        await asyncio.gather(*(gw.consumers.close(c.session, reason) for c in consumers.values()),
                             return_exceptions=True)
