"""uvicorn with a graceful WebSocket shutdown: clients are told why before the sockets close."""
from __future__ import annotations

import asyncio
import socket

import uvicorn
from litestar import Litestar


class GatewayServer(uvicorn.Server):
    """On shutdown, first let the gateway send every connection a ``disconnect`` message with
    the reason and flush its queue (close 1001); then uvicorn's own shutdown runs."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self.gateway_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gw = self.gateway_app.state.get("gateway")
        if gw is not None:
            try:
                await asyncio.wait_for(gw.shutdown("server shutting down"), gw.settings.shutdown_grace_s + 1)
            except Exception:
                pass
        await super().shutdown(sockets)


def make_server(app: Litestar, host: str, port: int, *, log_level: str = "warning", ws: str = "auto",
                fd: int | None = None) -> GatewayServer:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws=ws, lifespan="on",
                            timeout_graceful_shutdown=10, fd=fd, ws_ping_interval=None)
    return GatewayServer(config, app)
