"""Helpers for the gateway tests: settings, tokens, and a real server in a thread."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import jwt
from waiting import wait_for

from syncline.api.app import create_app
from syncline.api.settings import Settings
from syncline.server import make_server

SECRET = "test-secret-0123456789abcdef0123456789"


def base_settings(db_url: str, **overrides: Any) -> Settings:
    s = Settings(
        database_url=db_url,
        redis_url=None,
        jwt_secret=SECRET,
        jwt_algorithm="HS256",
        jwt_public_key=None,
        heartbeat_interval_s=30.0,
        stale_after_s=30.0,
        batch_window_ms=5.0,
        rate_limit_messages=10_000,
        rate_limit_window_s=60.0,
        poll_interval_s=0.5,
        shutdown_grace_s=3.0,
        log_json=True,
        webhook_url=None,
        webhook_secret=None,
    )
    return replace(s, **overrides)


def make_token(tenant: str = "acme", user: str = "alice", roles=("member",), perms=None, ttl_s: int = 600,
               secret: str = SECRET, algorithm: str = "HS256", **extra: Any) -> str:
    claims: dict[str, Any] = {"sub": user, "tenant": tenant, "roles": list(roles), "exp": int(time.time()) + ttl_s}
    if perms is not None:
        claims["perms"] = list(perms)
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm=algorithm)


class RunningGateway:
    def __init__(self, settings: Settings, clock: Any = None) -> None:
        self.settings = settings
        self.app = create_app(settings, clock=clock)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit TCP_NODELAY. uvloop leaves Nagle on for a socket handed to
        # it (it sets NODELAY on the ones it creates): every keep-alive request then waited
        # ~40 ms for the client's delayed ACK.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.server = make_server(self.app, "127.0.0.1", self.port)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # surfaced by start()/stop()
            self.error = e

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start(self) -> "RunningGateway":
        self.thread.start()
        def started() -> bool:
            if self.error or not self.thread.is_alive():
                raise RuntimeError(f"gateway failed to start: {self.error!r}")
            return self.server.started

        wait_for(started, 20, "the gateway to start", interval=0.01)
        return self

    @property
    def gw(self):
        return self.app.state.gateway

    def token(self, **kw: Any) -> str:
        return make_token(**kw)

    def headers(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(**kw)}"}

    def call(self, coro, timeout: float = 10):
        """Run a coroutine on the server's loop (to inspect or poke server state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 15) -> None:
        if not self.thread.is_alive():
            return
        self.server.should_exit = True
        self.thread.join(timeout)


