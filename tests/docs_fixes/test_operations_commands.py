"""Every `syncline …` command in docs/operations.md's code blocks exists as written:
its subcommands, its options, the values its options need, its required options and
its arguments, checked against the command line's own parser (click)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from syncline.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
FENCE = re.compile(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", "|", ";"}


def commands_in(markdown: str) -> list[list[str]]:
    """The `syncline` invocations in the fenced code blocks, as argument lists: lines
    joined at trailing backslashes, comments dropped, split at shell separators, leading
    ``VAR=value`` assignments skipped."""
    found = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token in SEPARATORS:
                    while words and ASSIGNMENT.match(words[0]):
                        words.pop(0)
                    if words and words[0] == "syncline":
                        found.append(words)
                    words = []
                else:
                    words.append(token)
    return found


def check(words: list[str]) -> None:
    """Raise click's own error if the command line would refuse ``words``."""
    cmd: click.Command = main
    ctx = click.Context(main, info_name="syncline")
    rest = words[1:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no command {rest[0]!r} under {ctx.command_path!r}")
        ctx = click.Context(sub, parent=ctx, info_name=rest[0])
        cmd, rest = sub, rest[1:]
    # The command's own parsing and checks: options, their values and types, required
    # options, arguments. (Nothing runs: a context is made, the command is not invoked.)
    cmd.make_context(ctx.info_name, list(rest), parent=ctx.parent)


DOCUMENTED = commands_in(DOC.read_text(encoding="utf-8"))


def test_the_runbooks_hold_the_commands_they_promise():
    text = DOC.read_text(encoding="utf-8")
    for heading in ("Scaling: add a gateway", "Scaling: add bus consumers", "Incident: the store is down",
                    "Incident: Redis is down", "Incident: the dead-letter queue grows", "Incident: consumer lag grows",
                    "Rotating the JWT secret", "Rotating the audit signing key"):
        assert f"### {heading}" in text
    subcommands = {" ".join(w for w in words[1:4] if not w.startswith("-")) for words in DOCUMENTED}
    assert len(DOCUMENTED) >= 15
    for expected in ("serve", "bus groups", "bus dlq requeue", "token revoke", "audit keygen", "verify", "prune"):
        assert any(s.startswith(expected) for s in subcommands), expected


@pytest.mark.parametrize("words", DOCUMENTED, ids=[" ".join(w)[:60] for w in DOCUMENTED])
def test_each_documented_command_parses(words):
    check(words)


@pytest.mark.parametrize("line", [
    "syncline bus dlq requeue-all",             # no such subcommand
    "syncline token revoke --user alice",       # --tenant is required
    "syncline bus groups --lag",                # no such option
    "syncline replay --tenant",                 # option without its value
    "syncline bus dlq show",                    # missing ENTRY_ID
    "syncline verify extra",                    # an argument it does not take
])
def test_the_checker_refuses_what_the_cli_refuses(line):
    (words,) = commands_in(f"```bash\n{line}\n```\n")
    with pytest.raises(click.ClickException):
        check(words)
