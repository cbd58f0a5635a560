"""The offline op queue: what the user did and the server has not acknowledged yet.

Two peers with one contract (``OpQueue``) and one test suite:

- ``SqliteOpQueue``: a local SQLite file (stdlib ``sqlite3``, WAL). Survives the
  process being killed: an op is in the queue once ``append`` returns.
- ``MemoryOpQueue``: the same in memory, for tests and the simulator (cheap enough
  to hold 10,000 of them in one process).

Rules (both peers):
- ops keep the order they were appended in (``seq`` increases);
- an op leaves the queue only through ``ack`` (the server answered for it) or
  ``clear`` (the caller chose to drop unsynced ops);
- ``append`` raises ``QueueFull`` when ``limit`` ops are queued, and queues nothing;
- a small key/value ``meta`` area is written in the same transaction as the op it
  goes with (client id, op counter, per-record clocks), so a restart never reuses
  an op id or a clock tick;
- the local replica's confirmed records (opaque bytes per stream) are saved with the
  log position they are at, in one transaction (``save_replica``), so a restart
  resumes from that position (``load_replica``) instead of catching up from 0.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import msgpack

from syncline.engine.records import ClientOp, Op, ResolveOp, op_from_wire

from .errors import QueueFull

DEFAULT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class QueuedOp:
    """One queued op: the idempotency key (``op_id``), who, when (HLC, vector clock),
    what (``kind``, target ``stream``, ``payload``) and the record version it was made on."""

    seq: int
    op_id: str
    client: str
    user: str
    kind: str  # "op" | "resolve"
    stream: str
    hlc: str
    vc: Mapping[str, int]
    payload: Mapping[str, Any]  # op: set/delete; resolve: conflict/field/choice/value/deleted
    base: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "op": self.op_id, "client": self.client, "user": self.user,
                "stream": self.stream, "vc": dict(self.vc), "hlc": self.hlc, "base": self.base,
                **self.payload}

    def to_op(self) -> Op:
        return op_from_wire(self.to_wire())


def queued(seq: int, op: Op) -> QueuedOp:
    w = op.to_wire()
    payload = {k: v for k, v in w.items() if k not in _COMMON}
    return QueuedOp(seq, op.op_id, op.client, op.user, w["kind"], op.stream, w["hlc"], w["vc"], payload,
                    op.base_version)


_COMMON = frozenset({"kind", "op", "client", "user", "stream", "vc", "hlc", "base"})


class OpQueue(Protocol):
    limit: int

    def append(self, op: Op, meta: Mapping[str, Any] | None = None) -> QueuedOp: ...
    def append_many(self, ops: Sequence[Op], meta: Mapping[str, Any] | None = None) -> list[QueuedOp]: ...
    def peek(self, after_seq: int = 0, limit: int = 500) -> list[QueuedOp]: ...
    def ack(self, op_ids: Iterable[str]) -> int: ...
    def restamp(self, op_id: str, hlc: str, meta: Mapping[str, Any] | None = None) -> QueuedOp | None: ...
    def clear(self) -> int: ...
    def __len__(self) -> int: ...
    def get_meta(self, key: str, default: Any = None) -> Any: ...
    def set_meta(self, values: Mapping[str, Any]) -> None: ...
    def save_replica(self, position: int, records: Mapping[str, bytes], *, reset: bool = False) -> None: ...
    def load_replica(self) -> tuple[int, dict[str, bytes]]: ...
    def close(self) -> None: ...


class MemoryOpQueue:
    """In memory; ``seqs`` stays sorted because seq only grows."""

    __slots__ = ("limit", "_seqs", "_ops", "_by_id", "_next", "_meta", "_replica")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._seqs: list[int] = []
        self._ops: dict[int, QueuedOp] = {}
        self._by_id: dict[str, int] = {}
        self._next = 1
        self._meta: dict[str, Any] | None = None
        self._replica: tuple[int, dict[str, bytes]] | None = None

    def append(self, op: Op, meta: Mapping[str, Any] | None = None) -> QueuedOp:
        return self.append_many((op,), meta)[0]

    def append_many(self, ops: Sequence[Op], meta: Mapping[str, Any] | None = None) -> list[QueuedOp]:
        _check_room(len(self._ops), len(ops), self.limit)
        out = []
        for op in ops:
            if op.op_id in self._by_id:
                out.append(self._ops[self._by_id[op.op_id]])
                continue
            q = queued(self._next, op)
            self._next += 1
            self._seqs.append(q.seq)
            self._ops[q.seq] = q
            self._by_id[q.op_id] = q.seq
            out.append(q)
        if meta:
            self.set_meta(meta)
        return out

    def peek(self, after_seq: int = 0, limit: int = 500) -> list[QueuedOp]:
        i = bisect_right(self._seqs, after_seq)
        return [self._ops[s] for s in self._seqs[i:i + limit]]

    def ack(self, op_ids: Iterable[str]) -> int:
        n = 0
        for op_id in op_ids:
            seq = self._by_id.pop(op_id, None)
            if seq is not None:
                del self._ops[seq]
                n += 1
        if n:
            # Acks arrive in order from the front, so this is usually a short slice.
            self._seqs = [s for s in self._seqs if s in self._ops]
        return n

    def restamp(self, op_id: str, hlc: str, meta: Mapping[str, Any] | None = None) -> QueuedOp | None:
        """Give a queued op a new HLC (encoded), in place (same seq, op id and clock);
        None when the op is not queued. ``meta`` is written with it."""
        seq = self._by_id.get(op_id)
        if seq is None:
            return None
        q = self._ops[seq]
        q = self._ops[seq] = QueuedOp(q.seq, q.op_id, q.client, q.user, q.kind, q.stream, hlc, q.vc, q.payload,
                                      q.base)
        if meta:
            self.set_meta(meta)
        return q

    def clear(self) -> int:
        n = len(self._ops)
        self._seqs, self._ops, self._by_id = [], {}, {}
        return n

    def __len__(self) -> int:
        return len(self._ops)

    def get_meta(self, key: str, default: Any = None) -> Any:
        return default if self._meta is None else self._meta.get(key, default)

    def set_meta(self, values: Mapping[str, Any]) -> None:
        if self._meta is None:
            self._meta = {}
        self._meta.update(values)

    def save_replica(self, position: int, records: Mapping[str, bytes], *, reset: bool = False) -> None:
        saved = {} if reset or self._replica is None else self._replica[1]
        saved.update(records)
        self._replica = (position, saved)

    def load_replica(self) -> tuple[int, dict[str, bytes]]:
        return (0, {}) if self._replica is None else (self._replica[0], dict(self._replica[1]))

    def close(self) -> None:
        pass


def _check_room(size: int, adding: int, limit: int) -> None:
    if size + adding > limit:
        raise QueueFull(f"the offline queue holds {size} of {limit} ops; cannot add {adding}",
                        limit=limit, size=size)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY,
    op_id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream TEXT NOT NULL,
    hlc TEXT NOT NULL,
    vc BLOB NOT NULL,
    payload BLOB NOT NULL,
    base INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS replica (stream TEXT PRIMARY KEY, state BLOB NOT NULL);
"""

