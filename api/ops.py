"""Op batches (class C) for records: placeholder until the records reconcile API is wired."""
from __future__ import annotations

from typing import Any

from .errors import NotImplementedYet


async def submit_ops(gw: Any, principal: Any, client: str, ops: Any) -> list[dict]:
    raise NotImplementedYet("op batches are not wired yet")
