"""A custom merge function for docs/examples/syncline.toml (``syncline_example_merges:earliest``).

A merge function combines every write of a field, in any order, to the same result: it
must be commutative and associative (``custom_merge`` checks that on its samples when the
server, or a client, registers it). Both the server and every client import this module,
so it must be importable on both: installed, or its folder on ``PYTHONPATH``.
"""
from __future__ import annotations

from datetime import date

from syncline.engine.records import custom_merge


def _iso_date(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("a due date is an ISO date string, YYYY-MM-DD")
    return date.fromisoformat(value).isoformat()  # ValueError for anything else


@custom_merge(samples=["2026-01-05", "2025-12-31", "2026-03-01", "2026-01-05"], validate=_iso_date,
              idempotent=True)
def earliest(a: str, b: str) -> str:
    """Two people propose a due date: the earliest one holds (ISO dates sort as text)."""
    return min(a, b)
