"""Who may read and write which streams: the one rule every read and write path applies.

Every path that returns events or state (REST log, streams, deltas, poll, snapshots,
documents, records, feeds; the native protocol's ``sub`` and ``snap``; Yjs sockets)
and every path that writes asks this module, so the rule lives in one place.

A caller is anything with ``user``, ``perms`` (whole-tenant permissions) and ``scopes``
(None, or the :class:`Scopes` its token carries): the gateway's ``Principal`` and the
session's ``Identity`` both are.

Reading a stream needs, all of:

- ``read``, the tenant-wide permission (checked by each route or message);
- for a system stream (any ``$``-prefixed name: ``$audit``, ``$security``,
  ``$conflicts``, ``$dlq/...``): the ``system_read`` permission (roles ``admin`` and
  ``auditor``);
- for another user's inbox (``dm/<other>``): ``admin``;
- when the token carries scopes: a ``read:`` or ``write:`` scope whose pattern
  matches the stream.

Writing a stream needs ``write`` and, with scopes, a ``write:`` scope matching it.
System streams are written by the server only (each write path refuses them).

Scopes are ``<access>:<pattern>`` strings, ``access`` being ``read`` or ``write``
(write implies read); ``pattern`` is a stream name where ``*`` matches any run of
characters, ``/`` included: ``read:doc/handbook/*``, ``write:room/support``,
``write:rec/tasks/*``, ``read:*``. A token without a ``scopes`` claim has the whole
tenant, as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar

from .errors import Forbidden, ValidationError
from .events import DM_PREFIX, SYSTEM_PREFIX, is_system_stream, private_to_others

READ, WRITE, ADMIN, SYSTEM_READ = "read", "write", "admin", "system_read"
CROSS_TENANT = "cross_tenant_read"  # with X-Justification, read another tenant (audited; api/deps.py)
# Every permission a role or a token's ``perms`` claim can grant; anything else is ignored in
# tokens and refused in a configuration file.
KNOWN_PERMS = frozenset({READ, WRITE, ADMIN, CROSS_TENANT, SYSTEM_READ})
SCOPE_ACCESS = (READ, WRITE)
SCOPES_MAX = 64
PATTERN_MAX = 255
# A stream name's characters, plus ``*``; it starts like a stream (optionally ``$``) or is a wildcard.
PATTERN_RE = re.compile(r"^(\*|\$?[a-z*][A-Za-z0-9._:@~+=/*-]*)\Z")


class OutOfScope(Forbidden):
    """The token carries scopes, and none of them covers this stream (for this access)."""

    code = "out_of_scope"


class SystemStreamForbidden(Forbidden):
    """System streams (``$...``) need the ``system_read`` permission (roles admin, auditor)."""

    code = "system_stream_forbidden"


class Caller(Protocol):
    @property
    def user(self) -> str: ...

    @property
    def perms(self) -> frozenset[str]: ...

    @property
    def scopes(self) -> Scopes | None: ...


# -------------------------------------------------------------------- scopes


@dataclass(frozen=True, slots=True)
class Scope:
    access: str  # read | write
    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", _compile(self.pattern))

    def matches(self, stream: str) -> bool:
        return self._regex.match(stream) is not None

    def __str__(self) -> str:
        return f"{self.access}:{self.pattern}"


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Scopes:
    """What a scoped token may touch. Reading is allowed by every scope (write implies read)."""

    items: tuple[Scope, ...]
    # One alternation per access, so a stream is matched once, not once per scope.
    _read: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _write: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_read", _alternation(tuple(s.pattern for s in self.items)))
        object.__setattr__(self, "_write", _alternation(tuple(s.pattern for s in self.items if s.access == WRITE)))

    def allows(self, stream: str, access: str = READ) -> bool:
        return (self._read if access == READ else self._write).match(stream) is not None

    def wire(self) -> list[str]:
        return [str(s) for s in self.items]


def _alternation(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{_compile(p).pattern})" for p in patterns), re.DOTALL)


def parse_scope(raw: Any) -> Scope:
    if not isinstance(raw, str):
        raise ValidationError("a scope is a string '<read|write>:<stream pattern>'", reason="invalid_scope")
    access, sep, pattern = raw.partition(":")
    if not sep or access not in SCOPE_ACCESS:
        raise ValidationError(f"a scope starts with read: or write: ({raw[:80]!r})", reason="invalid_scope")
    if not pattern or len(pattern) > PATTERN_MAX or not PATTERN_RE.match(pattern) or "//" in pattern:
        raise ValidationError(f"invalid scope pattern {pattern[:80]!r}", reason="invalid_scope")
    return Scope(access, pattern)


def parse_scopes(raw: Any) -> Scopes | None:
    """The ``scopes`` claim: absent (None) keeps the whole tenant; otherwise a list of
    1..SCOPES_MAX scope strings. Raises :class:`ValidationError` on anything else."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ValidationError("claim 'scopes' must be a non-empty list of strings", reason="invalid_scope")
    if len(raw) > SCOPES_MAX:
        raise ValidationError(f"at most {SCOPES_MAX} scopes per token", reason="invalid_scope")
    if not all(isinstance(s, str) for s in raw):
        raise ValidationError("claim 'scopes' must be a list of strings", reason="invalid_scope")
    return _parsed(tuple(sorted(set(raw))))


