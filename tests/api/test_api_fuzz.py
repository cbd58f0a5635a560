"""Hypothesis against the REST surface: whatever the query, path or body, no 5xx, and every
error is JSON with a string `code`."""
from __future__ import annotations

from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GETS = ["/v1/log", "/v1/events/poll", "/api/events/poll", "/v1/deltas", "/v1/sync/deltas", "/v1/snapshots",
        "/v1/conflicts", "/v1/docs/{x}", "/v1/docs/{x}/diff", "/v1/docs/{x}/snapshot", "/v1/records/{x}/{x}",
        "/v1/streams/{x}", "/v1/rooms/{x}/presence", "/v1/commands/{x}",
        "/v1/feeds/users/{x}", "/v1/feeds/rooms/{x}", "/v1/rooms/{x}/history", "/v1/stats/streams/{x}"]
POSTS = ["/v1/streams/{x}", "/v1/commands/{x}", "/v1/ops"]
PARAMS = ["after", "limit", "prefix", "stream", "type", "at", "cursor", "chunk", "sv", "from_version", "text", "map",
          "before"]
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | text,
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=8)


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.url, r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("code"), str) and body["code"], body


def test_no_5xx_and_errors_have_codes(srv):
    client = httpx.Client(base_url=srv.url, headers={**srv.headers(), "Idempotency-Key": "fuzz"})

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(GETS), seg=text.filter(bool),
           params=st.dictionaries(st.sampled_from(PARAMS), text, max_size=4))
    def gets(path, seg, params):
        _check(client.get(path.replace("{x}", quote(seg, safe="")), params=params))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(POSTS),
           seg=st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5})?(/[a-z0-9]{1,3})?", fullmatch=True),
           body=json_values)
    def posts(path, seg, body):
        _check(client.post(path.replace("{x}", seg), json=body))

    with client:
        gets()
        posts()
