"""Envelope helpers for the bus: partitioning, and events kept in dead letters."""
from __future__ import annotations

import dataclasses
from typing import Any

from syncline.engine.events import Actor, RecordedEvent, Retention
from syncline.store.bus_schema import partition_key


def partition_of(event: RecordedEvent, partitions: int) -> int:
    """Stable across processes and restarts (unlike ``hash()``): a stream always lands in
    the same partition, so its events are handled in order by whoever owns it. The key
    is stored on every event (``events.pkey``, store/bus_schema.partition_key), so a
    member reads only its partitions' rows; this is the same function."""
    if partitions == 1:
        return 0
    return partition_key(event.tenant, event.stream) % partitions


def event_to_doc(event: RecordedEvent) -> dict[str, Any]:
    doc = event.to_wire()
    doc["time_us"] = event.time_us
    return doc


def event_from_doc(doc: dict[str, Any], data: Any = ...) -> RecordedEvent:
    actor = doc.get("actor") or {}
    return RecordedEvent(
        id=doc["id"], tenant=doc["tenant"], stream=doc["stream"], version=doc["version"],
        position=doc["position"], type=doc["type"], schema=doc.get("schema", 1), time_us=doc.get("time_us", 0),
        actor=Actor(actor.get("user", ""), actor.get("client", "")), clock=doc.get("clock") or {},
        data=doc.get("data") if data is ... else data, meta=doc.get("meta") or {},
        retention=Retention(doc.get("retention", "standard")),
    )


def with_data(event: RecordedEvent, data: Any) -> RecordedEvent:
    return dataclasses.replace(event, data=data)
