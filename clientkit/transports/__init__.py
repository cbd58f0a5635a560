"""Transports: the I/O shells that carry protocol messages for a session core.

Every transport gives the same connection interface (``base.Connection``):
``await send(msg)``, ``await recv() -> msg``, ``await close()``, raising
``ConnectionClosed`` when the connection ends. The core never sees which one it is.
"""