@lru_cache(maxsize=256)
def _parsed(raw: tuple[str, ...]) -> Scopes:
    return Scopes(tuple(parse_scope(s) for s in raw))


# -------------------------------------------------------------------- the rule


def read_refusal(who: Caller, stream: str) -> Forbidden | None:
    """Why ``who`` may not read ``stream`` (None: it may). Does not check ``read`` itself."""
    if stream.startswith(SYSTEM_PREFIX) and SYSTEM_READ not in who.perms:
        return SystemStreamForbidden("system streams need the 'system_read' permission (roles admin, auditor)",
                                     stream=stream[:80], needed=SYSTEM_READ)
    if private_to_others(stream, who.user) and ADMIN not in who.perms:
        return Forbidden("a user's inbox (dm/<user>) is readable by that user only", stream=stream[:80])
    scopes = who.scopes
    if scopes is not None and not scopes.allows(stream, READ):
        return OutOfScope("the token's scopes do not cover this stream", stream=stream[:80], access=READ)
    return None


def can_read(who: Caller, stream: str) -> bool:
    return read_refusal(who, stream) is None


def check_read(who: Caller, stream: str) -> None:
    refusal = read_refusal(who, stream)
    if refusal is not None:
        raise refusal


def reads_everything(who: Caller) -> bool:
    """Whether no event of the tenant is hidden from ``who`` (nothing to filter)."""
    return who.scopes is None and SYSTEM_READ in who.perms and ADMIN in who.perms


def check_selection(who: Caller, streams: Iterable[str] = (), prefixes: Iterable[str] = ()) -> None:
    """Refuse a read that names what ``who`` may not read: an exact stream it may not
    read, or a ``$`` prefix without ``system_read``. Other prefixes (the empty one too)
    are allowed: what they select is filtered with :func:`visible`."""
    for s in streams:
        check_read(who, s)
    if SYSTEM_READ not in who.perms:
        for p in prefixes:
            if p.startswith(SYSTEM_PREFIX):
                raise SystemStreamForbidden("system streams need the 'system_read' permission (roles admin, auditor)",
                                            prefix=p[:80], needed=SYSTEM_READ)


E = TypeVar("E")


def visible(who: Caller, events: Sequence[E]) -> Sequence[E]:
    """``events`` without those ``who`` may not read (the same sequence when none is hidden)."""
    if reads_everything(who):
        return events
    ok = _reader(who)
    # A page holds few distinct streams: test each once.
    hidden = {s for s in {e.stream for e in events} if not ok(s)}  # type: ignore[attr-defined]
    if not hidden:
        return events
    return [e for e in events if e.stream not in hidden]  # type: ignore[attr-defined]


def hidden_count(who: Caller, events: Sequence[Any]) -> int:
    if reads_everything(who):
        return 0
    ok = _reader(who)
    return sum(1 for e in events if not ok(e.stream))


