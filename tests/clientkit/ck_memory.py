"""The server side of the in-memory transport for the client kit tests: the production
protocol core (``engine.session`` via ``engine.sync_server``) on the in-memory log adapter."""
from __future__ import annotations

from syncline.clientkit.transports.core_server import CoreServer
from syncline.engine.records import ResolutionConfig
from syncline.engine.sync_server import ServerConfig
from syncline.store.memory_sync_log import MemorySyncLog


def core_server(resolution: ResolutionConfig | None = None, **config) -> CoreServer:
    """``config``: ``ServerConfig`` fields, e.g. ``max_behind_events=5``, ``snapshot_chunk_bytes=...``."""
    return CoreServer(MemorySyncLog(), resolution, config=ServerConfig(**config))
