"""`syncline token --role`: the help lists the valid roles (from the configuration), others are refused."""
from __future__ import annotations

import jwt
from click.testing import CliRunner

from syncline.cli import main

SECRET = "token-test-secret-0123456789abcdef0123"


def test_help_lists_the_default_roles(tmp_path):
    result = CliRunner(env={"SYNCLINE_CONFIG": None}).invoke(main, ["token", "--help"])
    assert result.exit_code == 0
    help_text = "".join(result.output.split())  # (click wraps lines, at hyphens too)
    assert "Validroles:admin,auditor,editor,member,read-only,reader,service,super-admin,viewer,writer" in help_text


def test_roles_come_from_the_configuration(tmp_path):
    path = tmp_path / "syncline.toml"
    path.write_text('[roles]\ntriager = ["read", "write"]\n')
    env = {"SYNCLINE_CONFIG": str(path), "SYNCLINE_JWT_SECRET": SECRET}
    help_text = "".join(CliRunner(env=env).invoke(main, ["token", "--help"]).output.split())
    assert ",triager," in help_text and f"(from{path})" in help_text
    minted = CliRunner(env=env).invoke(main, ["token", "--tenant", "acme", "--user", "u", "--role", "triager"])
    assert minted.exit_code == 0, minted.output
    assert jwt.decode(minted.output.strip(), SECRET, algorithms=["HS256"])["roles"] == ["triager"]


def test_an_unknown_role_is_refused_with_the_valid_ones():
    result = CliRunner(env={"SYNCLINE_CONFIG": None, "SYNCLINE_JWT_SECRET": SECRET}).invoke(
        main, ["token", "--tenant", "acme", "--user", "u", "--role", "member", "--role", "boss"])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "unknown role 'boss'; valid roles: admin, auditor" in out
    assert "--role" in out
