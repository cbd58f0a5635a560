"""`syncline config check` / `show`: problems named by line and key, the exit code, masking."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from config_support import ROOT, clean_env

from syncline.api.config_file import check_file, effective, key_lines, mask_url
from syncline.cli import main


def write(tmp_path, text: str, name: str = "syncline.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def check(path, **env):
    return CliRunner(env=env).invoke(main, ["config", "check", "--config", str(path)])


def test_a_valid_file_passes(tmp_path):
    path = write(tmp_path, """
        [server]
        port = 8100
        [redis]
        url = "redis://127.0.0.1:6379/0"
        [resolution.collections.notes.fields]
        title = "manual"
        likes = "counter"
    """)
    result = check(path)
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_unknown_key_names_line_key_and_suggests(tmp_path):
    path = write(tmp_path, """
        [server]
        port = 8100

        [limits]
        max_paylod = 10
    """)
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}:5: limits.max_paylod: unknown key in [limits] (did you mean 'max_payload'?)" in result.output


def test_unknown_section(tmp_path):
    path = write(tmp_path, """
        [databse]
        url = "x"
    """)
    problems = check_file(path)
    assert [(p.line, p.key) for p in problems] == [(1, "databse")]
    assert "did you mean 'database'" in problems[0].message


def test_bad_types_each_reported(tmp_path):
    path = write(tmp_path, """
        [server]
        port = "8000"
        log_format = "xml"
        [tls]
        ws_allowed_origins = "https://a.example"
        [activity]
        projections = 1
        [limits]
        rate_limit_window_s = -1
    """)
    problems = {p.key: (p.line, p.message) for p in check_file(path)}
    assert problems == {
        "server.port": (2, "expected an integer, got a string"),
        "server.log_format": (3, "expected 'json' or 'text', got 'xml'"),
        "tls.ws_allowed_origins": (5, "expected a list of strings, got a string"),
        "activity.projections": (7, "expected true or false, got an integer"),
        "limits.rate_limit_window_s": (9, "-1 is negative"),
    }
    assert check(path).exit_code == 1


def test_unknown_role_permission_names_its_line(tmp_path):
    path = write(tmp_path, """
        [roles]
        viewer = ["read"]
        ops = ["read", "deploy"]
    """)
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}:3: roles.ops: unknown permission 'deploy'" in result.output
    assert "known: admin, cross_tenant_read, read, system_read, write" in result.output


def test_syntax_error_carries_the_line(tmp_path):
    path = write(tmp_path, """
        [server]
        port = 8000
        host = = "0.0.0.0"
    """)
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}:3: TOML syntax error" in result.output


def test_resolution_errors_name_the_field(tmp_path):
    path = write(tmp_path, """
        [resolution]
        default = "lww"

        [resolution.collections.notes]
        strict = "yes"

        [resolution.collections.tasks.fields]
        title = "manual"
        likes = "conter"
        due = "no_such_module_xyz:earliest"
    """)
    problems = {p.key: (p.line, p.message) for p in check_file(path)}
    # (the first resolution problem stops the resolution check: each message names one key)
    assert list(problems) == ["resolution.collections.tasks.fields.due"]
    assert problems["resolution.collections.tasks.fields.due"][0] == 10
    assert "cannot import merge function 'no_such_module_xyz:earliest'" in problems[
        "resolution.collections.tasks.fields.due"][1]
    path = write(tmp_path, """
        [resolution.collections.tasks.fields]
        title = "manual"
        likes = "conter"
    """, "b.toml")
    [p] = check_file(path)
    assert (p.line, p.key) == (3, "resolution.collections.tasks.fields.likes")
    assert "no merge function 'conter'" in p.message
    path = write(tmp_path, """
        [resolution.collections.notes]
        strict = "yes"
    """, "c.toml")
    [p] = check_file(path)
    assert (p.line, p.key) == (2, "resolution.collections.notes.strict")
    path = write(tmp_path, """
        [resolution]
        default = "newest"
    """, "d.toml")
    [p] = check_file(path)
    assert (p.line, p.key) == (2, "resolution.default")


def test_a_custom_merge_must_be_marked(tmp_path):
    path = write(tmp_path, """
        [resolution.collections.tasks.fields]
        due = "os.path:join"
    """)
    [p] = check_file(path)
    assert p.line == 2 and "decorate it with @custom_merge" in p.message


def test_check_needs_a_file():
    result = CliRunner(env={"SYNCLINE_CONFIG": None}).invoke(main, ["config", "check"])
    assert result.exit_code == 2 and "no configuration file" in result.output


def test_key_lines_reads_dotted_and_quoted_keys():
    lines = key_lines('a = 1\n[resolution.collections."my.notes"]\nfields.title = "manual"\n')
    assert lines["a"] == 1
    assert lines["resolution.collections.my.notes"] == 2
    assert lines["resolution.collections.my.notes.fields.title"] == 3


@pytest.mark.parametrize("url, shown", [
    ("postgresql+asyncpg://app:s3cret@db:5432/syncline", "postgresql+asyncpg://app:****@db:5432/syncline"),
    ("redis://:s3cret@cache:6379/0", "redis://:****@cache:6379/0"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
    ("sqlite+aiosqlite:///var/syncline.db", "sqlite+aiosqlite:///var/syncline.db"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_show_masks_secrets_and_says_where_each_value_came_from(tmp_path):
    path = write(tmp_path, """
        [server]
        port = 8100
        [database]
        url = "postgresql+asyncpg://app:db-pass-in-file@db/syncline"
        [auth]
        jwt_secret = "file-secret-0123456789abcdef0123456789"
        [webhook]
        secret = "hook-secret"
    """)
    env = clean_env(SYNCLINE_REDIS_URL="redis://:redis-pass@cache:6379/0", SYNCLINE_PORT="8200")
    proc = subprocess.run([sys.executable, "-m", "syncline.cli", "config", "show", "--config", str(path)],
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for secret in ("db-pass-in-file", "file-secret-0123456789abcdef0123456789", "hook-secret", "redis-pass"):
        assert secret not in out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "postgresql+asyncpg://app:****@db/syncline" in rows["database.url"]
    assert f"(file {path}:4)" in rows["database.url"]
    assert "****" in rows["auth.jwt_secret"] and f"(file {path}:6)" in rows["auth.jwt_secret"]
    assert "redis://:****@cache:6379/0" in rows["redis.url"] and "(env SYNCLINE_REDIS_URL)" in rows["redis.url"]
    assert "8200" in rows["server.port"] and "(env SYNCLINE_PORT)" in rows["server.port"]
    assert "(default)" in rows["server.host"]
    assert "roles.auditor" in rows and "system_read" in rows["roles.auditor"]


def test_show_json_includes_roles_and_resolution(tmp_path):
    path = write(tmp_path, """
        [roles]
        triager = ["read", "write"]
        [resolution.collections.notes.fields]
        title = "manual"
    """)
    result = CliRunner(env={"SYNCLINE_JWT_SECRET": "x" * 40}).invoke(
        main, ["config", "show", "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.output)}
    assert rows["roles.triager"]["value"] == ["read", "write"]
    assert rows["roles.viewer"]["value"] == ["read"]  # the defaults stay
    assert rows["resolution"]["value"]["collections"]["notes"]["fields"] == {"title": "manual"}
    assert rows["resolution"]["source"] == f"file {path}:3"


def test_show_refuses_a_bad_file(tmp_path):
    path = write(tmp_path, "[server]\nport = 'x'\n")
    result = CliRunner().invoke(main, ["config", "show", "--config", str(path)])
    assert result.exit_code == 1 and f"{path}:2: server.port" in result.output


def test_effective_without_a_file_is_defaults_and_env(monkeypatch):
    monkeypatch.delenv("SYNCLINE_CONFIG", raising=False)
    monkeypatch.delenv("SYNCLINE_REST_RATE_REQUESTS", raising=False)
    monkeypatch.setenv("SYNCLINE_MAX_PAYLOAD", "77")
    monkeypatch.setenv("SYNCLINE_JWT_SECRET", "y" * 40)
    rows = {r["key"]: r for r in effective(None)}
    assert rows["limits.max_payload"] == {"key": "limits.max_payload", "value": 77,
                                          "source": "env SYNCLINE_MAX_PAYLOAD", "env": "SYNCLINE_MAX_PAYLOAD"}
    assert rows["limits.rest_rate_requests"]["source"] == "default"


def test_show_creates_no_development_secret(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCLINE_JWT_SECRET", raising=False)
    monkeypatch.delenv("SYNCLINE_CONFIG", raising=False)
    rows = {r["key"]: r for r in effective(None)}
    assert rows["auth.jwt_secret"]["value"].startswith("(none: the development secret")
    assert not (tmp_path / "var").exists()
