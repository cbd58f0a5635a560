"""Upcasters lift payloads written with an old ``schema`` to the current one, on read.

Register one function per (type, from_schema); it returns the payload at
``from_schema + 1``. Reading applies them in a chain until no upcaster matches.
"""
from __future__ import annotations

from typing import Any, Callable

Upcaster = Callable[[Any], Any]


class UpcasterRegistry:
    def __init__(self) -> None:
        self._fns: dict[tuple[str, int], Upcaster] = {}

    def register(self, type_: str, from_schema: int) -> Callable[[Upcaster], Upcaster]:
        def deco(fn: Upcaster) -> Upcaster:
            key = (type_, from_schema)
            if key in self._fns:
                raise ValueError(f"an upcaster for {type_} schema {from_schema} exists")
            self._fns[key] = fn
            return fn

        return deco

    def __bool__(self) -> bool:
        return bool(self._fns)

    def upcast(self, type_: str, schema: int, data: Any) -> tuple[int, Any]:
        while (fn := self._fns.get((type_, schema))) is not None:
            data = fn(data)
            schema += 1
        return schema, data
