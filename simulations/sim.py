"""The deterministic simulator: one seeded ``random.Random``, a virtual clock, one loop.

Every step takes the earliest scheduled happening (a message arriving, a timer, a
fault; at equal virtual times, the first scheduled) and runs it to completion: the
server core (engine/sync_server.py) and N client cores (clientkit/core.py) never
run concurrently, so the seed decides everything. The
trace hash covers every step; the log hash covers every row of the log. A failing
run prints the seed and the step, and ``replay`` of that seed stops at that step.

Phases: the workload runs for ``duration_ms`` under faults; then the network goes
quiet, partitions heal and crashed clients restart; the run ends at quiescence
(every client online with empty queues, nothing in flight) and the final checks
run, or it fails the liveness check at ``quiesce_deadline_ms``.
"""
from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from syncline.clientkit.core import (
    Connect,
    Disconnect,
    EventsApplied,
    OpResult,
    Progress,
    Send,
    SnapshotInstalled,
    StateChanged,
)
from syncline.clientkit.replica import SharedFolds
from syncline.engine.documents import CRDT_UPDATE
from syncline.engine.ids import uuid7
from syncline.engine.records import LWW, MANUAL, CollectionPolicy, ResolutionConfig, merged
from syncline.engine.records.payloads import RECORD_PATCHED
from syncline.engine.sync_server import Principal, ServerConfig, SyncServer
from syncline.store.gcpause import collector_paused
from syncline.store.memory_sync_log import MemorySyncLog

from .checkers import Checkers, Violation, summarize
from .clients import SimClient
from .consumers import ConsumerGroup
from .network import Channel, Network
from .scenarios import Scenario

POLICIES = {
    "lww": CollectionPolicy(default=LWW),
    "manual": CollectionPolicy(default=MANUAL),
    "counter": CollectionPolicy(default=merged("counter")),
    "union": CollectionPolicy(default=merged("set_union")),
    "max": CollectionPolicy(default=merged("max")),
}
TAGS = ("red", "green", "blue", "amber", "violet", "teal")

# Kinds of scheduled happenings.
UP, DOWN, ACCEPT, CONNECT_FAIL, CLIENT_CLOSED, SERVER_DROP, WAKE, SERVER_TICK, CLIENT_TICK, FAULT, SAMPLE, \
    CONSUME, CHECK = range(13)
KIND_NAMES = ("up", "down", "accept", "connect_fail", "client_closed", "server_drop", "wake", "server_tick",
              "client_tick", "fault", "sample", "consume", "check")
IN_FLIGHT = frozenset({UP, DOWN, ACCEPT, CONNECT_FAIL, CLIENT_CLOSED, SERVER_DROP})
# Heartbeats in flight do not hold quiescence back: with a thousand clients one is
# always on the wire, and they change nothing a checker looks at.
HEARTBEATS = frozenset({"ping", "pong"})

SERVER_TICK_MS = 100
# Client cores are ticked on a 250 ms grid, but only at the grid points where one has
# something to do (its ``next_deadline``): an idle client costs nothing between them.
CLIENT_TICK_MS = 250
TRACE_FLUSH_ENTRIES = 4_096  # trace lines hashed per ``update`` (the hash is over the joined lines)
SAMPLE_MS = 1_000
CONNECT_TIMEOUT_MS = 3_000


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, violation: Violation, recent: list[str]) -> None:
        self.seed = seed
        self.violation = violation
        self.recent = recent
        super().__init__(
            f"simulation failed: seed={seed} step={violation.step}: {violation}\n"
            f"replay: simulations.sim.replay(scenario, clients, seed={seed}, stop_at_step={violation.step})\n"
            + "\n".join(recent[-15:])
        )


@dataclass
class Params:
    clients: int = 20
    seed: int = 0
    duration_ms: int | None = None  # default: the scenario's
    store: str = "memory"  # memory | sqlite
    sqlite_path: str | None = None
    broken: str | None = None  # None | "unpersisted_queue" | "cursor_reset"
    fail_fast: bool = False
    stop_at_step: int | None = None


