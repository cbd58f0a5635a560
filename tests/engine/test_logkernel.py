"""The log kernel on its own: pure, deterministic given its packer and id source."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import syncline.engine.logkernel as K
from syncline.engine.codec import pack
from syncline.engine.errors import ConcurrencyError, IdempotencyMismatch, ValidationError
from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.hashchain import GENESIS, event_hash

T = 1_700_000_000_000_000


class Ids:
    """An IdSource that records what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []
        self.n = 0

    def __call__(self, time_us: int, n: int) -> list[str]:
        self.asked.append((time_us, n))
        out = [f"id-{self.n + i}" for i in range(n)]
        self.n += n
        return out


def _call(tenant: str, *writes: StreamWrite, key: str | None = None) -> K.PreparedAppend:
    return K.prepare(tenant, list(writes), key)


def W(stream: str, n: int, expected: int | None = None, ids: bool = False) -> StreamWrite:
    return StreamWrite(stream, tuple(NewEvent("t.e", {"i": i}, id=f"own-{stream}-{i}" if ids else None)
                                     for i in range(n)), expected)


def test_the_kernel_imports_nothing_impure():
    tree = ast.parse(Path(K.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not names & {"os", "gc", "random", "threading", "time", "asyncio", "sqlite3", "store", "uuid"}


def test_a_batch_plans_versions_positions_hashes_and_ids():
    ids = Ids()
    batch = [_call("acme", W("a/1", 2)), _call("acme", W("a/2", 1, ids=True), W("a/1", 1, expected=2))]
    plan = K.plan_batch(batch, {}, {}, 10, T, new_ids=ids)
    assert [o.streams for o in plan.outcomes] == [
        (K.StreamAppended("a/1", 1, 2, 11, 12),),
        (K.StreamAppended("a/2", 1, 1, 13, 13), K.StreamAppended("a/1", 3, 3, 14, 14)),
    ]
    assert ids.asked == [(T, 3)]  # once, for the three events without an id of their own
    assert [r["id"] for r in plan.rows] == ["id-0", "id-1", "own-a/2-0", "id-2"]
    assert plan.last_position == 14 and plan.heads[("acme", "a/1")].version == 3
    prev = GENESIS
    for r in plan.rows:
        if r["stream"] != "a/1":
            continue
        assert r["prev_hash"] == prev and K.row_hash(r) == r["hash"]
        assert r["hash"] == event_hash(prev, **{c: (r[c] or b"") if c in ("clock", "meta") else r[c] for c in
                                                ("id", "tenant", "stream", "version", "position", "type", "schema",
                                                 "time_us", "actor_user", "actor_client", "clock", "payload", "meta",
                                                 "retention")})
        prev = r["hash"]


def test_a_conflict_or_duplicate_writes_nothing_and_draws_no_ids():
    ids = Ids()
    first = K.plan_one(_call("acme", W("a/1", 2), key="k"), {}, {}, 0, T, new_ids=ids)[0]
    stored = {("acme", "k"): (first.new_keys[0]["fingerprint"], first.new_keys[0]["result"])}
    heads = dict(first.heads)
    with pytest.raises(ConcurrencyError) as err:
        K.plan_one(_call("acme", W("a/1", 5, expected=1)), heads, {}, 2, T, new_ids=ids)
    assert (err.value.code, err.value.expected, err.value.actual) == ("version_conflict", 1, 2)
    plan, dup = K.plan_one(_call("acme", W("a/1", 2), key="k"), heads, stored, 2, T, new_ids=ids)
    assert dup.duplicate and dup.event_ids == first.outcomes[0].event_ids and not plan.values
    with pytest.raises(IdempotencyMismatch):
        K.plan_one(_call("acme", W("a/1", 3), key="k"), heads, stored, 2, T, new_ids=ids)
    assert ids.asked == [(T, 2)]


def test_calls_of_one_batch_see_each_other():
    ids = Ids()
    batch = [_call("acme", W("a/1", 1, expected=0), key="k"), _call("acme", W("a/1", 1, expected=0)),
             _call("acme", W("a/1", 1, expected=0), key="k"), _call("acme", W("a/1", 1, expected=1))]
    out = K.plan_batch(batch, {}, {}, 0, T, new_ids=ids).outcomes
    assert isinstance(out[1], ConcurrencyError)
    assert out[2].duplicate and out[2].event_ids == out[0].event_ids
    assert out[3].streams[0].first_version == 2


def test_the_packer_is_the_callers():
    packed: list[object] = []

    def counting_pack(obj):
        packed.append(obj)
        return pack(obj)

    a = K.plan_one(K.prepare("acme", [W("a/1", 2)], None, pack=counting_pack), {}, {}, 0, T,
                   new_ids=Ids(), pack=counting_pack)[0]
    b = K.plan_one(K.prepare("acme", [W("a/1", 2)], None), {}, {}, 0, T, new_ids=Ids())[0]
    assert a.values == b.values and len(packed) == 4  # two payloads, two hashed rows


def test_prepare_validates():
    with pytest.raises(ValidationError):
        K.prepare("acme", [], None)
    with pytest.raises(ValidationError):
        K.prepare("acme", [W("a/1", 1), W("a/1", 1)], None)
    with pytest.raises(ValidationError):
        K.prepare("acme", [W("a/1", 1, expected=-1)], None)
    assert K.prepare("acme", [W("a/1", 2, ids=True), W("a/2", 1)], None).missing_ids == 1


def test_id_source_from_a_one_id_function():
    seen = []
    source = K.id_source(lambda ms: seen.append(ms) or f"x{len(seen)}")
    assert source(5_000_999, 2) == ["x1", "x2"] and seen == [5000, 5000]


def test_log_digest_covers_positions_and_hashes():
    assert K.log_digest([(1, b"a" * 32)]) != K.log_digest([(2, b"a" * 32)])
    assert K.log_digest([]) == K.log_digest(iter(()))
