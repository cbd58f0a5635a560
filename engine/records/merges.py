"""Merge functions for fields whose concurrent writes combine instead of compete.

A merge field holds an accumulator; every accepted op contributes one operand,
exactly once (op ids are deduplicated), so the result is the same in any order
as long as the function is commutative and associative. ``MergeRegistry.register``
checks those laws on sample operands and refuses a function that breaks them.
Equality in the checks is by canonical encoding, so ``1`` and ``1.0`` or two
orderings of a set representation count as different: replicas must agree on
bytes, not only on ``==``.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable, Iterable

from ..codec import canonical
from .errors import (
    MERGE_BAD_IDENTITY,
    MERGE_BAD_SAMPLES,
    MERGE_NAME_TAKEN,
    MERGE_NOT_ASSOCIATIVE,
    MERGE_NOT_COMMUTATIVE,
    MERGE_NOT_IDEMPOTENT,
    MERGE_RAISED,
    MergeFunctionRejected,
    UnknownMergeFunction,
)


class _NoInitial:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_INITIAL"


NO_INITIAL: Any = _NoInitial()  # the accumulator starts as the first operand
SAMPLES_MAX = 24  # associativity checks cost samples**3 calls


def _identity(x: Any) -> Any:
    return x


@dataclass(frozen=True, slots=True)
class MergeFunction:
    """``fn(acc, operand) -> acc``; ``validate`` turns a wire operand into a normalized one
    (raising ``TypeError``/``ValueError`` when it is unacceptable); ``encode`` turns a
    normalized value back into a msgpack-able one, with ``validate(encode(v)) == v``."""

    name: str
    fn: Callable[[Any, Any], Any]
    validate: Callable[[Any], Any] = _identity
    encode: Callable[[Any], Any] = _identity
    initial: Any = NO_INITIAL
    idempotent: bool = False

    def combine(self, acc: Any, operand: Any) -> Any:
        return operand if acc is NO_INITIAL else self.fn(acc, operand)


def _same(a: Any, b: Any) -> bool:
    try:
        return canonical(a) == canonical(b)
    except Exception:  # values the codec cannot encode: fall back to ==
        return bool(a == b)


def check_laws(mf: MergeFunction, samples: Iterable[Any]) -> None:
    """Raise :class:`MergeFunctionRejected` unless ``mf`` is commutative and associative
    (and idempotent, and ``initial`` an identity, when claimed) on ``samples``."""
    values = list(samples)
    if len(values) < 2 or len(values) > SAMPLES_MAX:
        raise MergeFunctionRejected(
            MERGE_BAD_SAMPLES, f"give between 2 and {SAMPLES_MAX} samples", name=mf.name
        )
    f = mf.fn
    try:
        values = [mf.validate(v) for v in values]
        for a, b in product(values, repeat=2):
            if not _same(f(a, b), f(b, a)):
                raise MergeFunctionRejected(
                    MERGE_NOT_COMMUTATIVE,
                    f"{mf.name}({a!r}, {b!r}) != {mf.name}({b!r}, {a!r})",
                    name=mf.name,
                )
        for a, b, c in product(values, repeat=3):
            if not _same(f(f(a, b), c), f(a, f(b, c))):
                raise MergeFunctionRejected(
                    MERGE_NOT_ASSOCIATIVE,
                    f"{mf.name} is not associative on {a!r}, {b!r}, {c!r}",
                    name=mf.name,
                )
        if mf.idempotent:
            for a in values:
                if not _same(f(a, a), a):
                    raise MergeFunctionRejected(
                        MERGE_NOT_IDEMPOTENT, f"{mf.name}({a!r}, {a!r}) != {a!r}", name=mf.name
                    )
        if mf.initial is not NO_INITIAL:
            for a in values:
                if not (_same(f(mf.initial, a), a) and _same(f(a, mf.initial), a)):
                    raise MergeFunctionRejected(
                        MERGE_BAD_IDENTITY,
                        f"{mf.initial!r} is not an identity of {mf.name} (fails on {a!r})",
                        name=mf.name,
                    )
    except MergeFunctionRejected:
        raise
    except Exception as e:  # the function (or validate) blew up on a sample
        raise MergeFunctionRejected(
            MERGE_RAISED, f"{mf.name} raised {type(e).__name__}: {e}", name=mf.name
        ) from e


class MergeRegistry:
    """Named merge functions. Registration checks the laws; lookup is by name."""

    def __init__(self) -> None:
        self._fns: dict[str, MergeFunction] = {}

    @classmethod
    def with_builtins(cls) -> MergeRegistry:
        reg = cls()
        reg.register_function(COUNTER, COUNTER_SAMPLES)
        reg.register_function(UNION, UNION_SAMPLES)
        reg.register_function(MAX, MAX_SAMPLES)
        return reg

    def register(
        self,
        name: str,
        fn: Callable[[Any, Any], Any],
        *,
        samples: Iterable[Any],
        validate: Callable[[Any], Any] = _identity,
        encode: Callable[[Any], Any] = _identity,
        initial: Any = NO_INITIAL,
        idempotent: bool = False,
    ) -> MergeFunction:
        mf = MergeFunction(name, fn, validate, encode, initial, idempotent)
        return self.register_function(mf, samples)

    def register_function(self, mf: MergeFunction, samples: Iterable[Any]) -> MergeFunction:
        if not isinstance(mf.name, str) or not mf.name or mf.name in ("lww", "manual"):
            raise MergeFunctionRejected(MERGE_BAD_SAMPLES, f"invalid merge name {mf.name!r}")
        if mf.name in self._fns:
            raise MergeFunctionRejected(MERGE_NAME_TAKEN, f"{mf.name!r} is registered", name=mf.name)
        check_laws(mf, samples)
        self._fns[mf.name] = mf
        return mf

    def get(self, name: str) -> MergeFunction:
        try:
            return self._fns[name]
        except KeyError:
            raise UnknownMergeFunction(f"no merge function {name!r}", name=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._fns))


# --------------------------------------------------------------------------- built-ins

INT_LIMIT = 1 << 53  # operands stay exact in JSON clients and far from msgpack's int64 edge
SET_ELEMENTS_MAX = 10_000


def _validate_increment(x: Any) -> int:
    # Integers only: float addition is not associative, so float counters would
    # differ in their last bits between replicas that added in different orders.
    if type(x) is not int or not -INT_LIMIT <= x <= INT_LIMIT:
        raise TypeError("a counter operand is an integer increment")
    return x


# The built-in functions are C callables (``operator.add``: ``a + b``; ``operator.or_``:
# ``a | b``): one is called per merge field per op, on the reconcile and fold paths,
# and a Python function of one line cost a frame each time.
_add = operator.add


COUNTER = MergeFunction("counter", _add, _validate_increment, initial=0)
COUNTER_SAMPLES = (0, 1, -3, 7, 1 << 40)


def _validate_elements(x: Any) -> frozenset:
    if not isinstance(x, (list, tuple, set, frozenset)) or len(x) > SET_ELEMENTS_MAX:
        raise TypeError("a set-union operand is a list of elements")
    for e in x:
        # str and int only: True == 1 == 1.0 hash alike, and a frozenset would keep
        # whichever came first, so the representation would depend on order.
        if type(e) is not str and (type(e) is not int or not -INT_LIMIT <= e <= INT_LIMIT):
            raise TypeError("set elements are strings or integers")
    return frozenset(x)


def _sorted_elements(s: frozenset) -> list:
    # Integers first, then strings, each in their natural order: what
    # ``sorted(s, key=lambda e: (type(e) is str, e))`` gives, without a key call per
    # element (elements are exactly int or str, see _validate_elements).
    strs = [e for e in s if type(e) is str]
    if len(strs) == len(s) or not strs:
        return sorted(s)
    return sorted([e for e in s if type(e) is not str]) + sorted(strs)


_union = operator.or_  # frozenset | frozenset (operands are validated into frozensets)


UNION = MergeFunction(
    "set_union", _union, _validate_elements, _sorted_elements, initial=frozenset(), idempotent=True
)
UNION_SAMPLES: tuple[list[int | str], ...] = ([], [1], ["a", 2], [1, "a"], ["b"])


def _validate_number(x: Any) -> int | float:
    if type(x) is int:
        if not -INT_LIMIT <= x <= INT_LIMIT:
            raise ValueError("integer out of range")
        return x
    if type(x) is float:
        if not math.isfinite(x):
            raise ValueError("max operands are finite numbers")
        return 0.0 if x == 0 else x  # -0.0 and 0.0 are equal but encode differently
    raise TypeError("a max operand is a number")


def _max(a: int | float, b: int | float) -> int | float:
    if a > b:
        return a
    if b > a:
        return b
    # Equal values of different types (1 and 1.0): pick the float, whichever side
    # it is on, so the result does not depend on the argument order.
    return a if type(a) is float else b


MAX = MergeFunction("max", _max, _validate_number, idempotent=True)
MAX_SAMPLES = (0, 1, 1.0, -2.5, 7, 3.0, 0.0)