@dataclass
class Result:
    scenario: str
    seed: int
    clients: int
    steps: int
    virtual_ms: int
    wall_s: float
    log_hash: str
    trace_hash: str
    events: int
    ops_created: int
    ops_acked: int
    violations: list[Violation]
    quiesced_at_ms: int | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


class Simulation:
    def __init__(self, scenario: Scenario, params: Params, *, progress: Callable[[int, int], None] | None = None
                 ) -> None:
        self.scenario = sc = scenario
        self.params = params
        self.seed = params.seed
        self.rng = random.Random(params.seed)
        self.fail_fast = params.fail_fast
        self.progress = progress
        self.duration_ms = params.duration_ms or sc.duration_ms
        self.now_ms = 0
        self.step = 0
        # The agenda: happenings at one virtual millisecond run in the order they were
        # scheduled. A heap orders the distinct times; each time has its list of
        # (kind, a, b), appended to even while it runs (a happening at ``now``) and run
        # to its end. Equivalent to one heap of (time, sequence number, ...) entries,
        # with one heap operation per distinct time instead of two per happening.
        self._times: list[int] = []
        self._agenda: dict[int, list[tuple]] = {}
        self._in_flight = 0
        self._stopped: Violation | None = None
        self._trace = hashlib.sha256()
        self._recent: deque[str] = deque(maxlen=64)
        self.resolution = ResolutionConfig({s: POLICIES[s] for s in dict.fromkeys((*sc.strategies, "lww"))})
        self.server_config = ServerConfig(max_behind_events=sc.max_behind_events, ack_timeout_ms=5_000,
                                          stale_ms=20_000, heartbeat_ms=5_000, presence_ttl_ms=15_000,
                                          snapshot_chunk_bytes=16 * 1024)
        self.log = self._open_log()
        self.server = SyncServer(self.log, self.resolution, self.server_config)
        self.net = Network(self.rng, sc.faults)
        self.by_conn: dict[int, Channel] = {}
        self.checkers = Checkers(self)
        # Every replica reads the one log: a record's state after an event is folded once
        # and shared by the replicas that hold the same state before it (SharedFolds).
        self.shared_folds = SharedFolds()
        self.clients = [self._make_client(i) for i in range(params.clients)]
        self.consumers = (ConsumerGroup(self.rng, "t0", consumers=sc.consumers)
                          if sc.workload == "consumer" else None)
        self.created_ms: dict[str, int] = {}
        # op -> when the latest replica applied it. The virtual clock never goes back, so
        # that is the op's convergence time (the latency of its slowest replica).
        self.applied_ms: dict[str, int] = {}
        self.metrics: dict[str, Any] = {
            "messages_per_s": {}, "queue_depth": [], "outcomes": {}, "refreshes": 0, "snapshots": 0,
            "reconnects": 0, "crashes": 0, "server_restarts": 0, "partitions": 0, "room_msgs": 0,
            # For the plots (simulations/report.py): what went wrong when, outcomes and room
            # traffic per virtual second, room membership per sample.
            "fault_windows": [], "outcomes_per_s": {}, "room_msgs_per_s": {}, "room_members": [],
        }
        self._mps = self.metrics["messages_per_s"]
        self.quiet_since: int | None = None
        self.quiesced_at: int | None = None
        self._ticks: dict[int, list[int]] = {}  # grid time -> clients to tick then
        self._plan_faults()

    # ------------------------------------------------------------ setup
    def _new_id(self, time_ms: int) -> str:
        return uuid7(time_ms, self.rng.randbytes(10))

    def _open_log(self):
        if self.params.store == "sqlite":
            from syncline.store.sqlite_sync_log import SqliteSyncLog

            if not self.params.sqlite_path:
                raise ValueError("the sqlite store needs a sqlite_path")
            return SqliteSyncLog(self.params.sqlite_path, self._new_id)
        return MemorySyncLog(self._new_id)

    def _make_client(self, i: int) -> SimClient:
        sc = self.scenario
        tenant = f"t{i % sc.tenants}"
        j = i // sc.tenants
        group = j // sc.group_size if sc.group_size else 0
        if sc.workload == "docs":
            prefixes = [f"doc/g{group}-"]
        elif sc.workload == "room":
            prefixes = ["rec/"]
        else:
            prefixes = [f"rec/{s}/g{group}-" for s in sc.strategies]
        c = SimClient(i, tenant, group, prefixes, self.resolution, self.rng,
                      persist_queue=self.params.broken != "unpersisted_queue",
                      handshake_timeout_ms=sc.handshake_timeout_ms or None, shared=self.shared_folds)
        c.ops_left = sc.ops_per_client
        return c

    def _plan_faults(self) -> None:
        sc, f, rng, n = self.scenario, self.scenario.faults, self.rng, len(self.clients)
        d = self.duration_ms
        for c in self.clients:
            first = sc.room_join_window_ms if sc.workload == "room" else 500
            self._at(int(rng.uniform(0, first)), WAKE, c.idx)
            out = c.core.connect(self.now_ms)
            self._route_client(c, out)
        windows = self.metrics["fault_windows"]

        def window(kind: str, start: int, end: int, clients: int) -> None:
            # When a fault held, for the plots. At ``d`` the network goes quiet: cuts
            # heal and crashed clients restart, so no window outlasts it.
            windows.append((kind, start, max(start, min(end, d)), clients))

        if sc.offline.fraction:
            k = max(1, int(n * sc.offline.fraction))
            for i in sorted(rng.sample(range(n), k)):
                start = sc.offline.start_ms + rng.randint(0, 1_000)
                self._at(start, FAULT, ("cut", (i,)))
                self._at(min(start + sc.offline.length_ms, d), FAULT, ("heal", (i,)))
                window("offline", start, start + sc.offline.length_ms, 1)
        for _ in range(f.partitions):
            start = int(rng.uniform(0.1, 0.6) * d)
            length = rng.randint(*f.partition_ms)
            members = tuple(sorted(rng.sample(range(n), max(1, int(n * f.partition_fraction)))))
            self._at(start, FAULT, ("cut", members))
            self._at(min(start + length, d), FAULT, ("heal", members))
            self.metrics["partitions"] += 1
            window("partition", start, start + length, len(members))
        for _ in range(f.crashes):
            i = rng.randrange(n)
            start = int(rng.uniform(0.1, 0.8) * d)
            down = rng.randint(*f.crash_down_ms)
            self._at(start, FAULT, ("crash", i))
            self._at(start + down, FAULT, ("restart", i))
            window("client crash", start, start + down, 1)
        for _ in range(f.server_restarts):
            at = int(rng.uniform(0.2, 0.8) * d)
            self._at(at, FAULT, ("server_restart", None))
            window("server restart", at, at, n)
        if self.consumers is not None:
            self._at(int(0.5 * d), FAULT, ("consumer_crash", 0))
            self._at(int(0.7 * d), FAULT, ("consumer_recover", 0))
            self._at(250, CONSUME, None)
            window("consumer crash", int(0.5 * d), int(0.7 * d), 1)
        windows.sort(key=lambda w: (w[1], w[0]))
        self._at(d, FAULT, ("quiet", None))
        self._at(SERVER_TICK_MS, SERVER_TICK, None)
        self._at(SAMPLE_MS, SAMPLE, None)

    # ------------------------------------------------------------ scheduling
    def _at(self, t: int, kind: int, a: Any, b: Any = None) -> None:
        if kind in IN_FLIGHT and (b is None or b["t"] not in HEARTBEATS):
            self._in_flight += 1
        slot = self._agenda.get(t)
        if slot is None:
            self._agenda[t] = [(kind, a, b)]
            heapq.heappush(self._times, t)
        else:
            slot.append((kind, a, b))

    def stop(self, v: Violation) -> None:
        if self._stopped is None:
            self._stopped = v

    def run(self) -> Result:
        started = time.perf_counter()
        deadline = self.duration_ms + self.scenario.quiesce_deadline_ms
        stop_at = self.params.stop_at_step
        times = self._times
        agenda = self._agenda
        pop = heapq.heappop
        trace = self._trace
        recent = self._recent
        buf: list[str] = []
        deliver_down, deliver_up = self._deliver_down, self._deliver_up
        last_report = 0
        done = False
        while times and not done:
            t = times[0]
            if t > deadline:
                break
            slot = agenda[t]
            i = 0
            while i < len(slot):  # (the slot may grow while it runs)
                if self._stopped is not None:
                    done = True
                    break
                kind, a, b = slot[i]
                i += 1
                if kind in IN_FLIGHT and (b is None or b["t"] not in HEARTBEATS):
                    self._in_flight -= 1
                self.now_ms = t
                self.step += 1
                # (Messages, most of the steps, without the dispatch call.)
                if kind == DOWN:
                    line = deliver_down(a, b)
                elif kind == UP:
                    line = deliver_up(a, b)
                else:
                    line = self._dispatch(kind, a, b)
                if line is not None:
                    entry = f"{self.step}|{t}|{KIND_NAMES[kind]}|{line}"
                    buf.append(entry)
                    recent.append(entry)
                    if len(buf) >= TRACE_FLUSH_ENTRIES:
                        trace.update(("\n".join(buf) + "\n").encode())
                        buf.clear()
                if self.quiesced_at is not None or (stop_at is not None and self.step >= stop_at):
                    done = True
                    break
                if self.progress is not None and t - last_report >= 1_000:
                    last_report = t
                    self.progress(min(t, deadline), deadline)
            if not done:
                pop(times)
                del agenda[t]
        if buf:
            trace.update(("\n".join(buf) + "\n").encode())
        if self._stopped is None and stop_at is None:
            if self.quiesced_at is None:
                stuck = [c.describe() for c in self.clients if not c.settled()][:3]
                self.checkers.fail("liveness", f"no quiescence by t={deadline}ms; e.g. {stuck}")
            else:
                self.checkers.final()
        if self.progress is not None:
            # The run's end, not the deadline it had to beat: the progress line and the
            # report then say the same virtual time (a run that quiesces at 27 s of a
            # 200 s allowance ends at t=27s).
            self.progress(self.now_ms, self.now_ms)
        self.metrics["server"] = dict(self.server.stats)
        self.metrics["network"] = {"messages": self.net.messages, "lost": self.net.lost,
                                   "duplicated": self.net.duplicated, "resets": self.net.resets}
        self.metrics["convergence_ms"] = sorted(self.converged_ms.values())
        created = self.created_ms
        self.metrics["convergence_by_creation"] = sorted(
            (created[op], at - created[op]) for op, at in self.applied_ms.items() if op in created)
        self.metrics["checks"] = dict(self.checkers.counts)
        if self.consumers is not None:
            self.metrics["consumers"] = self.consumers.summary()
        result = Result(
            self.scenario.name, self.seed, len(self.clients), self.step, self.now_ms,
            time.perf_counter() - started, self.log.log_hash(), trace.hexdigest(), self.log.head(),
            len(self.checkers.created), len(self.checkers.acked), list(self.checkers.violations),
            self.quiesced_at, self.metrics,
        )
        return result

    def failure(self, result: Result) -> SimulationFailure | None:
        if result.ok:
            return None
        return SimulationFailure(self.seed, result.violations[0], list(self._recent))

    def close(self) -> None:
        self.log.close()

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, kind: int, a: Any, b: Any) -> str | None:
        if kind == UP:
            return self._deliver_up(a, b)
        if kind == DOWN:
            return self._deliver_down(a, b)
        if kind == SERVER_TICK:
            out = self.server.tick(self.now_ms)
            self._route_server(out)
            self._at(self.now_ms + SERVER_TICK_MS, SERVER_TICK, None)
            return f"{len(out)}" if out else None
        if kind == CLIENT_TICK:
            self._client_tick(a)
            return None
        if kind == WAKE:
            return self._wake(self.clients[a])
        if kind == ACCEPT:
            return self._accept(a)
        if kind == CONNECT_FAIL:
            c = self.clients[a.client]
            if c.channel is a and c.alive:
                c.channel = None
                self._route_client(c, c.core.disconnected(self.now_ms, "connect_timeout"))
            return f"{a.client}"
        if kind == CLIENT_CLOSED:
            c = self.clients[a.client]
            if c.channel is a and c.alive:
                c.channel = None
                self._route_client(c, c.core.disconnected(self.now_ms, "reset"))
            return f"{a.client}"
        if kind == SERVER_DROP:
            if a.conn_id and self.by_conn.get(a.conn_id) is a:
                del self.by_conn[a.conn_id]
                self._route_server(self.server.disconnect(a.conn_id, self.now_ms))
            return f"{a.client}"
        if kind == FAULT:
            return self._fault(*a)
        if kind == SAMPLE:
            self.metrics["queue_depth"].append((self.now_ms, sum(c.pending for c in self.clients)))
            if self.scenario.workload == "room":
                self.metrics["room_members"].append(
                    (self.now_ms, sum(1 for c in self.clients if c.alive and "lobby" in c.core.rooms)))
            self._at(self.now_ms + SAMPLE_MS, SAMPLE, None)
            if self.now_ms >= self.duration_ms:
                self._check_quiescence()
            return None
        if kind == CONSUME:
            n = self.consumers.step(self.log)
            self._at(self.now_ms + 250, CONSUME, None)
            return f"{n}" if n else None
        return None

    # ------------------------------------------------------------ connections
    def _open(self, c: SimClient) -> None:
        self.metrics["reconnects"] += 1
        ch = Channel(c.idx, (c.channel.gen + 1) if c.channel else c.incarnation * 100_000 + self.step)
        c.channel = ch
        if not self.net.reachable(c.idx):
            self._at(self.now_ms + CONNECT_TIMEOUT_MS, CONNECT_FAIL, ch)
            return
        self._at(self.now_ms + self.net.latency_ms(), ACCEPT, ch)

    def _accept(self, ch: Channel) -> str:
        c = self.clients[ch.client]
        if c.channel is not ch or not ch.open or not c.alive:
            return f"{ch.client} stale"
        if not self.net.reachable(c.idx):
            self._at(self.now_ms + CONNECT_TIMEOUT_MS, CONNECT_FAIL, ch)
            return f"{ch.client} cut"
        conn_id, out = self.server.connect(Principal(c.tenant, c.user), self.now_ms)
        ch.conn_id = conn_id
        self.by_conn[conn_id] = ch
        # The transport is open: the core says hello (it travels up, in order, before anything else).
        self._route_client(c, c.core.connected(self.now_ms))
        self._route_server(out)
        return f"{ch.client} conn={conn_id}"

    def _close(self, c: SimClient, notify_server: bool) -> None:
        ch = c.channel
        c.channel = None
        if ch is None:
            return
        ch.open = False
        if notify_server and ch.conn_id and self.net.reachable(c.idx):
            self._at(self.now_ms + self.net.latency_ms(), SERVER_DROP, ch)

    def _send_up(self, c: SimClient, msg: dict) -> None:
        ch = c.channel
        if ch is None or not ch.conn_id:
            return
        times, reset = self.net.plan(ch, True, self.now_ms)
        if reset:
            self._reset(ch)
        for t in times:
            self._at(t, UP, ch, msg)

    def _reset(self, ch: Channel) -> None:
        ch.open = False
        lat = self.net.latency_ms()
        self._at(self.now_ms + lat, CLIENT_CLOSED, ch)
        self._at(self.now_ms + lat, SERVER_DROP, ch)

    def _deliver_up(self, ch: Channel, msg: dict) -> str | None:
        if not ch.open or self.by_conn.get(ch.conn_id) is not ch:
            return None
        t = msg["t"]
        self._count_msg()
        if t == "ops":
            with collector_paused():  # (as the gateway does around reconcile: engine/ never touches the collector)
                out = self.server.receive(ch.conn_id, msg, self.now_ms)
        else:
            out = self.server.receive(ch.conn_id, msg, self.now_ms)
        self._route_server(out)
        return f"{ch.client}>{t}:{msg.get('id', msg.get('upto', ''))}"

    def _route_server(self, out: list[tuple[int, dict]]) -> None:
        for conn_id, msg in out:
            ch = self.by_conn.get(conn_id)
            if ch is None:
                continue
            if msg["t"] == "bye":
                del self.by_conn[conn_id]  # the server dropped it
            times, reset = self.net.plan(ch, False, self.now_ms)
            if reset:
                self._reset(ch)
            for t in times:
                self._at(t, DOWN, ch, msg)

    def _deliver_down(self, ch: Channel, msg: dict) -> str | None:
        c = self.clients[ch.client]
        if not ch.open or c.channel is not ch or not c.alive:
            return None
        self._count_msg()
        self.checkers.on_message(c, msg)
        t = msg["t"]
        if t == "events":
            if self.params.broken == "cursor_reset" and c.core.position > 0 and self.rng.random() < 0.25:
                c.core.position = 0  # the deliberately broken client: forgets how far it got
            detail = f"{msg['sub']}:{msg.get('prev')}-{msg['next']}:{len(msg['events'])}"
        elif t == "opacks":
            detail = f"{msg['id']}:{len(msg['results'])}"
        elif t == "refresh":
            self.metrics["refreshes"] += 1
            detail = str(msg["head"])
        elif t == "msg":
            self.metrics["room_msgs"] += 1
            per_s = self.metrics["room_msgs_per_s"]
            per_s[self.now_ms // 1000] = per_s.get(self.now_ms // 1000, 0) + 1
            detail = str(msg.get("from"))
        else:
            detail = ""
        try:
            out = c.core.receive(msg, self.now_ms)
        except Exception as e:  # a client core bug: record it, and the process "crashes"
            self.checkers.fail("client_exception", f"{c.client_id} on {t}: {type(e).__name__}: {e}")
            self._close(c, notify_server=True)
            c.alive = False
            self._at(self.now_ms + 1_000, FAULT, ("restart", c.idx))
            return f"{ch.client}<{t}:exception"
        self._route_client(c, out)
        if t == "error":
            self._arm(c, self.now_ms + 1)  # the core may have freed its send window: tick it soon
        return f"{ch.client}<{t}:{detail}"

    def _route_client(self, c: SimClient, outs: list) -> None:
        for o in outs:
            tp = type(o)
            if tp is Send:
                self._send_up(c, o.msg)
            elif tp is EventsApplied:
                self._applied(c, o.events)
            elif tp is OpResult:
                self._result(c, o)
            elif tp is Progress:
                self.checkers.on_progress(c, o.position)
            elif tp is Connect:
                self._open(c)
            elif tp is Disconnect:
                if o.reason == "handshake_timeout":  # the core gave up an attempt with no ``welcome``
                    self.metrics["handshake_timeouts"] = self.metrics.get("handshake_timeouts", 0) + 1
                self._close(c, notify_server=True)
                self._route_client(c, c.core.disconnected(self.now_ms, o.reason))
            elif tp is SnapshotInstalled:
                c.snapshots += 1
                self.metrics["snapshots"] += 1
                c.last_position = o.position
            elif tp is StateChanged and o.new.value == "online":
                for m in c.doc_sends(self.now_ms):
                    self._send_up(c, m)
        self._arm(c)

    # ------------------------------------------------------------ client timers
    def _arm(self, c: SimClient, due_ms: int | None = None) -> None:
        """Make sure ``c`` is ticked at the first grid point at or after its next deadline.

        Called after every interaction with a client core. A client keeps at most one
        live timer (``c.timer_ms``); an earlier deadline re-arms it, and the entry left
        in the later bucket is skipped when that bucket fires."""
        if not c.alive:
            return
        d = c.next_deadline(self.now_ms)
        if due_ms is not None:
            d = due_ms if d is None else min(d, due_ms)
        if d is None:
            return
        g = -(-max(d, self.now_ms + 1) // CLIENT_TICK_MS) * CLIENT_TICK_MS
        if c.timer_ms is not None and c.timer_ms <= g:
            return
        c.timer_ms = g
        bucket = self._ticks.get(g)
        if bucket is None:
            bucket = self._ticks[g] = []
            self._at(g, CLIENT_TICK, g)
        bucket.append(c.idx)

    def _client_tick(self, g: int) -> None:
        now = self.now_ms
        for idx in self._ticks.pop(g, ()):
            c = self.clients[idx]
            if c.timer_ms != g:
                continue  # re-armed earlier and already ticked, or a duplicate entry
            c.timer_ms = None
            if not c.alive:
                continue
            self._route_client(c, c.core.tick(now))  # re-arms
            if c.doc_queue:
                for m in c.doc_sends(now):
                    self._send_up(c, m)
                self._arm(c)

    def _applied(self, c: SimClient, events: list[dict]) -> None:
        self.checkers.on_applied(c, events)
        now = self.now_ms
        applied = self.applied_ms
        for e in events:
            et = e["type"]
            if et == RECORD_PATCHED:
                applied[e["data"]["op"]] = now
            elif et == CRDT_UPDATE:
                c.apply_doc_event(e)
                op = e["meta"].get("op")
                if op is not None:
                    applied[op] = now

    @property
    def converged_ms(self) -> dict[str, int]:
        """op -> its convergence latency: from its creation until the last replica applied it."""
        created = self.created_ms
        return {op: at - created[op] for op, at in self.applied_ms.items() if op in created}

    def _result(self, c: SimClient, o: OpResult) -> None:
        c.doc_result(o.op_id)
        is_doc = o.op_id.rpartition(".")[2].startswith("d")
        kind = o.kind
        r = o.result
        if kind == "duplicate" and isinstance(r.get("original"), dict):
            effective = r["original"].get("kind", kind)
        else:
            effective = kind
        stream = str(r.get("stream", ""))
        coll = stream.split("/")[1] if stream.startswith("rec/") else ("doc" if is_doc else "?")
        by = self.metrics["outcomes"].setdefault(coll, {})
        by[effective] = by.get(effective, 0) + 1
        per_s = self.metrics["outcomes_per_s"].setdefault(effective, {})
        per_s[self.now_ms // 1000] = per_s.get(self.now_ms // 1000, 0) + 1
        self.checkers.on_result(c, o.op_id, kind, stream, is_doc)

    def _count_msg(self) -> None:
        s = self.now_ms // 1000
        mps = self._mps
        mps[s] = mps.get(s, 0) + 1

    # ------------------------------------------------------------ workload
    def _wake(self, c: SimClient) -> str | None:
        sc = self.scenario
        if not c.alive or c.ops_left <= 0 or self.now_ms >= self.duration_ms:
            return None
        rng = self.rng
        c.ops_left -= 1
        gap = max(1, int(rng.expovariate(sc.ops_per_client / (self.duration_ms * 0.9))))
        self._at(self.now_ms + gap, WAKE, c.idx)
        if sc.workload == "docs":
            stream = f"doc/g{c.group}-d{rng.randrange(sc.records_per_group)}"
            op = c.edit_doc(stream, self.now_ms)
            self._created(c, op)
            if c.core.state.value == "online":
                for m in c.doc_sends(self.now_ms):
                    self._send_up(c, m)
            return f"{c.idx} doc {op}"
        if sc.workload == "room":
            return self._room_action(c)
        core = c.core
        if "manual" in sc.strategies and rng.random() < sc.resolve_conflicts:
            conflicts = core.replica.conflicts()
            if conflicts:
                cf = conflicts[0]
                out = core.resolve(cf.id, cf.versions[0].stamp.op_id, self.now_ms)
                self._created(c, next(reversed(core.replica.pending)))
                self._route_client(c, out)
                return f"{c.idx} resolve {cf.id[:10]}"
        strategy = rng.choice(sc.strategies)
        stream = f"rec/{strategy}/g{c.group}-r{rng.randrange(sc.records_per_group)}"
        values = self._values(strategy, c)
        out = core.set(stream, values, self.now_ms)
        self._created(c, next(reversed(core.replica.pending)))
        self._route_client(c, out)
        return f"{c.idx} set {stream}"

    def _values(self, strategy: str, c: SimClient) -> dict:
        rng = self.rng
        if strategy == "counter":
            return {"n": rng.randint(1, 5)}
        if strategy == "union":
            return {"tags": [rng.choice(TAGS)]}
        if strategy == "max":
            return {"hi": rng.randint(0, 10_000)}
        v = {rng.choice(("title", "body", "state")): f"{c.client_id}:{rng.randrange(1_000_000)}"}
        if self.scenario.poison_rate and rng.random() < self.scenario.poison_rate:
            v["poison"] = True
        return v

    def _created(self, c: SimClient, op_id: str) -> None:
        c.created += 1
        self.created_ms[op_id] = self.now_ms
        self.checkers.on_created(c, op_id)

    def _room_action(self, c: SimClient) -> str:
        core = c.core
        if "lobby" not in core.rooms:
            self._route_client(c, core.join("lobby"))
            return f"{c.idx} join"
        if self.rng.random() < 0.5:
            self._route_client(c, core.set_presence("lobby", {"typing": self.rng.random() < 0.5}))
            return f"{c.idx} presence"
        self._route_client(c, core.say("lobby", {"text": f"hi from {c.user}"}))
        return f"{c.idx} say"

    # ------------------------------------------------------------ faults
    def _fault(self, what: str, arg: Any) -> str:
        if what == "cut":
            for i in arg:
                self.net.cut[i] = None
                c = self.clients[i]
                if c.channel is not None:
                    c.channel.open = False  # silently dead: timeouts will tell both sides
        elif what == "heal":
            for i in arg:
                self.net.cut.pop(i, None)
        elif what == "crash":
            c = self.clients[arg]
            if c.alive:
                self.metrics["crashes"] += 1
                self._close(c, notify_server=True)
                c.alive = False
        elif what == "restart":
            c = self.clients[arg]
            if not c.alive:
                c.start()
                self._route_client(c, c.core.connect(self.now_ms))
        elif what == "server_restart":
            self.metrics["server_restarts"] += 1
            self._restart_server()
        elif what == "consumer_crash":
            self.consumers.crash(arg)
        elif what == "consumer_recover":
            self.consumers.recover(arg)
        elif what == "quiet":
            self.net.quiet = True
            self.net.cut.clear()
            for c in self.clients:
                if not c.alive:
                    c.start()
                    self._route_client(c, c.core.connect(self.now_ms))
        return f"{what} {arg}"

    def _restart_server(self) -> None:
        """Drop the core, reopen the log, rebuild the state from it. Clients see resets."""
        for ch in self.by_conn.values():
            ch.open = False
            if self.net.reachable(ch.client):
                self._at(self.now_ms + self.net.latency_ms(), CLIENT_CLOSED, ch)
        self.by_conn.clear()
        if self.params.store == "sqlite":
            self.log.close()
            self.log = self._open_log()
        self.server = SyncServer(self.log, self.resolution, self.server_config)

    # ------------------------------------------------------------ quiescence
    def _check_quiescence(self) -> None:
        if self._in_flight or not all(c.settled() for c in self.clients) or not self.server.idle():
            self.quiet_since = None
            return
        if self.consumers is not None:
            self.consumers.step(self.log, budget=1_000_000)
        if self.quiet_since is None:
            self.quiet_since = self.now_ms
            return
        self.quiesced_at = self.now_ms
        if self.consumers is not None:
            self.consumers.flush()


def run(scenario: Scenario, params: Params, **kw: Any) -> tuple[Result, Simulation]:
    sim = Simulation(scenario, params, **kw)
    try:
        return sim.run(), sim
    finally:
        sim.close()


def replay(scenario: Scenario, clients: int, seed: int, stop_at_step: int | None = None, **kw: Any) -> Result:
    """Run the same seed again (optionally stopping at a step): the same trace, the same log."""
    result, _ = run(scenario, Params(clients=clients, seed=seed, stop_at_step=stop_at_step, **kw))
    return result


__all__ = ["Params", "Result", "Simulation", "SimulationFailure", "run", "replay", "summarize"]
