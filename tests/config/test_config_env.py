"""Precedence: defaults < the file < environment variables (< command-line options), for every key."""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from syncline.api.config_file import KEYS, NOT_KEYS, ConfigError, load_settings
from syncline.api.settings import Settings
from syncline.engine.access import DEFAULT_ROLE_TABLE

# (file value, what the file gives, env value, what the env gives) per kind
SAMPLES = {
    "int": (7, 7, "9", 9),
    "float": (7.5, 7.5, "9.5", 9.5),
    "str": ("from-file", "from-file", "from-env", "from-env"),
    "list": (["from-file"], ("from-file",), "a,b", ("a", "b")),
    "log_format": ("text", False, "json", True),
    "ws_impl": ("wsproto", "wsproto", "auto", "auto"),
}


def _sample(key):
    if key.kind == "bool":
        return (False, False, "1", True)
    return SAMPLES[key.kind]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No SYNCLINE_* of the caller's, a valid secret, and a scratch working directory."""
    import os

    for name in list(os.environ):
        if name.startswith("SYNCLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SYNCLINE_JWT_SECRET", "env-secret-0123456789abcdef0123456789")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_every_setting_has_a_key():
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - NOT_KEYS == {k.field for k in KEYS}
    assert len({k.dotted for k in KEYS}) == len(KEYS) and len({k.env_var for k in KEYS}) == len(KEYS)


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.dotted)
def test_file_then_env_for_every_key(key, clean, tmp_path):
    file_value, from_file, env_value, from_env = _sample(key)
    path = tmp_path / "syncline.toml"
    path.write_text(f"[{key.section}]\n{key.name} = {_toml(file_value)}\n")
    if key.env_var != "SYNCLINE_JWT_SECRET":
        clean.delenv(key.env_var, raising=False)
        default = getattr(Settings(), key.field)
        assert getattr(load_settings(str(path)), key.field) == from_file != default
    clean.setenv(key.env_var, env_value)
    assert getattr(load_settings(str(path)), key.field) == from_env  # the environment wins
    assert getattr(Settings(), key.field) == from_env  # (the name is the one Settings reads)


def test_syncline_config_names_the_file(clean, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[limits]\nmax_payload = 4096\n[roles]\ntriager = ['read']\n")
    clean.setenv("SYNCLINE_CONFIG", str(path))
    s = load_settings()
    assert s.max_payload == 4096 and s.config_file == str(path)
    assert s.roles["triager"] == {"read"} and s.roles["admin"] == DEFAULT_ROLE_TABLE["admin"]
    other = tmp_path / "other.toml"
    other.write_text("[limits]\nmax_payload = 8192\n")
    assert load_settings(str(other)).max_payload == 8192  # --config wins over SYNCLINE_CONFIG


def test_without_a_file_settings_are_unchanged(clean):
    s = load_settings()
    assert s.roles is DEFAULT_ROLE_TABLE and s.resolution_rules is None and s.config_file is None
    assert dataclasses.asdict(s) == dataclasses.asdict(Settings())


def test_a_bad_file_is_refused_before_anything_starts(clean, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'eighty'\n")
    with pytest.raises(ConfigError) as e:
        load_settings(str(path))
    assert e.value.problems[0].line == 2 and e.value.code == "invalid_config"
    from syncline.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 1 and f"{path}:2: server.port: expected an integer" in result.output
