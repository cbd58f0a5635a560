"""The client kit against a real gateway process on a real port (tests/clientkit/ck_support.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter

from ck_support import ROOT, ServerProcess, read_log, token

from syncline.clientkit.client import SynclineClient
from syncline.clientkit.errors import ConnectionClosed
from syncline.clientkit.queue import SqliteOpQueue
from syncline.clientkit.transports.fallback import FallbackConnector
from syncline.engine import protocol as P
from syncline.engine.records import MANUAL, CollectionPolicy, merged
from syncline.engine.records import ResolutionConfig as _RC  # noqa: F401

CFG_FIELDS = {"title": MANUAL, "likes": merged("counter")}


def _config():
    from syncline.clientkit.transports.core_server import open_config

    return open_config(notes=CollectionPolicy(fields=CFG_FIELDS))


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests/clientkit/ck_child.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _kill_after(proc: subprocess.Popen, predicate) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        if predicate(line.strip()):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(30)


async def test_offline_1000_ops_kill9_restart_reconnect_exactly_once(server, tmp_path):
    qpath = str(tmp_path / "alice.queue.db")
    # Offline: queue ops; the process is killed mid-way, then restarted to finish.
    _kill_after(_child("enqueue", qpath, "1000"), lambda line: line == "400")
    p = _child("enqueue", qpath, "1000")
    assert p.stdout.read().strip().endswith("done") and p.wait(30) == 0  # type: ignore[union-attr]
    q = SqliteOpQueue(qpath)
    assert len(q) == 1000
    q.close()
    # Online: the drain is killed after some acks; the restarted client finishes it.
    _kill_after(_child("drain", qpath, server.url, token("alice")),
                lambda line: line.startswith("acked") and int(line.split()[1]) >= 200)
    client = SynclineClient(server.url, token("alice"), user="alice", queue_path=qpath)
    await client.start()
    await client.wait_until(lambda: client.pending == 0, 60)
    await client.wait_synced(30)
    events = [e for e in read_log(server, token("alice")) if e["type"] == "record.patched"]
    ops = [e["data"]["op"] for e in events]
    cid = client.core.client_id
    assert Counter(ops).most_common(1)[0][1] == 1  # exactly once
    assert sorted(ops) == sorted(f"{cid}.{n}" for n in range(1, 1001))  # every op
    # In order: one append groups a batch's events by stream, so order is per record.
    for k in range(10):
        nums = [int(e["data"]["op"].rsplit(".", 1)[1]) for e in events if e["stream"] == f"rec/items/{k}"]
        assert nums == sorted(nums) and len(nums) == 100
    assert client.get("rec/items/3")["v"] == 993
    await client.close()


class _LoseFirstAck:
    """Connector wrapper: the first ``opacks`` is lost with the connection (after the commit)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lost = 0

    async def open(self, client=""):
        conn = await self.inner.open(client)
        outer = self

        class Conn:
            kind = conn.kind

            async def send(self, msg):
                await conn.send(msg)

            async def recv(self):
                msg = await conn.recv()
                if msg["t"] == P.OPACKS and outer.lost == 0:
                    outer.lost += 1
                    await conn.close()
                    raise ConnectionClosed("dropped before the ack arrived")
                return msg

            async def close(self):
                await conn.close()

        return Conn()


async def test_ack_lost_after_commit_no_duplicate(server):
    tok = token("alice")
    conn = _LoseFirstAck(FallbackConnector(server.url, tok))
    c = SynclineClient(server.url, tok, user="alice", connector=conn, batch_size=100)
    for i in range(250):
        c.set(f"rec/items/{i % 5}", {"n": i})
    await c.start()
    await c.wait_synced(30)
    assert conn.lost == 1 and c.stats["duplicates"] >= 1
    ops = [e["data"]["op"] for e in read_log(server, tok) if e["type"] == "record.patched"]
    assert len(ops) == len(set(ops)) == 250
    await c.close()


