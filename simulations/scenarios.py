"""Scenarios: small declarative descriptions of a workload and the faults around it.

A scenario says what the clients do (``workload``), how they are grouped into
tenants and sharing groups, which resolution strategies their records use, and
which faults the network and the processes suffer. ``simulations.sim.Simulation``
turns one into a run; the seed decides everything else.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

STRATEGIES = ("lww", "manual", "counter", "union", "max")


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault rates and episodes. Probabilities are per message; counts per run."""

    latency_ms_median: float = 30.0
    latency_sigma: float = 0.6  # lognormal spread
    latency_ms_max: int = 3_000
    spike: float = 0.0  # chance of an extra delay spike (head-of-line blocking, cross-connection reordering)
    spike_ms_max: int = 1_500
    loss: float = 0.0  # a lost packet: the ordered stream retransmits it after an RTO (and everything behind it waits)
    rto_ms: tuple[int, int] = (200, 1_000)
    resets: float = 0.0  # a connection reset: the message and everything after it are lost, both ends notice
    dup: float = 0.0  # a message delivered twice
    partitions: int = 0  # episodes: a group of clients cut off from the server and each other
    partition_fraction: float = 0.3
    partition_ms: tuple[int, int] = (3_000, 12_000)
    crashes: int = 0  # client crashes (the persisted op queue survives)
    crash_down_ms: tuple[int, int] = (1_000, 8_000)
    server_restarts: int = 0


@dataclass(frozen=True, slots=True)
class Offline:
    """A share of clients goes offline for a long stretch, editing all the while."""

    fraction: float = 0.0
    start_ms: int = 2_000
    length_ms: int = 20_000


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    workload: str = "records"  # records | docs | room | consumer
    strategies: tuple[str, ...] = ("lww",)
    tenants: int = 1
    group_size: int = 8  # clients sharing the same records/docs (0: the whole tenant)
    records_per_group: int = 4
    ops_per_client: int = 20
    duration_ms: int = 20_000
    offline: Offline = Offline()
    faults: Faults = Faults()
    max_behind_events: int = 10_000
    resolve_conflicts: float = 0.3  # chance a client resolves a manual conflict it sees
    poison_rate: float = 0.0  # consumer workload: share of poisoned events
    consumers: int = 3
    room_join_window_ms: int = 2_000
    quiesce_deadline_ms: int = 180_000
    # The client cores' own handshake deadline (``SessionCore(handshake_timeout_ms=...)``):
    # an attempt that brings no ``welcome`` for that long is given up and retried.
    # 0: no deadline, the deliberately broken core of old, which a partition between
    # ``hello`` and ``welcome`` strands in CONNECTING for good (tests/simulations shows
    # the liveness checker catching it).
    handshake_timeout_ms: int = 10_000

    def with_(self, **changes) -> Scenario:
        return replace(self, **changes)


SCENARIOS: dict[str, Scenario] = {}


def _add(s: Scenario) -> Scenario:
    SCENARIOS[s.name] = s
    return s


_add(Scenario(
    "offline-records",
    "offline editing of shared records with every resolution strategy, under loss, partitions and crashes",
    strategies=STRATEGIES,
    offline=Offline(fraction=0.25, start_ms=1_000, length_ms=8_000),
    faults=Faults(loss=0.02, resets=0.005, dup=0.02, spike=0.02, partitions=2, crashes=2, server_restarts=1),
))
_add(Scenario(
    "docs-partitions",
    "collaborative Yjs documents edited through partitions that later heal",
    workload="docs",
    records_per_group=2,
    faults=Faults(loss=0.02, resets=0.003, dup=0.02, spike=0.02, partitions=3, partition_fraction=0.5, crashes=1),
))
_add(Scenario(
    "flash-crowd",
    "a flash crowd joining one room within two seconds, with presence and chat",
    workload="room",
    group_size=0,
    ops_per_client=3,
    duration_ms=10_000,
    faults=Faults(dup=0.01, spike=0.01),
))
_add(Scenario(
    "long-offline",
    "long offline periods that exceed the catch-up limit and force a snapshot refresh",
    strategies=("lww", "counter", "union", "max"),
    group_size=0,
    ops_per_client=30,
    duration_ms=30_000,
    max_behind_events=40,
    offline=Offline(fraction=0.2, start_ms=1_000, length_ms=20_000),
    faults=Faults(dup=0.01),
))
_add(Scenario(
    "poison-consumer",
    "poison events in a consumer group: retries, crashes, dead-letter accounting",
    workload="consumer",
    strategies=("lww", "counter"),
    poison_rate=0.03,
    faults=Faults(loss=0.02, resets=0.003, crashes=1),
))
_add(Scenario(
    "multi-tenant",
    "many tenants at once: every tenant's traffic stays in that tenant",
    strategies=("lww", "counter", "union"),
    tenants=5,
    group_size=4,
    faults=Faults(loss=0.02, resets=0.003, dup=0.02, partitions=2, crashes=1, server_restarts=1),
))
_add(Scenario(
    "bench-1000x100",
    "the benchmark: groups of 10 clients per tenant, 100 ops each, partitions and 5% loss",
    strategies=("lww", "counter"),
    tenants=100,
    group_size=10,
    records_per_group=5,
    ops_per_client=100,
    duration_ms=60_000,
    faults=Faults(loss=0.05, resets=0.001, dup=0.01, partitions=2, partition_fraction=0.2),
))


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}") from None
