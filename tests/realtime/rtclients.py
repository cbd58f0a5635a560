"""Clients for the realtime tests: pycrdt y-websocket clients, a remote-controlled Node
(JavaScript ``yjs`` + ``y-websocket``) driver, an awareness watcher, a small native
protocol client, and helpers that read a document's updates back from the log."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Self

import httpx
import msgpack
import pycrdt
import websockets
from cluster import make_token
from waiting import until  # noqa: F401  (re-exported: the realtime tests import it from here)

HERE = Path(__file__).parent
JS_PACKAGES = ["yjs@13", "y-websocket@3", "ws@8"]
DRIVER = "yjs_driver.mjs"


# --------------------------------------------------------------------------- waiting

async def converges(cond: Callable[[], Any], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``timeout``."""
    start = time.monotonic()
    try:
        await until(cond, timeout, "convergence", interval)
    except TimeoutError:
        return None
    return time.monotonic() - start


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- pycrdt

class WsChannel:
    """pycrdt's Channel protocol over a `websockets` client connection."""

    def __init__(self, ws, path: str) -> None:
        self.ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.ws.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration

    async def send(self, message: bytes) -> None:
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        return await self.ws.recv()


@asynccontextmanager
async def yclient(ws_base: str, doc_name: str, doc: pycrdt.Doc | None = None, *, user: str = "py",
                  sync_timeout: float = 10):
    """A pycrdt.Provider client on ``{ws_base}/v1/yjs/{doc_name}``; yields the Doc once synced."""
    doc = doc if doc is not None else pycrdt.Doc()
    url = f"{ws_base}/v1/yjs/{doc_name}?token={make_token(user)}"
    try:
        async with websockets.connect(url, ping_interval=None, max_size=None, open_timeout=10) as ws, \
                pycrdt.Provider(doc, WsChannel(ws, doc_name)) as provider:
            await asyncio.wait_for(provider.synced.wait(), sync_timeout)
            yield doc
    except BaseExceptionGroup as eg:  # the Provider's task group wraps what the test raised
        raise _single(eg) from None


def _single(eg: BaseExceptionGroup) -> BaseException:
    """The one exception inside (nested) single-member groups, else the group itself."""
    while isinstance(eg, BaseExceptionGroup) and len(eg.exceptions) == 1:
        eg = eg.exceptions[0]
    return eg


def text_of(doc: pycrdt.Doc, name: str = "text") -> str:
    return str(doc.get(name, type=pycrdt.Text))


def doc_json(doc: pycrdt.Doc) -> dict:
    """The test documents' roots as plain data (same shape as the JS driver's state)."""
    return {
        "text": text_of(doc),
        "map": doc.get("map", type=pycrdt.Map).to_py() or {},
        "items": doc.get("items", type=pycrdt.Array).to_py() or [],
    }


class AwarenessWatcher:
    """A raw y-websocket connection that only listens, collecting awareness entries."""

    def __init__(self, ws_base: str, doc_name: str, user: str = "watcher") -> None:
        self.url = f"{ws_base}/v1/yjs/{doc_name}?token={make_token(user)}"
        self.states: dict[int, Any] = {}  # client id -> state (None once removed)
        self._ws = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        self._ws = await websockets.connect(self.url, ping_interval=None, max_size=None, open_timeout=10)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await self._ws.close()

    async def _read(self) -> None:
        from syncline.engine.errors import ProtocolError
        from syncline.engine.yprotocol import AwarenessMessage, decode_message

        try:
            async for frame in self._ws:
                try:
                    msg = decode_message(frame)
                except ProtocolError:  # a message type this watcher does not need
                    msg = None
                if isinstance(msg, AwarenessMessage):
                    for e in msg.entries:
                        self.states[e.client_id] = e.state
        except websockets.ConnectionClosed:
            pass

    def users(self) -> set[str]:
        return {s.get("user") for s in self.states.values() if isinstance(s, dict)}


# --------------------------------------------------------------------------- the log

def log_updates(gw, doc_name: str, *, user: str = "auditor") -> list[tuple[int, bytes]]:
    """Every ``crdt.update`` of ``doc/<doc_name>`` as (position, update), read over REST."""
    out: list[tuple[int, bytes]] = []
    version = 1
    while True:
        r = gw.get(f"/v1/streams/doc/{doc_name}", user=user, from_version=version, limit=1000)
        r.raise_for_status()
        body = r.json()
        for e in body["events"]:
            if e["type"] == "crdt.update":
                out.append((e["position"], _bytes(e["data"])))
        if not body["more"]:
            return out
        version = body["next_version"]


def _bytes(data: Any) -> bytes:
    """An update as the REST API returns it: base64 text (or ``{"$b64": ...}``)."""
    if isinstance(data, dict):
        data = data["$b64"]
    return base64.b64decode(data) if isinstance(data, str) else bytes(data)


def replay(updates: list[tuple[int, bytes]], upto: int | None = None) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    for pos, u in updates:
        if upto is None or pos <= upto:
            doc.apply_update(u)
    return doc


