"""``syncline.toml``: the server's configuration in one file (docs/configuration.md).

Where a setting comes from, strongest first:

1. a command-line option (``syncline serve --port``, ``--db``, ...);
2. its environment variable (``SYNCLINE_PORT``, ...);
3. the configuration file given by ``--config`` or ``SYNCLINE_CONFIG``;
4. the default (:class:`~api.settings.Settings`).

The file is read with the standard library's ``tomllib``. Besides the settings, it holds
what only a file can say: ``[roles]`` (role -> permissions) and ``[resolution]`` (how
concurrent writes are settled per collection and field). Every error names the file,
the line and the dotted key; :func:`check_file` collects them all, :func:`load_settings`
raises the first ones as :class:`ConfigError`.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from syncline.engine.access import KNOWN_PERMS, role_table
from syncline.engine.errors import SynclineError
from syncline.engine.records import MergeRegistry, config_from_rules, custom_refs, register_custom_merges

from .settings import DEV_SECRET_FILE, WS_IMPLEMENTATIONS, Settings

CONFIG_ENV = "SYNCLINE_CONFIG"


class ConfigError(SynclineError):
    """The configuration file is unreadable or invalid; ``problems`` lists each one."""

    code = "invalid_config"

    def __init__(self, problems: list["Problem"]) -> None:
        super().__init__("; ".join(str(p) for p in problems[:5]), problems=[p.as_dict() for p in problems])
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "key": self.key, "message": self.message}


# ---------------------------------------------------------------- the settings a file may set


@dataclass(frozen=True)
class Key:
    """One setting: where it sits in the file, the Settings field, its environment variable."""

    section: str
    name: str
    field: str
    kind: str  # int | float | str | bool | list | log_format | ws_impl
    env: str = ""
    secret: bool = False  # masked by `config show`
    url: bool = False  # a URL whose password is masked
    doc: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_var(self) -> str:
        return self.env or f"SYNCLINE_{self.field.upper()}"


def _k(section: str, name: str, kind: str, doc: str, *, fld: str | None = None, **kw: Any) -> Key:
    return Key(section, name, fld or name, kind, doc=doc, **kw)


KEYS: tuple[Key, ...] = (
    _k("server", "host", "str", "bind address"),
    _k("server", "port", "int", "port"),
    _k("server", "ws_impl", "ws_impl", "WebSocket implementation: " + ", ".join(WS_IMPLEMENTATIONS)),
    _k("server", "shutdown_grace_s", "float", "how long a shutdown waits for open connections"),
    _k("server", "log_format", "log_format", "json or text", fld="log_json", env="SYNCLINE_LOG_FORMAT"),
    _k("database", "url", "str", "the event store (SQLite or PostgreSQL SQLAlchemy URL)", fld="database_url", url=True),
    _k("database", "poll_interval_s", "float", "how often the store is polled for other writers' events"),
    _k("redis", "url", "str", "Redis for cross-process fan-out, presence and bans (unset: in-process only)",
       fld="redis_url", url=True),
    _k("tls", "cert_file", "str", "PEM certificate (chain): serve HTTPS and WSS", fld="tls_cert_file",
       env="SYNCLINE_TLS_CERT"),
    _k("tls", "key_file", "str", "PEM private key for cert_file", fld="tls_key_file", env="SYNCLINE_TLS_KEY"),
    _k("tls", "hsts_max_age_s", "int", "Strict-Transport-Security max-age on HTTPS (0: not sent)"),
    _k("tls", "ws_allowed_origins", "list", "WebSocket Origins allowed (empty: any)"),
    _k("auth", "jwt_secret", "str", "HS256 secret, at least 32 bytes", secret=True),
    _k("auth", "jwt_algorithm", "str", "HS256, or RS256/ES256... with jwt_public_key"),
    _k("auth", "jwt_public_key", "str", "PEM public key (or a path to it) for asymmetric algorithms"),
    _k("auth", "jwt_leeway_s", "float", "clock leeway when checking exp"),
    _k("retention", "retention_s", "float", "how long ordinary events are kept before pruning"),
    _k("retention", "prune_interval_s", "float", "how often the prune job runs"),
    _k("retention", "critical_types", "list", "event type patterns kept forever", fld="critical_types"),
    _k("realtime", "heartbeat_interval_s", "float", "server heartbeat on WebSockets"),
    _k("realtime", "stale_after_s", "float", "a connection silent this long is closed"),
    _k("realtime", "batch_window_ms", "float", "how long events are gathered into one frame"),
    _k("realtime", "max_behind", "int", "events a subscriber may lag before it gets a snapshot"),
    _k("realtime", "unacked_batches_max", "int", "batches sent without an ack before sending pauses"),
    _k("realtime", "ack_timeout_s", "float", "without ack progress this long, a subscription resends"),
    _k("realtime", "event_batch_max", "int", "events per batch"),
    _k("realtime", "presence_ttl_s", "float", "presence expires without a refresh"),
    _k("realtime", "membership_grace_s", "float", "room membership kept after a disconnect"),
    _k("realtime", "poll_min_s", "float", "shortest long-poll a client is told to use"),
    _k("realtime", "poll_max_s", "float", "longest long-poll"),
    _k("realtime", "snapshot_chunk_bytes", "int", "size of a snapshot chunk"),
    _k("yjs", "pending_max", "int", "updates a document may hold waiting for their dependencies",
       fld="yjs_pending_max"),
    _k("yjs", "pending_max_bytes", "int", "bytes of such updates", fld="yjs_pending_max_bytes"),
    _k("yjs", "doc_idle_s", "float", "a document stays loaded this long after its last connection",
       fld="yjs_doc_idle_s"),
    _k("yjs", "doc_memory_budget_bytes", "int", "idle documents are unloaded past this total",
       fld="yjs_doc_memory_budget_bytes"),
    _k("activity", "projections", "bool", "fold activity feeds, presence history, stream stats",
       fld="activity_projections"),
    _k("activity", "feed_keep", "int", "items kept per feed and room history"),
    _k("bus", "relay", "str", "redis-streams: relay the whole log to Redis Streams on redis.url (docs/bus.md)"),
    _k("bus", "relay_key", "str", "the Redis stream the relay writes"),
    _k("bus", "metrics_interval_s", "float", "how often /metrics' bus figures are read from the store",
       fld="bus_metrics_interval_s"),
    *(_k("bus", name, kind, doc, fld=f"bus_{name}") for name, kind, doc in (
        ("consumers_per_tenant", "int", "remote consumer sessions per tenant"),
        ("consumers_per_connection", "int", "remote consumer sessions per native connection"),
        ("consumers_max", "int", "remote consumer sessions in this process"),
        ("consumer_buffer_max", "int", "deliveries one session holds (waiting and leased)"),
        ("consumer_batch_max", "int", "largest batch a consumer may ask for"),
        ("consumer_lease_max_s", "float", "longest lease a consumer may ask for"),
        ("consumer_ttl_max_s", "float", "longest session ttl a consumer may ask for"),
    )),
    _k("records", "manual_fields", "list", "collection.field items settled by a person when [resolution] is absent",
       fld="records_manual_fields"),
    _k("webhook", "url", "str", "where critical events are posted", fld="webhook_url", url=True),
    _k("webhook", "secret", "str", "HMAC key signing webhook bodies", fld="webhook_secret", secret=True),
    _k("audit", "key_file", "str", "Ed25519 private key file for signed checkpoints", fld="audit_key_file"),
    _k("audit", "key", "str", "the key itself (PEM, hex or base64)", fld="audit_key", secret=True),
    _k("audit", "public_keys", "list", "public keys (files or values) verifiers accept", fld="audit_public_keys"),
    _k("audit", "checkpoint_every", "int", "events between signed checkpoints", fld="audit_checkpoint_every"),
    _k("security", "window_s", "float", "refused attempts are aggregated per window", fld="security_window_s"),
    _k("security", "aggregate_max", "int", "open aggregates kept", fld="security_aggregate_max"),
    _k("security", "samples", "int", "samples kept per aggregate", fld="security_samples"),
    _k("clocks", "max_clock_skew_ms", "int", "ops whose HLC is further ahead are refused"),
    _k("clocks", "max_clock_counter", "int", "greatest vector-clock counter"),
    _k("clocks", "max_clock_entries", "int", "nodes a vector clock may name"),
    *(_k("limits", name, kind, doc) for name, kind, doc in (
        ("max_payload", "int", "largest event payload (bytes)"),
        ("max_json_depth", "int", "deepest nesting of a request body"),
        ("rate_limit_messages", "int", "WebSocket messages per window"),
        ("rate_limit_window_s", "float", "the WebSocket rate window"),
        ("rate_limit_ban_s", "float", "ban after exceeding the rate"),
        ("rest_rate_requests", "int", "REST requests per (tenant, user) per window"),
        ("rest_rate_window_s", "float", "the REST rate window"),
        ("ws_max_message_bytes", "int", "largest WebSocket message"),
        ("ws_preauth_max_bytes", "int", "bytes a client may send before it is accepted"),
        ("ws_message_timeout_s", "float", "longest time a message may stay incomplete"),
        ("ws_handshake_timeout_s", "float", "time the app may take to accept a socket"),
        ("ws_close_timeout_s", "float", "wait for the peer's close frame"),
        ("ws_close_discard_bytes", "int", "bytes read and discarded while closing"),
        ("ws_inbox_max_bytes", "int", "received bytes waiting for the app"),
        ("ws_ping_interval_s", "float", "keepalive pings"),
        ("ws_idle_timeout_s", "float", "idle close"),
        ("ws_max_connections_per_user", "int", "open sockets per (tenant, user)"),
        ("ws_max_connections_per_ip", "int", "open sockets per client IP"),
        ("presence_state_max_bytes", "int", "size of one presence state"),
        ("rooms_max_per_connection", "int", "rooms per native connection"),
        ("yjs_rate_messages_per_s", "float", "Yjs messages per second per connection"),
        ("yjs_rate_messages_burst", "int", "Yjs message burst"),
        ("yjs_rate_bytes_per_s", "float", "Yjs update bytes per second"),
        ("yjs_rate_bytes_burst", "int", "Yjs update byte burst"),
        ("doc_quota_bytes_per_tenant", "int", "stored Yjs bytes per tenant (0: no quota)"),
    )),
)
KEYS_BY_DOTTED = {k.dotted: k for k in KEYS}
SECTIONS = sorted({k.section for k in KEYS} | {"roles", "resolution"})
# Settings fields no key maps (they come from the other tables, or record where the file was).
NOT_KEYS = frozenset({"roles", "resolution_rules", "config_file"})
RESOLUTION_KEYS = ("default", "unlisted_collections", "collections")


# ---------------------------------------------------------------- where each key is written

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
HEADER_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
PART_RE = re.compile(_KEY)


def _parts(dotted: str) -> list[str]:
    out = []
    for m in PART_RE.finditer(dotted):
        p = m.group(0)
        out.append(p[1:-1] if p[:1] in "\"'" else p)
    return out


def key_lines(text: str) -> dict[str, int]:
    """Dotted key -> the line (1-based) where it is assigned or its table opens. tomllib
    gives positions only for syntax errors; semantic errors find their line here."""
    lines: dict[str, int] = {}
    table: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if m := HEADER_RE.match(line):
            table = _parts(m.group(1))
            for i in range(1, len(table) + 1):  # [a.b.c] also opens a and a.b
                lines.setdefault(".".join(table[:i]), n)
        elif m := ASSIGN_RE.match(line):
            path = table + _parts(m.group(1))
            for i in range(len(table) + 1, len(path) + 1):  # a.b = 1 also defines a
                lines.setdefault(".".join(path[:i]), n)
    return lines


def line_of(lines: Mapping[str, int], key: str) -> int | None:
    """The line of ``key`` or of its nearest written parent (a key inside an inline table)."""
    parts = key.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


# ---------------------------------------------------------------- reading and checking


@dataclass
class FileConfig:
    """What a configuration file says, checked: settings values, roles, resolution rules."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)  # Settings field -> value
    lines: dict[str, int] = field(default_factory=dict)
    roles: dict[str, list[str]] | None = None
    resolution: dict[str, Any] | None = None  # the rules (engine/records/rules.py)

    def line(self, key: str) -> int | None:
        return line_of(self.lines, key)


