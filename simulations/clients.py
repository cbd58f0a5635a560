"""A simulated client: the client kit's ``SessionCore`` plus what a device keeps.

The core is the real one (clientkit/core.py). Around it this adapter holds what
survives a crash (the op queue with the records replica and cursor the core saves
in it, and the queue of Yjs updates) and what does not (the core itself, the local
Yjs documents: doc clients catch up from 0). Yjs
updates travel in ``ops`` batches as ``{"kind": "doc"}`` entries (docs/protocol.md);
the core's queue holds record ops only, so doc ops have their own small queue here.
"""
from __future__ import annotations

import random
from typing import Any

import pycrdt

from syncline.clientkit.core import SessionCore
from syncline.clientkit.queue import MemoryOpQueue
from syncline.clientkit.replica import SharedFolds
from syncline.engine import protocol as P
from syncline.engine.records import ResolutionConfig

from .network import Channel

CORE_OPTIONS = dict(heartbeat_ms=5_000, stale_ms=15_000, ack_timeout_ms=6_000, backoff_base_ms=250,
                    backoff_max_ms=6_000)
DOC_ACK_TIMEOUT_MS = 6_000


class SimClient:
    __slots__ = (
        "idx", "tenant", "user", "client_id", "group", "prefixes", "config", "rng", "queue", "core",
        "alive", "channel", "incarnation", "docs", "doc_queue", "doc_n", "doc_inflight", "doc_batch_n",
        "ops_left", "last_position", "snapshots", "persist_queue", "created", "timer_ms", "handshake_timeout_ms",
        "shared",
    )

    def __init__(self, idx: int, tenant: str, group: int, prefixes: list[str], config: ResolutionConfig,
                 rng: random.Random, *, persist_queue: bool = True, handshake_timeout_ms: int | None = 10_000,
                 shared: SharedFolds | None = None) -> None:
        self.idx = idx
        self.tenant = tenant
        self.user = f"{tenant}-u{idx}"
        self.client_id = f"{tenant}-c{idx}"
        self.group = group
        self.prefixes = prefixes
        self.config = config
        self.rng = rng
        self.persist_queue = persist_queue
        self.handshake_timeout_ms = handshake_timeout_ms  # the core's own deadline in CONNECTING
        # The simulation's fold steps, shared by every replica (all read the one log).
        self.shared = shared
        self.queue = MemoryOpQueue()  # "on disk": survives crashes
        self.doc_queue: dict[str, dict] = {}  # op id -> doc op wire, in order ("on disk" too)
        self.doc_n = 0
        self.alive = True
        self.channel: Channel | None = None
        self.incarnation = 0
        self.ops_left = 0
        self.snapshots = 0
        self.created = 0
        self.timer_ms: int | None = None  # the simulator's one live tick for this client
        self.start()

    def start(self) -> None:
        """A (re)started process: a fresh core over the persisted queue (records replica and cursor included)."""
        if not self.persist_queue and self.incarnation > 0:
            # The deliberately broken variant: the queue lived in memory only.
            fresh = MemoryOpQueue()
            fresh.set_meta({k: self.queue.get_meta(k) for k in ("client", "n", "hlc") if self.queue.get_meta(k)})
            self.queue = fresh
        # The core saves its records replica and position in the queue, so a restart resumes
        # from there. The Yjs documents here are not saved: doc clients start from 0 again.
        docs_only = all(p.startswith("doc/") for p in self.prefixes)
        self.core = SessionCore(user=self.user, queue=self.queue, client_id=self.client_id, rng=self.rng,
                                config=self.config, prefixes=self.prefixes, persist_replica=not docs_only,
                                handshake_timeout_ms=self.handshake_timeout_ms, **CORE_OPTIONS)
        self.core.replica.shared = self.shared
        self.incarnation += 1
        self.alive = True
        self.docs: dict[str, pycrdt.Doc] = {}
        self.doc_inflight: dict[str, tuple[list[str], int]] = {}
        self.doc_batch_n = 0
        self.last_position = 0

    # ---- documents
    def doc(self, stream: str) -> pycrdt.Doc:
        d = self.docs.get(stream)
        if d is None:
            # A seeded Yjs client id (pycrdt draws a random one): updates, and so the log,
            # are the same bytes on every run of a seed. Unique per client and
            # incarnation: a restarted process must not reuse its old id with a fresh clock.
            d = self.docs[stream] = pycrdt.Doc(client_id=(self.idx << 20) | self.incarnation)
            d.get("text", type=pycrdt.Text)
        return d

    def edit_doc(self, stream: str, now_ms: int) -> str:
        d = self.doc(stream)
        text = d.get("text", type=pycrdt.Text)
        before = d.get_state()
        n = len(str(text))
        text.insert(self.rng.randint(0, n), f"{self.idx}:{self.doc_n};")
        update = d.get_update(before)
        self.doc_n += 1
        op_id = f"{self.client_id}.d{self.doc_n}"
        self.doc_queue[op_id] = {"kind": "doc", "op": op_id, "client": self.client_id, "user": self.user,
                                 "stream": stream, "update": update}
        return op_id

    def apply_doc_event(self, e: dict) -> None:
        self.doc(e["stream"]).apply_update(e["data"])

    def doc_sends(self, now_ms: int) -> list[dict]:
        """Doc ops to send now: one batch in flight; everything again after a timeout."""
        if self.doc_inflight:
            oldest = min(t for _, t in self.doc_inflight.values())
            if now_ms - oldest <= DOC_ACK_TIMEOUT_MS:
                return []
            self.doc_inflight.clear()
        if not self.doc_queue or self.core.state.value != "online":
            return []
        self.doc_batch_n += 1
        bid = f"d{self.incarnation}-{self.doc_batch_n}"
        ops = list(self.doc_queue.values())[:200]
        self.doc_inflight[bid] = ([o["op"] for o in ops], now_ms)
        # Replay local edits on a fresh replica: what was edited before a crash shows again.
        for o in ops:
            self.doc(o["stream"]).apply_update(o["update"])
        return [P.message(P.OPS, id=bid, ops=ops)]

    def doc_result(self, op_id: str) -> bool:
        if self.doc_queue.pop(op_id, None) is None:
            return False
        if not self.doc_queue:
            self.doc_inflight.clear()
        return True

    def doc_text(self, stream: str) -> str:
        return str(self.doc(stream).get("text", type=pycrdt.Text))

    def next_deadline(self, now_ms: int) -> int | None:
        """When a tick has something to do: the core's deadline, or the doc queue's."""
        d = self.core.next_deadline()
        if self.doc_inflight:
            doc = min(t for _, t in self.doc_inflight.values()) + DOC_ACK_TIMEOUT_MS + 1
        elif self.doc_queue and self.core.state.value == "online":
            doc = now_ms + 1
        else:
            return d
        return doc if d is None else min(d, doc)

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.doc_queue)

    def settled(self) -> bool:
        return (self.alive and self.core.state.value == "online" and len(self.queue) == 0
                and not self.doc_queue)

    def describe(self) -> dict[str, Any]:
        return {"client": self.client_id, "state": self.core.state.value, "position": self.core.position,
                "queued": len(self.queue), "doc_queued": len(self.doc_queue)}