_pack = lambda v: msgpack.packb(v, use_bin_type=True)  # noqa: E731
_unpack = lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False)  # noqa: E731


class SqliteOpQueue:
    """A SQLite file in WAL mode with ``synchronous=NORMAL``.

    Why NORMAL and not FULL: in WAL mode a committed transaction is in the WAL file
    (the OS page cache) before ``commit`` returns, so it survives the *process* being
    killed (kill -9); only a power cut or OS crash can lose the last commits, and even
    then the database stays consistent. FULL would fsync every op (~1 ms each).
    Pass ``durable=True`` for FULL when power loss must not lose queued ops.
    """

    def __init__(self, path: str | Path, limit: int = DEFAULT_LIMIT, *, durable: bool = False) -> None:
        self.limit = limit
        self.path = str(path)
        if self.path != ":memory:" and not self.path.startswith("file:"):
            _create_private(self.path)
        # One connection, used from whichever thread calls (the client's loop thread or a
        # worker); the lock serialises them, check_same_thread would only forbid it.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._size = self._db.execute("SELECT count(*) FROM ops").fetchone()[0]

    def append(self, op: Op, meta: Mapping[str, Any] | None = None) -> QueuedOp:
        return self.append_many((op,), meta)[0]

    def append_many(self, ops: Sequence[Op], meta: Mapping[str, Any] | None = None) -> list[QueuedOp]:
        with self._lock:
            _check_room(self._size, len(ops), self.limit)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                out = []
                added = 0
                for op in ops:
                    q = queued(0, op)
                    cur = db.execute(
                        "INSERT OR IGNORE INTO ops (op_id, client, user, kind, stream, hlc, vc, payload, base)"
                        " VALUES (?,?,?,?,?,?,?,?,?)",
                        (q.op_id, q.client, q.user, q.kind, q.stream, q.hlc, _pack(dict(q.vc)),
                         _pack(dict(q.payload)), q.base),
                    )
                    if cur.rowcount:
                        added += 1
                        out.append(_with_seq(q, cur.lastrowid))
                    else:
                        row = db.execute("SELECT seq FROM ops WHERE op_id=?", (q.op_id,)).fetchone()
                        out.append(_with_seq(q, row[0]))
                if meta:
                    self._put_meta(meta)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._size += added
            return out

    def peek(self, after_seq: int = 0, limit: int = 500) -> list[QueuedOp]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, op_id, client, user, kind, stream, hlc, vc, payload, base FROM ops"
                " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [QueuedOp(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _unpack(r[7]), _unpack(r[8]), r[9])
                for r in rows]

    def ack(self, op_ids: Iterable[str]) -> int:
        ids = list(op_ids)
        if not ids:
            return 0
        with self._lock:
            n = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(ids), 500):
                    part = ids[i:i + 500]
                    cur = self._db.execute(f"DELETE FROM ops WHERE op_id IN ({','.join('?' * len(part))})", part)
                    n += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._size -= n
            return n

    def restamp(self, op_id: str, hlc: str, meta: Mapping[str, Any] | None = None) -> QueuedOp | None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE ops SET hlc=? WHERE op_id=?", (hlc, op_id))
                r = db.execute("SELECT seq, op_id, client, user, kind, stream, hlc, vc, payload, base FROM ops"
                               " WHERE op_id=?", (op_id,)).fetchone()
                if r is not None and meta:
                    self._put_meta(meta)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if r is None:
            return None
        return QueuedOp(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _unpack(r[7]), _unpack(r[8]), r[9])

    def clear(self) -> int:
        with self._lock:
            n = self._db.execute("DELETE FROM ops").rowcount
            self._size = 0
            return n

    def __len__(self) -> int:
        return self._size

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else _unpack(row[0])

    def set_meta(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._put_meta(values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def save_replica(self, position: int, records: Mapping[str, bytes], *, reset: bool = False) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if reset:
                    db.execute("DELETE FROM replica")
                db.executemany("INSERT OR REPLACE INTO replica (stream, state) VALUES (?, ?)", records.items())
                self._put_meta({"position": position})
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def load_replica(self) -> tuple[int, dict[str, bytes]]:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='position'").fetchone()
            records = dict(self._db.execute("SELECT stream, state FROM replica").fetchall())
        return (0 if row is None else _unpack(row[0])), records

    def _put_meta(self, values: Mapping[str, Any]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [(k, _pack(v)) for k, v in values.items()])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _with_seq(q: QueuedOp, seq: int) -> QueuedOp:
    return QueuedOp(seq, q.op_id, q.client, q.user, q.kind, q.stream, q.hlc, q.vc, q.payload, q.base)


__all__ = ["DEFAULT_LIMIT", "ClientOp", "MemoryOpQueue", "OpQueue", "QueueFull", "QueuedOp", "ResolveOp",
           "SqliteOpQueue", "queued"]


def _create_private(path: str) -> None:
    """The queue file readable by its owner only (0600), -wal and -shm alike (SQLite gives
    them the database file's mode); an existing file keeps its mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
