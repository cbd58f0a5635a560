"""Invariant checkers, run during a simulation (hooks) and after it (``final``).

During: tenant isolation (every message a client receives), monotonic reads and
no event applied twice (cursor strictly increasing per client incarnation),
read-your-writes (an acknowledged op is visible to its connected client).
After healing and quiescence: convergence (replicas equal the server's
projection), no acknowledged op lost, every created op in the log, no op in the
log twice, per-client op order, DLQ accounting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from syncline.engine.documents import CRDT_UPDATE
from syncline.engine.records import RECORD_PATCHED

if TYPE_CHECKING:
    from .clients import SimClient
    from .sim import Simulation

ACCEPTED = frozenset({"applied", "merged", "conflict", "duplicate"})


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    step: int
    time_ms: int
    detail: str

    def __str__(self) -> str:
        return f"[{self.checker}] step {self.step} t={self.time_ms}ms: {self.detail}"


class Checkers:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.violations: list[Violation] = []
        self.acked: dict[str, str] = {}  # op id -> client, every op a client saw accepted
        self.rejected: dict[str, None] = {}
        self.created: dict[str, str] = {}  # op id -> client
        self.created_in: dict[str, int] = {}  # op id -> the client incarnation that made it
        self.counts = {"deliveries": 0, "applied_events": 0, "ryw_checks": 0}

    def fail(self, checker: str, detail: str) -> None:
        v = Violation(checker, self.sim.step, self.sim.now_ms, detail)
        self.violations.append(v)
        if self.sim.fail_fast:
            self.sim.stop(v)

    # ---- during the run
    def on_message(self, c: SimClient, msg: dict) -> None:
        self.counts["deliveries"] += 1
        t = msg.get("t")
        if t == "events":
            for e in msg["events"]:
                if e.get("tenant") != c.tenant:
                    self.fail("tenant_isolation", f"{c.client_id} got event {e.get('position')} of {e.get('tenant')}")
        elif t in ("msg", "presence"):
            sender = msg.get("from") or msg.get("user") or ""
            if not str(sender).startswith(c.tenant + "-"):
                self.fail("tenant_isolation", f"{c.client_id} got {t} from {sender}")
        elif t == "joined":
            for m in msg.get("members") or ():
                u = m.get("user") if isinstance(m, dict) else m  # {user, client, online} as the gateway sends
                if not str(u).startswith(c.tenant + "-"):
                    self.fail("tenant_isolation", f"{c.client_id} saw member {u}")

    def on_applied(self, c: SimClient, events: list[dict]) -> None:
        last = c.last_position
        for e in events:
            p = e["position"]
            if p <= last:
                self.fail("applied_once", f"{c.client_id} applied position {p} after {last}")
            last = p
        self.counts["applied_events"] += len(events)
        c.last_position = max(c.last_position, last)

    def on_progress(self, c: SimClient, position: int) -> None:
        if position < c.last_position:
            self.fail("monotonic_reads", f"{c.client_id} cursor went back from {c.last_position} to {position}")
        c.last_position = max(c.last_position, position)

    def on_created(self, c: SimClient, op_id: str) -> None:
        self.created[op_id] = c.client_id
        self.created_in[op_id] = c.incarnation

    def on_result(self, c: SimClient, op_id: str, kind: str, stream: str, is_doc: bool) -> None:
        if kind in ACCEPTED:
            self.acked[op_id] = c.client_id
            # Read-your-writes is a session guarantee: ops made by this incarnation.
            if not is_doc and c.core.state.value == "online" and self.created_in.get(op_id) == c.incarnation:
                self.counts["ryw_checks"] += 1
                rep = c.core.replica
                if not rep.sees(op_id, stream):
                    self.fail("read_your_writes", f"{c.client_id} cannot see its acknowledged op {op_id}")
        elif kind == "rejected":
            self.rejected[op_id] = None

    # ---- after quiescence
    def final(self) -> None:
        sim = self.sim
        in_log: dict[str, int] = {}
        order: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for ev in sim.log.replay():
            op = None
            if ev.type == RECORD_PATCHED:
                op = ev.data.get("op")
            elif ev.type == CRDT_UPDATE:
                op = ev.meta.get("op") if ev.meta else None
            if not op:
                continue
            if op in in_log:
                self.fail("applied_once", f"op {op} is in the log twice (positions {in_log[op]}, {ev.position})")
            in_log[op] = ev.position
            client, _, seq = op.rpartition(".")
            if seq.isdigit():
                # Per client and stream: one ops batch is one atomic append, grouped by stream.
                order.setdefault((client, ev.stream), []).append((ev.position, int(seq)))
        for op, client in self.acked.items():
            if op not in in_log:
                self.fail("no_acked_op_lost", f"op {op} of {client} was acknowledged but is not in the log")
        for op, client in self.created.items():
            if op not in in_log and op not in self.rejected:
                self.fail("no_op_lost", f"op {op} of {client} never reached the log")
        for client, seqs in order.items():
            prev = 0
            for pos, seq in seqs:
                if seq <= prev:
                    self.fail("client_order", f"{client}: op {seq} at position {pos} after op {prev}")
                    break
                prev = seq
        for c in sim.clients:
            if c.alive and c.core.replica.pending:
                op = next(iter(c.core.replica.pending))
                self.fail("overlay_drained", f"{c.client_id}: {len(c.core.replica.pending)} ops stay in the "
                          f"optimistic overlay after quiescence (e.g. {op}); reads show them twice")
                break
        self._convergence()
        if sim.consumers is not None:
            for detail in sim.consumers.accounting_errors(sim.log):
                self.fail("dlq_accounting", detail)

    def _convergence(self) -> None:
        sim = self.sim
        for c in sim.clients:
            if not c.alive:
                continue
            server = sim.server.records(c.tenant)
            mine = c.core.replica.confirmed
            wanted = [s for s in server.records if s.startswith(tuple(c.prefixes))]
            for s in wanted:
                a, b = mine.get(s).values(), server.get(s).values()
                if a != b:
                    self.fail("convergence", f"{c.client_id} {s}: replica {_short(a)} != server {_short(b)}")
                    return
                if not mine.get(s).same_data(server.get(s)):
                    self.fail("convergence", f"{c.client_id} {s}: same values, different field clocks")
                    return
            extra = [s for s in mine.records if s not in server.records]
            if extra:
                self.fail("convergence", f"{c.client_id} holds records the server lacks: {extra[:3]}")
                return
            for s, doc in sim.server.documents(c.tenant).items():
                if s.startswith(tuple(c.prefixes)) and c.doc_text(s) != str(doc.text()):
                    self.fail("convergence", f"{c.client_id} {s}: doc text differs from the server's")
                    return


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


def summarize(violations: Iterable[Violation]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in violations:
        out[v.checker] = out.get(v.checker, 0) + 1
    return out
