"""The HTTP side of the pages: /app/ is served, ``POST /dev/token`` refuses with a real
secret, ``GET /v1/ops/stats`` needs system_read and stays in the tenant, and
``GET /v1/config/resolution`` publishes the records' rules (board.title manual by default)."""
from __future__ import annotations

import httpx
import pytest
from security.sec_limits_support import TENANT, token

from syncline.api.ops import default_resolution
from syncline.engine.errors import ValidationError

BODY = {"tenant": "acme", "user": "dev", "role": "admin"}


def test_dev_token_is_refused_with_a_real_secret(server):
    r = httpx.post(f"{server.url}/dev/token", json=BODY, timeout=10)
    assert r.status_code == 403
    assert r.json()["code"] == "dev_login_disabled"
    assert "token" not in r.json()


def test_pages_are_served_without_a_token(server):
    for path, marker in (("/app/", "Collaborative editor"), ("/app/editor.html", 'src="editor.js"'),
                         ("/app/board.html", 'src="board.js"'), ("/app/ops.html", 'src="ops.js"')):
        r = httpx.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 200 and marker in r.text, path
    js = httpx.get(f"{server.url}/app/editor.js", timeout=10)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert httpx.get(f"{server.url}/app/nope.js", timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/app/../pyproject.toml", timeout=10).status_code == 404


def test_ops_stats_route_needs_system_read_and_stays_in_the_tenant(server):
    url = f"{server.url}/v1/ops/stats"
    member = httpx.get(url, headers={"Authorization": f"Bearer {token('mo')}"}, timeout=10)
    assert member.status_code == 403 and member.json()["code"] == "forbidden"
    assert httpx.get(url, timeout=10).status_code == 401
    other = httpx.get(url, headers={"Authorization": f"Bearer {token('eve', tenant='globex', roles=('admin',))}",
                                    "X-Tenant": TENANT}, timeout=10)
    assert other.status_code == 403 and other.json()["code"] == "tenant_violation"
    mine = httpx.get(url, headers={"Authorization": f"Bearer {token('audrey', roles=('auditor',))}"}, timeout=10)
    assert mine.status_code == 200
    body = mine.json()
    assert body["tenant"] == TENANT and body["store"]["state"] == "up"
    assert set(body["connections"]) == {"native", "yjs", "total"}


def test_resolution_config_is_published_with_the_manual_board_title(server, serve):
    auth = {"Authorization": f"Bearer {token('mo')}"}
    body = httpx.get(f"{server.url}/v1/config/resolution", headers=auth, timeout=10).json()["rules"]
    assert body["collections"]["board"]["fields"]["title"] == "manual"
    assert body["default_collection"]["default"] == "lww"
    assert httpx.get(f"{server.url}/v1/config/resolution", timeout=10).status_code == 401
    # SYNCLINE_RECORDS_MANUAL_FIELDS names them (empty: every field last-writer-wins)
    assert default_resolution(()).collections == {}
    with pytest.raises(ValidationError):
        default_resolution(("title",))  # not collection.field: the server refuses to start
    notes = serve(records_manual_fields="notes.title,notes.body")
    rules = httpx.get(f"{notes.url}/v1/config/resolution", headers=auth, timeout=10).json()["rules"]
    fields = rules["collections"]["notes"]
    assert set(fields["fields"]) == {"title", "body"}
