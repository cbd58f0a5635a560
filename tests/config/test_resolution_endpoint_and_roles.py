"""A real `syncline serve --config`: GET /v1/config/resolution (auth, every tenant alike) and
the [roles] table applied to tokens."""
from __future__ import annotations

import textwrap

import httpx
import pytest
from config_support import token

from syncline.engine.records import InvalidResolutionConfig, config_from_rules

CONFIG = """
[roles]
triager = ["read", "write"]      # a new role
auditor = ["read"]               # the default auditor also had system_read: the file wins
nobody = []

[resolution]
default = "lww"

[resolution.collections.notes.fields]
title = "manual"
likes = "counter"
tags = "set_union"

[resolution.collections.tasks]
strict = true
[resolution.collections.tasks.fields]
due = "syncline_example_merges:earliest"
"""


@pytest.fixture
def server(configured_server, tmp_path):
    path = tmp_path / "syncline.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return configured_server(path)


def test_resolution_rules_are_published_to_every_tenant(server):
    assert server.get("/v1/config/resolution").status_code == 401
    assert server.get("/v1/config/resolution", "not-a-token").status_code == 401
    acme = server.get("/v1/config/resolution", token("alice", "acme"))
    globex = server.get("/v1/config/resolution", token("bob", "globex", roles=("viewer",)))
    assert acme.status_code == globex.status_code == 200
    assert acme.json() == globex.json()
    rules = acme.json()["rules"]
    assert rules["collections"]["notes"] == {"default": "lww", "strict": False,
                                             "fields": {"likes": "counter", "tags": "set_union", "title": "manual"}}
    assert rules["collections"]["tasks"] == {"default": "lww", "strict": True,
                                             "fields": {"due": "syncline_example_merges:earliest"}}
    assert rules["default_collection"] == {"default": "lww", "strict": False, "fields": {}}
    assert rules["custom_merges"] == ["syncline_example_merges:earliest"]
    # A role without 'read' may not fetch them (the published rules are for clients that sync).
    refused = server.get("/v1/config/resolution", token("eve", "acme", roles=("nobody",)))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


def test_the_published_rules_rebuild_the_server_config(server):
    import sys

    from config_support import EXAMPLES

    sys.path.insert(0, str(EXAMPLES))
    try:
        from syncline.clientkit.rules import config_from_published

        rules = server.get("/v1/config/resolution", token()).json()["rules"]
        cfg = config_from_published(rules)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert cfg.field_rule("tasks", "due")[1].name == "syncline_example_merges:earliest"
    assert cfg.field_rule("tasks", "other") is None  # strict collection
    assert cfg.field_rule("notes", "likes")[1].name == "counter"
    with pytest.raises(InvalidResolutionConfig, match="no merge function"):
        config_from_rules(rules)  # (without the custom function registered, they cannot be built)


def test_roles_from_the_file(server):
    def append(tok: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/streams/cart/1", json={"events": [{"type": "cart.noted", "data": {}}]},
                          headers={"Authorization": f"Bearer {tok}"}, timeout=5)

    assert append(token("tria", roles=("triager",))).status_code == 201  # the new role writes
    assert append(token("vic", roles=("viewer",))).status_code == 403  # the defaults stay
    audit = server.get("/v1/streams/$audit", token("aud", roles=("auditor",)))
    assert audit.status_code == 403 and audit.json()["code"] == "system_stream_forbidden"
    admin = server.get("/v1/streams/$audit", token("adm", roles=("admin",)))
    assert admin.status_code == 200
