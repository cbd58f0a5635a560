"""The WebSocket hot path: the lazy outbox."""
from __future__ import annotations

import asyncio
import random

import pycrdt

from syncline.api.errors import WS_TRY_AGAIN
from syncline.api.wsbase import OUTBOX_FRAMES_MAX, Outbox


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def labels(self, *a):
        return self

    def inc(self, k: int = 1) -> None:
        self.n += k


class _Metrics:
    def __init__(self) -> None:
        self.ws_messages = _Counter()
        self.ws_closes = _Counter()


class _Socket:
    def __init__(self, slow: float = 0.0) -> None:
        self.sent: list = []
        self.closed: tuple | None = None
        self.slow = slow

    async def send(self, event: dict) -> None:
        if self.slow:
            await asyncio.sleep(self.slow)
        self.sent.append(event["bytes"] if event["bytes"] is not None else event["text"])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


async def test_outbox_is_idle_without_frames_and_keeps_order() -> None:
    sock, metrics = _Socket(), _Metrics()
    box = Outbox(sock, "yjs", metrics)
    assert box.task is None and box.frames is None  # an idle connection holds no task or buffer
    for i in range(5):
        box.put(bytes([i]))
    box.put("text")
    assert box.task is not None
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sock.sent == [bytes([i]) for i in range(5)] + ["text"]
    assert box.task is None and box.frames is None
    assert metrics.ws_messages.n == 6
    box.put(b"again")  # a new run after going idle
    box.close(1000, "bye")
    box.put(b"after close")  # ignored
    await box.drain(1.0)
    assert sock.sent[-1] == b"again" and sock.closed == (1000, "bye")
    assert box.task is None


async def test_outbox_overflow_closes_with_try_again() -> None:
    sock = _Socket(slow=0.001)
    box = Outbox(sock, "yjs", _Metrics())
    for i in range(OUTBOX_FRAMES_MAX + 10):
        box.put(b"x")
    assert box.closed and box.close_code == WS_TRY_AGAIN
    await box.drain(5.0)
    assert sock.closed is not None and sock.closed[0] == WS_TRY_AGAIN
    assert len(sock.sent) <= OUTBOX_FRAMES_MAX


async def test_outbox_peer_gone_marks_closed() -> None:
    class Broken(_Socket):
        async def send(self, event: dict) -> None:
            raise ConnectionResetError

    box = Outbox(Broken(), "yjs", _Metrics())
    box.put(b"a")
    box.put(b"b")
    await box.drain(1.0)
    assert box.closed and box.task is None and box.frames is None


def _keystrokes(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    for _ in range(n):
        length = len(text)
        if length and rnd.random() < 0.35:
            pos = rnd.randrange(length)
            del text[pos:min(length, pos + rnd.randint(1, 3))]
        else:
            text.insert(rnd.randint(0, length), rnd.choice("abcdefgh "))
    return updates


# (brings_news moved into the engine, Document.brings_news: its property tests are in
# tests/engine/test_ynews.py, where the answer is checked against "applying it changes
# the state" on random documents and updates in any order.)


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_coalescing_transport_one_write_per_turn_in_order_and_flushed_on_close() -> None:
    from syncline.server import CoalescingTransport

    raw = _Transport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    for i in range(5):
        t.write(bytes([i]))
    assert raw.writes == [] and t.get_write_buffer_size() == 5
    await asyncio.sleep(0)
    assert raw.writes == [bytes(range(5))]  # one socket write for the burst
    t.write(b"a")
    await asyncio.sleep(0)
    t.write(b"b")
    t.write(b"")
    t.close()  # what is buffered goes out before the close
    assert raw.writes == [bytes(range(5)), b"a", b"b"] and raw.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
