"""The idempotent handler the network bus tests run in every member (Python in-process,
Python over the WebSocket; examples/bus-consumer-node/consumer.mjs does the same in JS):
the effect is a file named by the event id, created exclusively, so an event has one
effect however often it is delivered; a redelivery of a done event is recorded in
``dups/`` and acked. Each effect records when it happened (wall-clock µs), so the test
can check that a stream's events took effect in version order."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class PoisonError(Exception):
    pass


def apply_effect(effects: Path, event: dict[str, Any], member: str, attempt: int, delivery_id: str = "",
                 fail_types: frozenset[str] = frozenset({"poison.pill"})) -> str:
    if event["type"] in fail_types:
        raise PoisonError(f"cannot handle {event['type']} (event {event['id']})")
    record = {"id": event["id"], "stream": event["stream"], "version": event["version"], "member": member,
              "attempt": attempt, "at_us": time.time_ns() // 1000}
    try:
        fd = os.open(effects / "by-id" / event["id"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        (effects / "dups" / f"{event['id']}.{member}.{delivery_id}").write_text(json.dumps(record))
        return "duplicate"
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
    return "done"


def prepare(effects: Path) -> None:
    (effects / "by-id").mkdir(parents=True, exist_ok=True)
    (effects / "dups").mkdir(parents=True, exist_ok=True)


def read_effects(effects: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in (effects / "by-id").iterdir()}
