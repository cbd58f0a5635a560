"""The socket server: uvicorn with a graceful WebSocket shutdown, writes coalesced per
event-loop turn, and the lean WebSocket protocol (``server/lean_ws.py``)."""
from __future__ import annotations

from .serving import CoalescingTransport, coalescing_ws_protocol, make_server

__all__ = ["CoalescingTransport", "coalescing_ws_protocol", "make_server"]
