"""Issue 15, item 5: a real y-websocket client (JavaScript, from npm) is closed at its
token's ``exp`` (4401 token_expired) and reconnects with a new token in ``params``, as
docs/security.md#tokens-and-transport tells; its edits before and after both reach the log."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sec_tokens_support import RunningGateway, base_settings, exp_in, token

HERE = Path(__file__).parent
PACKAGES = ["yjs@13", "y-websocket@3", "ws@8"]


@pytest.fixture(scope="module")
def js_dir(tmp_path_factory) -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the y-websocket token refresh test (not installed)")
    d = tmp_path_factory.mktemp("sec-yjs-js")
    (d / "package.json").write_text('{"name": "sec-yjs-refresh", "private": true, "type": "module"}')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES], cwd=d,
                       capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        pytest.skip(f"npm install of {PACKAGES} failed (registry unreachable?): {r.stderr[-500:]}")
    shutil.copy(HERE / "sec_yjs_refresh.mjs", d / "client.mjs")
    return d


async def test_y_websocket_reconnects_with_a_new_token_in_params(tmp_path, js_dir):
    g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/js.db", jwt_leeway_s=0.0)).start()
    try:
        exp = exp_in(1.5)
        cfg = {"url": f"{g.ws_url}/v1/yjs", "doc": "refresh", "token": token(exp=exp),
               "fresh": token(exp=exp_in(600)), "timeoutMs": 15000}
        proc = await asyncio.create_subprocess_exec("node", "client.mjs", json.dumps(cfg), cwd=js_dir,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, (out.decode(), err.decode())
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result["closes"] == [{"code": 4401, "reason": "token_expired"}]
        assert time.time() > exp
        r = httpx.get(f"{g.url}/v1/docs/refresh", params={"text": "text"},
                      headers={"Authorization": f"Bearer {token('bob')}"})
        assert r.status_code == 200 and r.json()["text"]["text"] == "before after"
    finally:
        g.stop()