def _convert(key: Key, value: Any) -> tuple[Any, str | None]:
    """(the Settings value, None) or (None, why the file's value is wrong)."""
    kind = key.kind
    if kind == "int":
        if type(value) is not int:
            return None, f"expected an integer, got {_toml_type(value)}"
        if value < 0 or (key.name == "port" and value > 65535):
            return None, f"{value} is out of range"
        return value, None
    if kind == "float":
        if type(value) not in (int, float):
            return None, f"expected a number, got {_toml_type(value)}"
        if value < 0:
            return None, f"{value} is negative"
        return float(value), None
    if kind == "bool":
        return (value, None) if type(value) is bool else (None, f"expected true or false, got {_toml_type(value)}")
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"expected a list of strings, got {_toml_type(value)}"
        return tuple(value), None
    if not isinstance(value, str):
        return None, f"expected a string, got {_toml_type(value)}"
    if kind == "log_format":
        if value not in ("json", "text"):
            return None, f"expected 'json' or 'text', got {value!r}"
        return value == "json", None
    if kind == "ws_impl" and value not in WS_IMPLEMENTATIONS:
        return None, f"expected one of {', '.join(WS_IMPLEMENTATIONS)}, got {value!r}"
    return value, None


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def import_merge(ref: str) -> Any:
    """The object ``module:function`` names (the module must be importable: installed or on PYTHONPATH)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def read_file(path: str | os.PathLike) -> tuple[FileConfig, list[Problem]]:
    """Parse and check a configuration file: every problem found, each with its line."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return FileConfig(where), [Problem(where, None, "", f"cannot read the file: {e}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)  # (Python 3.14 adds it; older ones put it in the text)
        if line is None and (m := re.search(r"line (\d+)", str(e))):
            line = int(m.group(1))
        elif line is None and "end of document" in str(e):
            line = max(1, len(text.splitlines()))
        return FileConfig(where), [Problem(where, line, "", f"TOML syntax error: {e}")]
    cfg = FileConfig(where, lines=key_lines(text))
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(where, cfg.line(key), key, message))

    for section, table in data.items():
        if section not in SECTIONS:
            bad(section, f"unknown section{_suggest(section, SECTIONS)}")
            continue
        if not isinstance(table, dict):
            bad(section, f"[{section}] is a table, got {_toml_type(table)}")
            continue
        if section == "roles":
            _check_roles(cfg, table, bad)
        elif section == "resolution":
            _check_resolution(cfg, table, bad)
        else:
            known = [k.name for k in KEYS if k.section == section]
            for name, value in table.items():
                key = KEYS_BY_DOTTED.get(f"{section}.{name}")
                if key is None:
                    bad(f"{section}.{name}", f"unknown key in [{section}]{_suggest(name, known)}")
                    continue
                converted, error = _convert(key, value)
                if error:
                    bad(key.dotted, error)
                else:
                    cfg.values[key.field] = converted
    return cfg, problems


