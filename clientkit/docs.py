"""Yjs document replicas: a pycrdt ``Doc`` synced through ``/v1/yjs/{doc}`` (y-websocket).

The doc is always readable and writable locally; while connected, local updates are
sent as they happen and remote ones applied. On every (re)connect both sides run the
y-protocols sync (step 1 / step 2), which merges whatever either side did meanwhile:
Yjs merges cannot conflict, so offline edits need no queue of their own.
"""
from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import quote, urlencode

import pycrdt
import websockets

from syncline.engine import yprotocol as Y
from syncline.engine.errors import ProtocolError

log = logging.getLogger("clientkit.docs")


class DocReplica:
    def __init__(self, base_url: str, token: str, doc_id: str, *, backoff_base_s: float = 0.25,
                 backoff_max_s: float = 10.0, rng: random.Random | None = None) -> None:
        self._base = (base_url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
                      + f"/v1/yjs/{quote(doc_id, safe='')}?")
        self.url = self._base + urlencode({"token": token})
        self.doc_id = doc_id
        self.doc = pycrdt.Doc()
        self.online = False
        self.synced = asyncio.Event()
        self._ws = None
        self._task: asyncio.Task | None = None
        self._backoff = (backoff_base_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._applying_remote = False
        self._sub = self.doc.observe(self._on_local_update)
        self.changed = asyncio.Event()

    def set_token(self, token: str) -> None:
        """The token of the next (re)connection: the server closes a Yjs socket at its token's
        ``exp`` (4401 token_expired), and the replica reconnects with this one."""
        self.url = self._base + urlencode({"token": token})

    def text(self, name: str = "text") -> pycrdt.Text:
        return self.doc.get(name, type=pycrdt.Text)

    def map(self, name: str) -> pycrdt.Map:
        return self.doc.get(name, type=pycrdt.Map)

    def _on_local_update(self, event: pycrdt.TransactionEvent) -> None:
        self.changed.set()
        if self._applying_remote or self._ws is None:
            return  # offline edits travel with the next sync step 2
        frame = Y.encode_sync_update(event.update)
        ws = self._ws
        asyncio.get_running_loop().create_task(self._send(ws, frame))

    async def _send(self, ws, frame: bytes) -> None:
        try:
            await ws.send(frame)
        except Exception:  # noqa: BLE001 - the reconnect's sync covers what was lost
            pass

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None

    async def _run(self) -> None:
        attempt = 0
        base, cap = self._backoff
        while True:
            try:
                async with websockets.connect(self.url, max_size=16 * 1024 * 1024, ping_interval=None) as ws:
                    attempt = 0
                    self._ws = ws
                    self.online = True
                    await ws.send(Y.sync_step1(self.doc))
                    async for frame in ws:
                        if isinstance(frame, str):
                            continue
                        try:
                            msg = Y.decode_message(frame)
                        except ProtocolError as e:
                            log.warning("dropped an invalid y-websocket frame: %s", e.message)
                            continue
                        if isinstance(msg, Y.SyncStep1):
                            await ws.send(Y.handle_sync(self.doc, msg))
                            # ... and ask for what we lack (servers answer step 1 with step 2).
                        elif isinstance(msg, (Y.SyncStep2, Y.SyncUpdate)):
                            self._applying_remote = True
                            try:
                                Y.handle_sync(self.doc, msg)
                            finally:
                                self._applying_remote = False
                            if isinstance(msg, Y.SyncStep2):
                                self.synced.set()
                            self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: reconnect later
                log.info("yjs connection for %s ended: %s", self.doc_id, type(e).__name__)
            finally:
                self._ws = None
                self.online = False
                self.synced.clear()
            attempt += 1
            delay = min(cap, base * 2 ** min(attempt, 16))
            await asyncio.sleep(delay / 2 + self._rng.random() * delay / 2)