# --------------------------------------------------------------------------- javascript

def install_js(dest: Path) -> str | None:
    """npm-install yjs + y-websocket + ws into ``dest``; returns why not, or None."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are needed for the JavaScript yjs clients (not installed)"
    (dest / "package.json").write_text('{"name": "syncline-realtime-tests", "private": true, "type": "module"}')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *JS_PACKAGES], cwd=dest,
                       capture_output=True, text=True, timeout=240, check=False)
    if r.returncode != 0:
        return f"npm install of {JS_PACKAGES} failed (registry unreachable?): {r.stderr[-500:]}"
    shutil.copy(HERE / DRIVER, dest / DRIVER)
    return None


class JsDriver:
    """One Node process holding any number of JavaScript Yjs clients, driven over
    stdin/stdout with one JSON command per line (see yjs_driver.mjs)."""

    def __init__(self, js_dir: Path) -> None:
        self.js_dir = js_dir
        self.proc: asyncio.subprocess.Process | None = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._stderr: asyncio.Task | None = None
        self.stderr_lines: list[str] = []

    async def start(self) -> JsDriver:
        self.proc = await asyncio.create_subprocess_exec(
            "node", DRIVER, cwd=self.js_dir, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        self._stderr = asyncio.create_task(self._read_stderr())
        return self

    async def _read(self) -> None:
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.stderr_lines.append("stdout: " + line.decode(errors="replace"))
                    continue
                fut = self._waiting.pop(msg.get("seq"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"the node driver exited: {self.stderr()}"))

    async def _read_stderr(self) -> None:
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_lines.append(line.decode(errors="replace").rstrip())

    def stderr(self) -> str:
        return "\n".join(self.stderr_lines[-40:])

    async def call(self, cmd: str, timeout: float = 30, **args: Any) -> dict:
        self._seq += 1
        seq = self._seq
        fut = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        self.proc.stdin.write((json.dumps({"seq": seq, "cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"node driver: {cmd} {args.get('id', '')} took over {timeout}s; "
                               f"stderr:\n{self.stderr()}") from None
        if not reply.get("ok"):
            raise AssertionError(f"node driver: {cmd} {args.get('id', '')} failed: {reply.get('error')}\n"
                                 f"stderr:\n{self.stderr()}")
        return reply

    # conveniences

    async def connect(self, cid: str, ws_base: str, doc: str, *, user: str | None = None,
                      timeout_ms: int = 10000) -> dict:
        return await self.call("connect", id=cid, url=f"{ws_base}/v1/yjs", doc=doc,
                               token=make_token(user or cid), timeoutMs=timeout_ms)

    async def state(self, cid: str, *, brief: bool = False) -> dict:
        return (await self.call("state", id=cid, brief=brief))["state"]

    async def text(self, cid: str) -> str:
        return (await self.state(cid))["text"]

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with suppress(TimeoutError, AssertionError, RuntimeError, ConnectionError):
                await self.call("exit", timeout=5)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for t in (self._reader, self._stderr):
            if t is not None:
                t.cancel()


# --------------------------------------------------------------------------- native protocol

class Native:
    """A native-protocol client (msgpack). Incoming messages are decoded without schema
    validation (so message types this test knows and the codec may not, such as ``sent``,
    come through) and kept in ``inbox`` by a reader task."""

    SUBPROTOCOL = "syncline.v1.msgpack"

    def __init__(self, ws) -> None:
        self.ws = ws
        self.inbox: list[dict] = []
        self.closed_code: int | None = None
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, ws_base: str, user: str, *, client: str | None = None) -> Native:
        q = f"token={make_token(user)}" + (f"&client={client}" if client else "")
        ws = await websockets.connect(f"{ws_base}/v1/ws?{q}", subprotocols=[cls.SUBPROTOCOL],
                                      ping_interval=None, open_timeout=10)
        self = cls(ws)
        await self.wait_for(lambda m: m["t"] == "welcome", 10, "welcome")
        return self

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                msg = msgpack.unpackb(frame, raw=False, strict_map_key=False) if isinstance(frame, bytes) \
                    else json.loads(frame)
                self.inbox.append(msg)
                self._new.set()
        except websockets.ConnectionClosed as e:
            self.closed_code = e.rcvd.code if e.rcvd else None
        finally:
            self._new.set()

    async def send(self, t: str, **fields: Any) -> None:
        await self.ws.send(msgpack.packb({"t": t, **fields}, use_bin_type=True))

    def find(self, pred: Callable[[dict], bool]) -> dict | None:
        return next((m for m in self.inbox if pred(m)), None)

    async def wait_for(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            m = self.find(pred)
            if m is not None:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self._task.done():
                seen = [{k: v for k, v in x.items() if k != "events"} | ({"events": len(x["events"])}
                        if "events" in x else {}) for x in self.inbox[-15:] if x["t"] != "welcome"]
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; "
                                   f"closed={self.closed_code}; last messages: {seen}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    def events(self, sub: str | None = None) -> list[dict]:
        """Every event received in ``events`` batches (of one subscription)."""
        return [e for m in self.inbox if m["t"] == "events" and (sub is None or m["sub"] == sub)
                for e in m["events"]]

    async def close(self) -> None:
        self._task.cancel()
        await self.ws.close()


def http_log(gw, user: str = "auditor", **params: Any) -> list[dict]:
    """``GET /v1/log`` pages (all of them) as a list of events."""
    out: list[dict] = []
    after = 0
    while True:
        r = httpx.get(f"{gw.url}/v1/log", params={"after": after, "limit": 1000, **params},
                      headers={"Authorization": f"Bearer {make_token(user)}"}, timeout=10)
        r.raise_for_status()
        body = r.json()
        out.extend(body["events"])
        if not body.get("more") or body["next_after"] <= after:
            return out
        after = body["next_after"]


# --------------------------------------------------------------------------- a scenario's clients

def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else f"{text[:n // 2]}…({len(text)} chars)…{text[-n // 2:]}"


class Scenario:
    """The clients of one scenario on one document, JavaScript (in a :class:`JsDriver`) and
    pycrdt, each connected through the cluster's round-robin proxy; ``where`` records the
    gateway index each connection landed on."""

    def __init__(self, cluster, js: JsDriver | None, doc: str) -> None:
        from contextlib import AsyncExitStack

        self.cluster = cluster
        self.js = js
        self.doc = doc
        self.where: dict[str, int] = {}
        self.py: dict[str, pycrdt.Doc] = {}
        self.js_ids: list[str] = []
        self._py_ctx: dict[str, Any] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self._stack.__aexit__(*exc)
        finally:
            if self.js is not None:
                for cid in list(self.js_ids):
                    with suppress(TimeoutError, AssertionError, RuntimeError, ConnectionError):
                        await self.js.call("close", id=cid, timeout=5)

    @property
    def proxy(self):
        return self.cluster.proxy

    async def add_js(self, name: str) -> str:
        await self.js.connect(name, self.proxy.ws_url, self.doc)
        self.where[name] = self.proxy.last()
        self.js_ids.append(name)
        return name

    async def add_py(self, name: str) -> pycrdt.Doc:
        ctx = yclient(self.proxy.ws_url, self.doc, user=name)
        doc = await self._stack.enter_async_context(ctx)
        self.where[name] = self.proxy.last()
        self.py[name] = doc
        return doc

    async def reconnect_js(self, name: str) -> int:
        await self.js.call("reconnect", id=name, timeoutMs=10000)
        self.where[name] = self.proxy.last()
        return self.where[name]

    async def close_js(self, name: str) -> None:
        await self.js.call("close", id=name)
        self.js_ids.remove(name)

    def placement(self) -> str:
        return ", ".join(f"{n}@gw{i}" for n, i in self.where.items())

    def assert_split(self) -> None:
        """The scenario's clients landed on every gateway of the cluster."""
        used = set(self.where.values())
        assert used == set(range(len(self.cluster))), f"clients not split across the gateways: {self.placement()}"

    async def texts(self, *, full: bool = False) -> dict[str, tuple[int, str, str]]:
        """name -> (length, sha256, text or '' unless full/short)."""
        out: dict[str, tuple[int, str, str]] = {}
        for cid in self.js_ids:
            s = await self.js.state(cid, brief=not full)
            out[cid] = (s["textLength"], s["textSha"], s.get("text", ""))
        for name, d in self.py.items():
            t = text_of(d)
            out[name] = (len(t), sha(t), t)
        return out

    async def wait_agree(self, timeout: float, what: str, cond: Callable[[str], bool] | None = None,
                         length: int | None = None) -> str:
        """Wait until every client's text is the same (and ``cond(text)`` holds, and it has
        ``length`` characters); returns the text. On timeout: AssertionError with each
        client's text, its gateway, and what the log replays to."""
        async def agreed() -> bool:
            ts = await self.texts(full=length is None or length < 100_000)
            if len({sha_ for _, sha_, _ in ts.values()}) != 1:
                return False
            n, _, t = next(iter(ts.values()))
            return (length is None or n == length) and (cond is None or cond(t))

        if await converges(agreed, timeout, interval=0.05) is not None:
            ts = await self.texts(full=True)
            return next(iter(ts.values()))[2]
        ts = await self.texts(full=True)
        try:
            logged = text_of(replay(log_updates(self.cluster[0], self.doc)))
        except (httpx.HTTPError, KeyError, ValueError) as e:  # the diagnosis must not hide the failure
            logged = f"<could not read the log: {e!r}>"
        lines = [f"  {name}@gw{self.where.get(name)}: {n} chars {_short(t)!r}" for name, (n, _, t) in ts.items()]
        raise AssertionError(f"{what}: the clients did not all reach the expected text within {timeout}s\n"
                             + "\n".join(lines)
                             + f"\n  the log of doc/{self.doc} replays to {len(logged)} chars {_short(logged)!r}")