def _check_roles(cfg: FileConfig, table: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    ok = True
    for name, perms in table.items():
        try:
            role_table({name: perms})
        except SynclineError as e:
            key = e.details.get("key", f"roles.{name}")
            bad(key, e.message.removeprefix(f"{key}: "))
            ok = False
    if ok:
        cfg.roles = table


def _check_resolution(cfg: FileConfig, table: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    for name in table:
        if name not in RESOLUTION_KEYS:
            bad(f"resolution.{name}", f"unknown key in [resolution]{_suggest(name, list(RESOLUTION_KEYS))}")
    unlisted = table.get("unlisted_collections", True)
    if type(unlisted) is not bool:
        bad("resolution.unlisted_collections", f"expected true or false, got {_toml_type(unlisted)}")
        return
    rules: dict[str, Any] = {
        "collections": table.get("collections", {}),
        "default_collection": {"default": table.get("default", "lww")} if unlisted else None,
    }
    registry = MergeRegistry.with_builtins()
    try:
        refs = custom_refs(rules)
    except Exception:  # malformed tables: config_from_rules below names the key
        refs = []
    imported: dict[str, Any] = {}
    for ref in refs:
        try:
            imported[ref] = import_merge(ref)
        except (ImportError, AttributeError, ValueError) as e:
            bad(_first_use(cfg, rules, ref), f"cannot import merge function {ref!r} ({type(e).__name__}: {e}); "
                "its module must be importable (installed, or on PYTHONPATH) by the server and by clients")
            return
    try:
        register_custom_merges(registry, imported)
        config_from_rules(rules, registry)
    except SynclineError as e:
        key = e.details.get("key") or _first_use(cfg, rules, e.details.get("merge", ""))
        if key == "resolution.default_collection.default":
            key = "resolution.default"
        bad(key, e.message.removeprefix(f"{key}: ").removeprefix("resolution.default_collection.default: "))
        return
    cfg.resolution = rules


def _first_use(cfg: FileConfig, rules: Mapping[str, Any], ref: str) -> str:
    """The key of the first rule naming merge ``ref`` (for an error's line)."""
    for cname, coll in (rules.get("collections") or {}).items():
        if not isinstance(coll, Mapping):
            continue
        if coll.get("default") == ref:
            return f"resolution.collections.{cname}.default"
        for fname, value in (coll.get("fields") or {}).items():
            if value == ref:
                return f"resolution.collections.{cname}.fields.{fname}"
    return "resolution.default" if ref else "resolution"


def check_file(path: str | os.PathLike) -> list[Problem]:
    return read_file(path)[1]


def load_file(path: str | os.PathLike) -> FileConfig:
    cfg, problems = read_file(path)
    if problems:
        raise ConfigError(problems)
    return cfg


# ---------------------------------------------------------------- the effective settings


def config_path(given: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """``--config`` when given, else ``SYNCLINE_CONFIG``, else none."""
    env = os.environ if env is None else env
    return given or env.get(CONFIG_ENV) or None


def load_settings(path: str | None = None, *, dev_secret: bool = True) -> Settings:
    """Settings from the defaults, the file (``path`` or ``SYNCLINE_CONFIG``) and the
    environment (``os.environ``), the environment winning. Raises :class:`ConfigError`
    for a bad file. ``dev_secret=False``: no JWT secret anywhere leaves it empty instead
    of creating the development secret (``config show`` only reads)."""
    env = os.environ
    path = config_path(path, env)
    cfg = load_file(path) if path is not None else FileConfig("")
    from_file = {k.field: cfg.values[k.field] for k in KEYS if k.field in cfg.values and k.env_var not in env}
    if not dev_secret and "SYNCLINE_JWT_SECRET" not in env:
        from_file.setdefault("jwt_secret", "")
    if path is None:
        return Settings(**from_file)
    settings = Settings(**from_file)  # (fields not given read the environment, then their defaults)
    if cfg.roles is not None:
        settings.roles = role_table(cfg.roles)
    settings.resolution_rules = cfg.resolution
    settings.config_file = str(path)
    return settings


def resolution_from_settings(settings: Settings) -> Any:
    """The ResolutionConfig the file's ``[resolution]`` describes (None: no rules given)."""
    rules = getattr(settings, "resolution_rules", None)
    if rules is None:
        return None
    registry = MergeRegistry.with_builtins()
    register_custom_merges(registry, {ref: import_merge(ref) for ref in custom_refs(rules)})
    return config_from_rules(rules, registry)


def mask_url(url: str | None) -> str | None:
    """``scheme://user:****@host/db``: the password of a URL hidden."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{netloc}"))


def mask(key: Key, value: Any) -> Any:
    if key.secret and value:
        return "****"
    if key.url:
        return mask_url(value)
    return value


def effective(path: str | None = None) -> list[dict[str, Any]]:
    """Each setting's effective value (masked) and where it came from: ``env SYNCLINE_X``,
    ``file PATH:LINE`` or ``default``; then the roles and the resolution rules."""
    env = os.environ
    path = config_path(path, env)
    cfg = load_file(path) if path else None
    settings = load_settings(path, dev_secret=False)
    rows: list[dict[str, Any]] = []
    for key in KEYS:
        value = getattr(settings, key.field)
        if key.field == "jwt_secret" and value == "" and key.env_var not in env:
            value = f"(none: the development secret, {DEV_SECRET_FILE})"
            rows.append({"key": key.dotted, "value": value, "source": "default", "env": key.env_var})
            continue
        if key.kind == "log_format":
            value = "json" if value else "text"
        elif key.kind == "list":
            value = list(value)
        if key.env_var in env:
            source = f"env {key.env_var}"
        elif cfg is not None and key.field in cfg.values:
            source = f"file {path}:{cfg.line(key.dotted)}"
        else:
            source = "default"
        rows.append({"key": key.dotted, "value": mask(key, value), "source": source, "env": key.env_var})
    roles_source = f"file {path}:{cfg.line('roles')}" if cfg is not None and cfg.roles is not None else "default"
    for role, perms in settings.roles.items():
        rows.append({"key": f"roles.{role}", "value": sorted(perms), "source": roles_source, "env": ""})
    from syncline.engine.records import rules_of

    from .ops import default_resolution

    rules = settings.resolution_rules if settings.resolution_rules is not None else rules_of(default_resolution())
    res_source = (f"file {path}:{cfg.line('resolution')}" if cfg is not None and cfg.resolution is not None
                  else "default")
    rows.append({"key": "resolution", "value": rules, "source": res_source, "env": ""})
    return rows


def settings_fields() -> list[str]:
    return [f.name for f in fields(Settings)]


__all__ = ["CONFIG_ENV", "KEYS", "KNOWN_PERMS", "ConfigError", "FileConfig", "Key", "Problem", "check_file",
           "config_path", "effective", "key_lines", "load_file", "load_settings", "mask_url", "read_file",
           "resolution_from_settings"]
