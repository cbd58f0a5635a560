"""Merge functions obey their laws, and the registry refuses those that do not."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.codec import canonical
from syncline.engine.records import (
    COUNTER,
    MAX,
    UNION,
    ClientOp,
    CollectionPolicy,
    InvalidResolutionConfig,
    MergeFunctionRejected,
    MergeRegistry,
    RecordsState,
    ResolutionConfig,
    merged,
    reconcile,
)

ints = st.integers(-(1 << 53), 1 << 53)
elements = st.lists(st.one_of(st.integers(-50, 50), st.text(max_size=3)), max_size=5)
numbers = st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 0.0, -0.0, 1, 1.0]))

CASES = [(COUNTER, ints), (UNION, elements), (MAX, numbers)]


def same(a, b) -> bool:
    return canonical(a) == canonical(b)


@pytest.mark.parametrize("mf,operands", CASES, ids=lambda x: getattr(x, "name", ""))
def test_builtin_merges_are_commutative_and_associative(mf, operands):
    @given(operands, operands, operands)
    def check(a, b, c):
        a, b, c = mf.validate(a), mf.validate(b), mf.validate(c)
        assert same(mf.fn(a, b), mf.fn(b, a))
        assert same(mf.fn(mf.fn(a, b), c), mf.fn(a, mf.fn(b, c)))

    check()


@pytest.mark.parametrize("mf,operands", [(UNION, elements), (MAX, numbers)], ids=["union", "max"])
def test_idempotent_merges_are_idempotent(mf, operands):
    assert mf.idempotent

    @given(operands)
    def check(a):
        a = mf.validate(a)
        assert same(mf.fn(a, a), a)

    check()


def test_counter_does_not_claim_idempotence():
    # It is not (1 + 1 != 1): exactly-once comes from op-id deduplication instead.
    assert not COUNTER.idempotent


@pytest.mark.parametrize(
    "bad",
    [(COUNTER, 1.5), (COUNTER, True), (COUNTER, "1"), (UNION, [True]), (UNION, [1.0]), (UNION, "ab"),
     (MAX, float("nan")), (MAX, float("inf")), (MAX, "x"), (MAX, False)],
)
def test_builtin_merges_refuse_operands_that_would_break_convergence(bad):
    mf, operand = bad
    with pytest.raises((TypeError, ValueError)):
        mf.validate(operand)


def test_registry_refuses_a_non_commutative_function():
    reg = MergeRegistry()
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("minus", lambda a, b: a - b, samples=[0, 1, 5, -2])
    assert e.value.code == "merge_function_not_commutative"
    assert "minus" not in reg


def test_registry_refuses_a_commutative_but_not_associative_function():
    reg = MergeRegistry()
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("mean", lambda a, b: (a + b) / 2, samples=[0.0, 1.0, 4.0])
    assert e.value.code == "merge_function_not_associative"


def test_registry_refuses_a_false_idempotence_claim():
    reg = MergeRegistry()
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("add", lambda a, b: a + b, samples=[1, 2, 3], idempotent=True)
    assert e.value.code == "merge_function_not_idempotent"


def test_registry_refuses_a_wrong_identity_and_a_raising_function_and_a_taken_name():
    reg = MergeRegistry()
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("add", lambda a, b: a + b, samples=[1, 2], initial=1)
    assert e.value.code == "merge_function_bad_identity"
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("boom", lambda a, b: a / 0, samples=[1, 2])
    assert e.value.code == "merge_function_raised"
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("one", lambda a, b: a, samples=[1])
    assert e.value.code == "merge_function_bad_samples"
    reg.register("add", lambda a, b: a + b, samples=[1, 2], initial=0)
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("add", lambda a, b: a + b, samples=[1, 2])
    assert e.value.code == "merge_function_name_taken"


def test_registry_catches_representation_differences_that_equality_hides():
    # max(1, 1.0) is 1 but max(1.0, 1) is 1.0: equal under ==, different bytes.
    reg = MergeRegistry()
    with pytest.raises(MergeFunctionRejected) as e:
        reg.register("naive_max", max, samples=[1, 1.0, 2])
    assert e.value.code == "merge_function_not_commutative"


def test_config_refuses_an_unknown_merge_name():
    with pytest.raises(InvalidResolutionConfig):
        ResolutionConfig({"c": CollectionPolicy(fields={"x": merged("nope")})})


def test_a_registered_lawful_function_is_used_by_reconcile():
    reg = MergeRegistry.with_builtins()
    reg.register("min", min, samples=[3, 1, 2, -7], validate=lambda x: int(x), idempotent=True)
    cfg = ResolutionConfig({"c": CollectionPolicy(fields={"low": merged("min")})}, registry=reg)
    ops = [
        ClientOp(f"o{i}", f"k{i}", "u", "rec/c/1", VectorClock({f"k{i}": 1}), HLCTimestamp(i, 0, f"k{i}"), {"low": v})
        for i, v in enumerate([5, 2, 9])
    ]
    state, _, outcomes = reconcile(RecordsState(), ops, cfg)
    assert state.get("rec/c/1").values() == {"low": 2}
    assert [o.kind.value for o in outcomes] == ["applied", "merged", "merged"]