def _reader(who: Caller):
    """A fast ``stream -> readable`` test for ``who`` (the hot path of filtering pages;
    :func:`visible` calls it once per distinct stream of a page)."""
    system = SYSTEM_READ in who.perms
    admin = ADMIN in who.perms
    own = DM_PREFIX + who.user
    scopes = who.scopes
    if scopes is None:
        def ok(stream: str) -> bool:
            first = stream[:1]
            if first == SYSTEM_PREFIX:
                return system
            if first == "d" and not admin and stream.startswith(DM_PREFIX):
                return stream == own
            return True

        return ok
    def ok_scoped(stream: str) -> bool:
        if stream[:1] == SYSTEM_PREFIX and not system:
            return False
        if not admin and stream.startswith(DM_PREFIX) and stream != own:
            return False
        return scopes.allows(stream, READ)

    return ok_scoped


def write_refusal(who: Caller, stream: str) -> Forbidden | None:
    """Why ``who`` may not write ``stream`` (None: it may)."""
    if WRITE not in who.perms:
        return Forbidden("the token lacks the 'write' permission", needed=WRITE)
    if is_system_stream(stream):
        return Forbidden("system streams are written by the server only", stream=stream[:80])
    scopes = who.scopes
    if scopes is not None and not scopes.allows(stream, WRITE):
        return OutOfScope("the token's scopes do not allow writing this stream", stream=stream[:80], access=WRITE)
    return None


def can_write(who: Caller, stream: str) -> bool:
    return write_refusal(who, stream) is None


def check_write(who: Caller, stream: str) -> None:
    refusal = write_refusal(who, stream)
    if refusal is not None:
        raise refusal


# -------------------------------------------------------------------- roles
#
# A token's ``roles`` claim grants the union of its roles' permissions. The table below is
# the default; ``[roles]`` in syncline.toml changes a role's permissions or adds roles
# (docs/configuration.md#roles). A role a token names that the table lacks grants nothing.

DEFAULT_ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "reader": frozenset({READ}),
    "read-only": frozenset({READ}),
    "member": frozenset({READ, WRITE}),
    "writer": frozenset({READ, WRITE}),
    "editor": frozenset({READ, WRITE}),
    "service": frozenset({READ, WRITE}),
    # Reads everything, system streams ($audit, $security, $conflicts, $dlq/...) included; writes nothing.
    "auditor": frozenset({READ, SYSTEM_READ}),
    "admin": frozenset({READ, WRITE, ADMIN, SYSTEM_READ}),
    "super-admin": frozenset({READ, WRITE, ADMIN, CROSS_TENANT, SYSTEM_READ}),
}
ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")


class RoleTable(Mapping[str, frozenset[str]]):
    """Role name -> permissions, immutable and hashable (the token path caches per table)."""

    __slots__ = ("_roles", "_hash")

    def __init__(self, roles: Mapping[str, Iterable[str]]) -> None:
        self._roles = {name: frozenset(perms) for name, perms in sorted(roles.items())}
        self._hash = hash(tuple((n, tuple(sorted(p))) for n, p in self._roles.items()))

    def __getitem__(self, name: str) -> frozenset[str]:
        return self._roles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoleTable) and self._roles == other._roles

    def __repr__(self) -> str:
        return f"RoleTable({ {n: sorted(p) for n, p in self._roles.items()} })"


def role_table(overrides: Mapping[str, Any] | None = None, *, replace: bool = False) -> RoleTable:
    """The default roles with ``overrides`` (role -> list of permissions) applied: a named
    role gets exactly the listed permissions, new names are added; with ``replace`` only the
    given roles exist. Raises :class:`ValidationError` (``key`` = ``roles.<name>``) for an
    invalid role name or an unknown permission."""
    table: dict[str, Any] = {} if replace else dict(DEFAULT_ROLES)
    for name, perms in (overrides or {}).items():
        key = f"roles.{name}"
        if not isinstance(name, str) or not ROLE_RE.match(name):
            raise ValidationError(f"{key}: invalid role name {name!r}", key=key, reason="invalid_role")
        if not isinstance(perms, (list, tuple)) or not all(isinstance(p, str) for p in perms):
            raise ValidationError(f"{key}: a role's permissions are a list of strings", key=key,
                                  reason="invalid_role")
        unknown = sorted(set(perms) - KNOWN_PERMS)
        if unknown:
            raise ValidationError(
                f"{key}: unknown permission {unknown[0]!r} (known: {', '.join(sorted(KNOWN_PERMS))})",
                key=key, reason="unknown_permission", permission=unknown[0])
        table[name] = frozenset(perms)
    return RoleTable(table)


DEFAULT_ROLE_TABLE = RoleTable(DEFAULT_ROLES)
