"""The sync server builds a batch once per (tenant, cursor, filter) and hands the very
same event list to every connection there (the simulator's replicas then share its fold):
across appends of other tenants too, but never a batch the tenant's new events changed."""
from __future__ import annotations

from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.records import LWW, CollectionPolicy, ResolutionConfig
from syncline.engine.sync_server import Principal, ServerConfig, SyncServer
from syncline.store.memory_sync_log import MemorySyncLog


def _append(log: MemorySyncLog, tenant: str, n: int) -> None:
    log.append(tenant, [StreamWrite("x/1", (NewEvent("t.e", {"n": n}),))], n * 1000)


def _sub(server: SyncServer, tenant: str, user: str) -> list[dict]:
    conn, _ = server.connect(Principal(tenant, user), 0)
    out = server.receive(conn, {"t": "sub", "id": "main", "prefixes": ["x/"], "after": 0}, 0)
    batches = [m for _, m in out if m["t"] == "events"]
    assert len(batches) == 1
    return batches[0]["events"]


def test_a_batch_is_shared_until_its_tenant_appends():
    log = MemorySyncLog()
    server = SyncServer(log, ResolutionConfig({"lww": CollectionPolicy(default=LWW)}), ServerConfig())
    _append(log, "a", 1)
    first = _sub(server, "a", "u1")
    assert _sub(server, "a", "u2") is first
    _append(log, "b", 2)  # the head moves; tenant a's batch after 0 is the same
    assert _sub(server, "a", "u3") is first
    _append(log, "a", 3)  # now it is not
    fresh = _sub(server, "a", "u4")
    assert [e["data"]["n"] for e in fresh] == [1, 3]
    assert [e["data"]["n"] for e in first] == [1]
    assert _sub(server, "a", "u5") is fresh


def test_a_full_batch_stays_the_batch():
    log = MemorySyncLog()
    server = SyncServer(log, ResolutionConfig({"lww": CollectionPolicy(default=LWW)}),
                        ServerConfig(batch_events_max=2, window_batches_max=1))
    for n in (1, 2):
        _append(log, "a", n)
    first = _sub(server, "a", "u1")
    _append(log, "a", 3)  # after the full batch: it does not change it
    assert _sub(server, "a", "u2") is first
    assert [e["data"]["n"] for e in first] == [1, 2]