class _Proxy:
    """A TCP proxy in front of the gateway for the WebSocket only; ``enabled=False``
    refuses (closes) every connection, as if the WebSocket endpoint were unreachable."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.enabled = False
        self.server = None
        self.port = 0

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r, w):
        if not self.enabled:
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(a, b):
            try:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
            except Exception:
                pass
            finally:
                b.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    async def stop(self):
        self.server.close()


async def test_websocket_unavailable_polling_delivers_everything_then_back_to_websocket(server):
    proxy = await _Proxy(server.port).start()
    connector = FallbackConnector(server.url, token("bob"), ws_url=f"http://127.0.0.1:{proxy.port}",
                                  probe_interval_s=0.3, poll_interval_s=0.05)
    bob = SynclineClient(server.url, token("bob"), user="bob", connector=connector)
    alice = SynclineClient(server.url, token("alice"), user="alice")
    await bob.start()
    await alice.start()
    await bob.wait_until(lambda: bob.status == "online" and bob.transport == "poll", 15)
    for i in range(300):
        alice.set(f"rec/items/{i % 30}", {"n": i})
    bob.set("rec/items/bob", {"from": "polling"})  # ops go over REST while polling
    await alice.wait_synced(30)
    await bob.wait_until(lambda: bob.core.replica.confirmed_values() == alice.core.replica.confirmed_values()
                         and bob.pending == 0, 30)
    assert bob.stats["poll_connects"] >= 1
    proxy.enabled = True
    await bob.wait_until(lambda: bob.transport == "ws" and bob.status == "online", 15)
    alice.set("rec/items/0", {"n": "after"})
    await bob.wait_until(lambda: bob.get("rec/items/0") == {"n": "after"}, 15)
    assert bob.stats["ws_connects"] >= 1
    await bob.close()
    await alice.close()
    await proxy.stop()


class _CorruptFirstSnapshot:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.corrupted = 0

    async def open(self, client=""):
        conn = await self.inner.open(client)
        outer = self

        class Conn:
            kind = conn.kind

            async def send(self, msg):
                await conn.send(msg)

            async def recv(self):
                msg = await conn.recv()
                if msg["t"] == P.SNAPSHOT and outer.corrupted == 0:
                    outer.corrupted += 1
                    data = bytearray(msg["data"])
                    data[len(data) // 2] ^= 0xFF
                    msg = dict(msg, data=bytes(data))
                return msg

            async def close(self):
                await conn.close()

        return Conn()


async def test_corrupted_snapshot_refused_and_refetched(server_factory):
    srv: ServerProcess = server_factory(env={"SYNCLINE_MAX_BEHIND": "50"})
    writer = SynclineClient(srv.url, token("alice"), user="alice")
    for i in range(200):
        writer.set(f"rec/items/{i % 40}", {"n": i})
    await writer.start()
    await writer.wait_until(lambda: writer.pending == 0, 30)
    conn = _CorruptFirstSnapshot(FallbackConnector(srv.url, token("bob")))
    reader = SynclineClient(srv.url, token("bob"), user="bob", connector=conn)
    await reader.start()
    await reader.wait_until(lambda: reader.stats["snapshots"] == 1 and reader.synced, 30)
    assert conn.corrupted == 1 and reader.stats["corrupt_snapshots"] == 1
    assert reader.core.replica.confirmed_values() == {f"rec/items/{k}": {"n": 160 + k} for k in range(40)}
    await writer.close()
    await reader.close()


async def test_partitioned_clients_heal_to_identical_state_manual_conflict_once(server):
    cfg = _config()
    seen: dict[str, list[str]] = {"alice": [], "bob": []}
    clients = {}
    import time

    skew = {"alice": 0, "bob": 2000}  # bob's clock is 2 s ahead: his writes are the later ones for LWW
    for u in ("alice", "bob"):
        c = clients[u] = SynclineClient(server.url, token(u), user=u, config=cfg,
                                        clock_ms=lambda u=u: time.time_ns() // 1_000_000 + skew[u])
        c.on("on_conflict", lambda conflict, u=u: seen[u].append(conflict.id))
        await c.start()
    a, b = clients["alice"], clients["bob"]
    a.set("rec/notes/1", {"title": "draft", "body": "v0", "likes": 1, "tags": "x"})
    await a.wait_synced(15)
    await b.wait_until(lambda: b.get("rec/notes/1").get("title") == "draft", 15)
    await a.go_offline()
    await b.go_offline()
    a.set("rec/notes/1", {"title": "Alice's title", "body": "alice body", "likes": 2, "color": "red"})
    b.set("rec/notes/1", {"title": "Bob's title", "body": "bob body", "likes": 5, "size": "XL"})
    a.set("rec/notes/2", {"body": "only alice"})
    assert a.get("rec/notes/1")["likes"] == 3 and b.get("rec/notes/1")["likes"] == 6  # readable offline
    a.go_online()
    b.go_online()
    await a.wait_synced(20)
    await b.wait_synced(20)
    await a.wait_until(lambda: a.core.replica.confirmed_values() == b.core.replica.confirmed_values(), 20)
    state = a.get("rec/notes/1")
    assert state["likes"] == 8  # counter: 1 + 2 + 5
    assert state["color"] == "red" and state["size"] == "XL" and state["tags"] == "x"  # field-level
    assert state["body"] == "bob body"  # LWW: bob wrote later
    assert a.core.replica.confirmed.same_data(b.core.replica.confirmed)
    assert len(seen["alice"]) == 1 and seen["alice"] == seen["bob"]  # the manual conflict, once each
    [conflict] = a.conflicts()
    assert {(w.stamp.user, w.value) for w in conflict.versions} == {("alice", "Alice's title"), ("bob", "Bob's title")}
    # the server agrees
    import httpx

    r = httpx.get(f"{server.url}/v1/records/notes/1", headers={"Authorization": f"Bearer {token('alice')}"}).json()
    values = r.get("values", r)
    assert values == b.get("rec/notes/1")
    # a person resolves it; both replicas close it
    bob_version = next(w.stamp.op_id for w in conflict.versions if w.stamp.user == "bob")
    a.resolve(conflict.id, bob_version)
    await a.wait_synced(15)
    await b.wait_until(lambda: not b.conflicts() and b.get("rec/notes/1")["title"] == "Bob's title", 15)
    assert len(seen["alice"]) == len(seen["bob"]) == 1
    await a.close()
    await b.close()


async def test_restart_resumes_from_the_saved_replica_and_position(server, tmp_path):
    cfg = _config()
    path = tmp_path / "alice.queue.db"
    a = SynclineClient(server.url, token("alice"), user="alice", config=cfg, queue_path=path)
    await a.start()
    for i in range(30):
        a.set(f"rec/notes/{i % 3}", {"body": f"v{i}", "likes": 1})
    await a.wait_synced(20)
    saved_position, saved = a.core.position, a.core.replica.confirmed_values()
    await a.close()  # saves the replica with its position

    b = SynclineClient(server.url, token("bob"), user="bob", config=cfg)
    await b.start()
    b.set("rec/notes/0", {"likes": 5})
    await b.wait_synced(20)
    await b.close()

    again = SynclineClient(server.url, token("alice"), user="alice", config=cfg, queue_path=path)
    assert again.core.position == saved_position  # before any connection: read from the file
    assert again.core.replica.confirmed_values() == saved and again.get("rec/notes/0")["likes"] == 10
    positions: list[int] = []
    again.on("on_events", lambda evs: positions.extend(e["position"] for e in evs))
    await again.start()
    await again.wait_until(lambda: again.get("rec/notes/0")["likes"] == 15, 20)
    await again.wait_synced(20)
    assert positions and min(positions) > saved_position  # caught up from its position, not from 0
    await again.close()
