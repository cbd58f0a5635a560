"""Interop with the JavaScript `yjs` + `y-websocket` packages, installed from npm into a
temporary directory and driven by Node. Skipped (with the reason) only without npm/node."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pycrdt
import pytest
from test_api_yjs import texts, wait_until, yclient

HERE = Path(__file__).parent
PACKAGES = ["yjs@13", "y-websocket@3", "ws@8"]


@pytest.fixture(scope="module")
def js_dir(tmp_path_factory) -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the JavaScript y-websocket interop test (not installed)")
    d = tmp_path_factory.mktemp("yjs-js")
    (d / "package.json").write_text('{"name": "yjs-interop", "private": true, "type": "module"}')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES], cwd=d,
                       capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        pytest.skip(f"npm install of {PACKAGES} failed (registry unreachable?): {r.stderr[-500:]}")
    shutil.copy(HERE / "yjs_interop_client.mjs", d / "client.mjs")
    return d


async def run_js(js_dir: Path, **cfg) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", "client.mjs", json.dumps(cfg), cwd=js_dir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (out.decode(), err.decode())
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_js_and_python_clients_converge(srv, js_dir):
    py = pycrdt.Doc()
    url = f"{srv.ws_url}/v1/yjs"
    async with yclient(srv, "interop", py, user="alice"):
        py.get("text", type=pycrdt.Text).insert(0, "py")
        py.get("items", type=pycrdt.Array).append(0)
        js = asyncio.create_task(run_js(
            js_dir, url=url, doc="interop", token=srv.token(user="bob"), waitText="py",
            edits={"appendText": "+js", "map": {"from": "js"}, "push": [1, 2]}, untilSuffix="+py2"))
        await wait_until(lambda: texts(py) == "py+js", timeout=20)
        py.get("text", type=pycrdt.Text).insert(5, "+py2")
        state = await js
        assert state["text"] == texts(py) == "py+js+py2"
        assert state["map"] == {"from": "js"} == py.get("meta", type=pycrdt.Map).to_py()
        assert state["items"] == [0, 1, 2] == py.get("items", type=pycrdt.Array).to_py()
    # a late JavaScript joiner gets the whole state
    late = await run_js(js_dir, url=url, doc="interop", token=srv.token(user="carol"), waitText="py2")
    assert late["text"] == "py+js+py2" and late["items"] == [0, 1, 2] and late["map"] == {"from": "js"}


async def test_js_read_only_client_cannot_write(srv, js_dir):
    py = pycrdt.Doc()
    async with yclient(srv, "ro-js", py, user="alice"):
        py.get("text", type=pycrdt.Text).insert(0, "base")
        state = await run_js(js_dir, url=f"{srv.ws_url}/v1/yjs", doc="ro-js",
                             token=srv.token(user="v", roles=["viewer"]),
                             waitText="base", edits={"appendText": "EVIL"}, waitDenied=True)
        assert state["denied"]
        await asyncio.sleep(0.2)
        assert texts(py) == "base"
    events = httpx.get(f"{srv.url}/v1/streams/doc/ro-js", headers=srv.headers()).json()["events"]
    assert {e["actor"]["user"] for e in events} == {"alice"}


async def test_js_awareness_reaches_python(srv, js_dir):
    import websockets

    from syncline.engine.yprotocol import AwarenessMessage, decode_message

    async with websockets.connect(f"{srv.ws_url}/v1/yjs/aw-js?token={srv.token(user='alice')}") as ws:
        js = asyncio.create_task(run_js(js_dir, url=f"{srv.ws_url}/v1/yjs", doc="aw-js",
                                        token=srv.token(user="bob"), awareness="bob", lingerMs=300))
        seen = []
        async with asyncio.timeout(20):
            while not any(e.state and e.state.get("user") == "bob" for e in seen):
                msg = decode_message(await ws.recv())
                if isinstance(msg, AwarenessMessage):
                    seen.extend(msg.entries)
            await js
            # when the JS client leaves, its awareness is cleared
            while True:
                msg = decode_message(await ws.recv())
                if isinstance(msg, AwarenessMessage) and any(e.state is None for e in msg.entries):
                    break
