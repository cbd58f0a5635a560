"""Settings from the environment (``SYNCLINE_*``), with defaults for the embedded setup.

A configuration file (``syncline.toml``, api/config_file.py) sets the same fields, the
environment overriding it: build them with ``config_file.load_settings`` to honour both.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncline.engine.access import DEFAULT_ROLE_TABLE, RoleTable

DEFAULT_DB = "sqlite+aiosqlite:///var/syncline.db"
# WebSocket implementations `syncline serve --ws` accepts: ours (server/lean_ws.py) and uvicorn's.
WS_IMPLEMENTATIONS = ("lean", "auto", "websockets", "websockets-sansio", "wsproto")
DEFAULT_WS = "lean"
DEV_SECRET_FILE = Path("var/dev-jwt-secret")


def _dev_secret() -> str:
    """A development secret kept in var/ so `syncline token` and `syncline serve` agree.
    Production sets SYNCLINE_JWT_SECRET (or public keys) explicitly."""
    if DEV_SECRET_FILE.exists():
        return DEV_SECRET_FILE.read_text().strip()
    DEV_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    DEV_SECRET_FILE.write_text(value)
    DEV_SECRET_FILE.chmod(0o600)
    return value


MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash output are refused (RFC 7518 §3.2)


def _jwt_secret() -> str:
    """``SYNCLINE_JWT_SECRET`` when it is set, even to "" (refused later as too short: an
    empty value is a mistake, never a request for the development secret); the
    development secret only when it is not set at all."""
    value = os.environ.get("SYNCLINE_JWT_SECRET")
    return value if value is not None else _dev_secret()


def is_dev_secret(secret: str) -> bool:
    """Whether ``secret`` is the development secret kept in var/dev-jwt-secret."""
    try:
        return DEV_SECRET_FILE.exists() and DEV_SECRET_FILE.read_text().strip() == secret
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; anything else (0.0.0.0, ::, a name) is public."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_jwt_secret(secret: str | None) -> None:
    """Refuse an HMAC secret shorter than 32 bytes (an empty one included)."""
    from .errors import InsecureSecret

    size = len((secret or "").encode())
    if size < MIN_SECRET_BYTES:
        raise InsecureSecret(
            f"SYNCLINE_JWT_SECRET is {'empty' if not size else f'{size} bytes'}: an HS256 secret needs at least "
            f"{MIN_SECRET_BYTES} bytes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)")


def check_startup_secrets(settings: "Settings") -> None:
    """What ``create_app`` refuses to start with: a short HMAC secret, or the development
    secret (var/dev-jwt-secret) on a non-loopback bind."""
    from .errors import InsecureSecret

    if not settings.jwt_algorithm.startswith("HS"):
        return
    check_jwt_secret(settings.jwt_secret)
    if not is_loopback(settings.host) and is_dev_secret(settings.jwt_secret):
        raise InsecureSecret(
            f"the development JWT secret ({DEV_SECRET_FILE}) may only serve a loopback address, not "
            f"{settings.host!r}: set SYNCLINE_JWT_SECRET (or SYNCLINE_JWT_ALGORITHM and SYNCLINE_JWT_PUBLIC_KEY)")


def _csv(name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


def default_ws() -> str:
    """``SYNCLINE_WS_IMPL`` (one of WS_IMPLEMENTATIONS) or ``lean``."""
    return os.environ.get("SYNCLINE_WS_IMPL") or DEFAULT_WS


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Settings:
    database_url: str = field(default_factory=lambda: os.environ.get("SYNCLINE_DATABASE_URL", DEFAULT_DB))
    redis_url: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_REDIS_URL") or None)
    # "redis-streams": relay the whole log to Redis Streams (redis_url) in the server (docs/bus.md#relay)
    relay: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_RELAY") or None)
    relay_key: str = field(default_factory=lambda: os.environ.get("SYNCLINE_RELAY_KEY", "syncline:events"))
    # how often /metrics' bus figures are read from the store (api/metrics_bus.py)
    bus_metrics_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_BUS_METRICS_INTERVAL_S", 5.0))
    host: str = field(default_factory=lambda: os.environ.get("SYNCLINE_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _int("SYNCLINE_PORT", 8000))
    jwt_secret: str = field(default_factory=_jwt_secret)
    jwt_algorithm: str = field(default_factory=lambda: os.environ.get("SYNCLINE_JWT_ALGORITHM", "HS256"))
    jwt_public_key: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_JWT_PUBLIC_KEY") or None)
    retention_s: float = field(default_factory=lambda: _float("SYNCLINE_RETENTION_S", 7 * 86400))
    max_payload: int = field(default_factory=lambda: _int("SYNCLINE_MAX_PAYLOAD", 1024 * 1024))
    poll_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_POLL_INTERVAL_S", 1.0))
    # -- gateway (api/) -- every interval is configurable so tests run fast
    jwt_leeway_s: float = field(default_factory=lambda: _float("SYNCLINE_JWT_LEEWAY_S", 5.0))
    heartbeat_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_HEARTBEAT_INTERVAL_S", 30.0))
    stale_after_s: float = field(default_factory=lambda: _float("SYNCLINE_STALE_AFTER_S", 90.0))
    batch_window_ms: float = field(default_factory=lambda: _float("SYNCLINE_BATCH_WINDOW_MS", 100.0))
    max_behind: int = field(default_factory=lambda: _int("SYNCLINE_MAX_BEHIND", 10_000))
    unacked_batches_max: int = field(default_factory=lambda: _int("SYNCLINE_UNACKED_BATCHES_MAX", 8))
    # Without ack progress for this long, a subscription rewinds to its last ack and sends again.
    ack_timeout_s: float = field(default_factory=lambda: _float("SYNCLINE_ACK_TIMEOUT_S", 10.0))
    event_batch_max: int = field(default_factory=lambda: _int("SYNCLINE_EVENT_BATCH_MAX", 500))
    rate_limit_messages: int = field(default_factory=lambda: _int("SYNCLINE_RATE_LIMIT_MESSAGES", 1200))
    rate_limit_window_s: float = field(default_factory=lambda: _float("SYNCLINE_RATE_LIMIT_WINDOW_S", 60.0))
    rate_limit_ban_s: float = field(default_factory=lambda: _float("SYNCLINE_RATE_LIMIT_BAN_S", 60.0))
    presence_ttl_s: float = field(default_factory=lambda: _float("SYNCLINE_PRESENCE_TTL_S", 30.0))
    membership_grace_s: float = field(default_factory=lambda: _float("SYNCLINE_MEMBERSHIP_GRACE_S", 300.0))
    poll_min_s: float = field(default_factory=lambda: _float("SYNCLINE_POLL_MIN_S", 30.0))
    poll_max_s: float = field(default_factory=lambda: _float("SYNCLINE_POLL_MAX_S", 300.0))
    webhook_url: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_WEBHOOK_URL") or None)
    webhook_secret: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_WEBHOOK_SECRET") or None)
    critical_types: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            t for t in os.environ.get("SYNCLINE_CRITICAL_TYPES", "order.*,payment.*,contract.*").split(",") if t
        )
    )
    snapshot_chunk_bytes: int = field(default_factory=lambda: _int("SYNCLINE_SNAPSHOT_CHUNK_BYTES", 256 * 1024))
    shutdown_grace_s: float = field(default_factory=lambda: _float("SYNCLINE_SHUTDOWN_GRACE_S", 5.0))
    prune_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_PRUNE_INTERVAL_S", 3600.0))
    # Yjs documents stay loaded this long after their last connection leaves, and the
    # least recently used idle ones are unloaded while the loaded total is over the budget.
    # Updates a loaded document may hold waiting for what they depend on (count, bytes):
    # a client whose update would pass either is refused (pending_overflow) and closed.
    yjs_pending_max: int = field(default_factory=lambda: _int("SYNCLINE_YJS_PENDING_MAX", 50_000))
    yjs_pending_max_bytes: int = field(default_factory=lambda: _int("SYNCLINE_YJS_PENDING_MAX_BYTES", 32 << 20))
    yjs_doc_idle_s: float = field(default_factory=lambda: _float("SYNCLINE_YJS_DOC_IDLE_S", 300.0))
    yjs_doc_memory_budget_bytes: int = field(
        default_factory=lambda: _int("SYNCLINE_YJS_DOC_MEMORY_BUDGET_BYTES", 256 * 1024 * 1024))
    # Activity feeds, presence history and stream statistics, folded in memory from the
    # log (api/activity.py); each feed and room history keeps its last ``feed_keep`` items.
    activity_projections: bool = field(
        default_factory=lambda: os.environ.get("SYNCLINE_ACTIVITY_PROJECTIONS", "1") not in ("0", "false", "no"))
    feed_keep: int = field(default_factory=lambda: _int("SYNCLINE_FEED_KEEP", 1000))
    # Record fields settled by a person (manual strategy) instead of last-writer-wins, as
    # "collection.field" items: concurrent writes keep every version as an open conflict.
    # The default makes the task board's titles (/app/board.html, rec/board/<id>) manual.
    records_manual_fields: tuple[str, ...] = field(
        default_factory=lambda: _csv("SYNCLINE_RECORDS_MANUAL_FIELDS") if "SYNCLINE_RECORDS_MANUAL_FIELDS" in os.environ
        else ("board.title",))
    ws_impl: str = field(default_factory=default_ws)
    # -- signed audit checkpoints (store/audit.py, docs/security.md#audit-trail-and-refused-attempts). The Ed25519
    # private key lives outside the database: a file (wins) or the value itself (PEM, or
    # 32 raw bytes in hex/base64). Verifiers need only public keys (comma-separated files
    # or values; several during a key rotation). A checkpoint is signed at least every
    # ``audit_checkpoint_every`` events, and after every critical event and prune.
    audit_key_file: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_AUDIT_KEY_FILE") or None)
    audit_key: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_AUDIT_KEY") or None)
    audit_public_keys: tuple[str, ...] = field(default_factory=lambda: tuple(
        k for k in os.environ.get("SYNCLINE_AUDIT_PUBLIC_KEYS", "").split(",") if k.strip()))
    audit_checkpoint_every: int = field(default_factory=lambda: _int("SYNCLINE_AUDIT_CHECKPOINT_EVERY", 1000))
    # -- refused attempts ($security events) are aggregated per (tenant, user, kind) and
    # window: one event for the first attempt, one summary when the window closes. The
    # table of open aggregates holds at most ``security_aggregate_max`` keys (attempts
    # past it are counted in /metrics and logged, not recorded per principal).
    security_window_s: float = field(default_factory=lambda: _float("SYNCLINE_SECURITY_WINDOW_S", 60.0))
    security_aggregate_max: int = field(default_factory=lambda: _int("SYNCLINE_SECURITY_AGGREGATE_MAX", 10_000))
    security_samples: int = field(default_factory=lambda: _int("SYNCLINE_SECURITY_SAMPLES", 3))
    # Client clocks (docs/security.md#bad-input-and-clocks): an op whose HLC is more than this far ahead
    # of the server's clock is refused (``clock_skew``), like CockroachDB's max offset; its
    # vector clock may name at most ``max_clock_entries`` nodes, each counter at most
    # ``max_clock_counter`` (2^53 - 1: exact in every JSON client), and claim no write of
    # another node that the record has not accepted (``clock_unseen``).
    max_clock_skew_ms: int = field(default_factory=lambda: _int("SYNCLINE_MAX_CLOCK_SKEW_MS", 300_000))
    max_clock_counter: int = field(default_factory=lambda: _int("SYNCLINE_MAX_CLOCK_COUNTER", (1 << 53) - 1))
    max_clock_entries: int = field(default_factory=lambda: _int("SYNCLINE_MAX_CLOCK_ENTRIES", 1024))
    # Request bodies nesting deeper than this (arrays and objects) are refused: 400 invalid_json.
    max_json_depth: int = field(default_factory=lambda: _int("SYNCLINE_MAX_JSON_DEPTH", 64))
    log_json: bool = field(default_factory=lambda: os.environ.get("SYNCLINE_LOG_FORMAT", "json") == "json")
    # -- transport security (docs/security.md#tokens-and-transport) --
    # TLS for HTTP and WebSockets (`syncline serve --tls-cert --tls-key`): PEM files.
    tls_cert_file: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_TLS_CERT") or None)
    tls_key_file: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_TLS_KEY") or None)
    # WebSocket handshakes whose Origin is not listed are refused with 403; empty: any
    # Origin (and none, as non-browser clients send) is allowed. Exact origins, e.g.
    # "https://app.example.com"; "*" allows every origin.
    ws_allowed_origins: tuple[str, ...] = field(default_factory=lambda: _csv("SYNCLINE_WS_ALLOWED_ORIGINS"))
    # Strict-Transport-Security max-age, sent on HTTPS responses only (0: not sent).
    hsts_max_age_s: int = field(default_factory=lambda: _int("SYNCLINE_HSTS_MAX_AGE_S", 31_536_000))
    # -- limits (issue 15, docs/security.md#limits): every bound a setting; 0 disables a cap.
    # WebSocket transport (server/lean_ws.py): the largest message, counted over its
    # fragments; what a client may send before the app accepts it (before authentication);
    # how long one frame or fragmented message may stay incomplete; how long the app may take
    # to accept or refuse; how long we wait for the peer's close frame after ours (reading and
    # discarding, at most ws_close_discard_bytes); keepalive pings and the idle close.
    ws_max_message_bytes: int = field(default_factory=lambda: _int("SYNCLINE_WS_MAX_MESSAGE_BYTES", 8 << 20))
    ws_preauth_max_bytes: int = field(default_factory=lambda: _int("SYNCLINE_WS_PREAUTH_MAX_BYTES", 64 << 10))
    ws_message_timeout_s: float = field(default_factory=lambda: _float("SYNCLINE_WS_MESSAGE_TIMEOUT_S", 30.0))
    ws_handshake_timeout_s: float = field(default_factory=lambda: _float("SYNCLINE_WS_HANDSHAKE_TIMEOUT_S", 10.0))
    ws_close_timeout_s: float = field(default_factory=lambda: _float("SYNCLINE_WS_CLOSE_TIMEOUT_S", 2.0))
    ws_close_discard_bytes: int = field(default_factory=lambda: _int("SYNCLINE_WS_CLOSE_DISCARD_BYTES", 1 << 20))
    # Received messages waiting for the app: reading pauses past this many bytes (TCP pushes back).
    ws_inbox_max_bytes: int = field(default_factory=lambda: _int("SYNCLINE_WS_INBOX_MAX_BYTES", 8 << 20))
    ws_ping_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_WS_PING_INTERVAL_S", 30.0))
    ws_idle_timeout_s: float = field(default_factory=lambda: _float("SYNCLINE_WS_IDLE_TIMEOUT_S", 90.0))
    # Open WebSocket connections (native and Yjs together) per (tenant, user) and per client IP.
    ws_max_connections_per_user: int = field(
        default_factory=lambda: _int("SYNCLINE_WS_MAX_CONNECTIONS_PER_USER", 100))
    ws_max_connections_per_ip: int = field(default_factory=lambda: _int("SYNCLINE_WS_MAX_CONNECTIONS_PER_IP", 1000))
    # Presence: the encoded size of one presence / awareness state, and rooms per native connection.
    presence_state_max_bytes: int = field(default_factory=lambda: _int("SYNCLINE_PRESENCE_STATE_MAX_BYTES", 16 << 10))
    rooms_max_per_connection: int = field(default_factory=lambda: _int("SYNCLINE_ROOMS_MAX_PER_CONNECTION", 128))
    # Remote bus consumers (api/bus_sessions.py; docs/protocol.md#bus-consumers): sessions per
    # tenant, per native connection and in total; deliveries one session holds (waiting +
    # leased); the largest batch, lease and ttl a consumer may ask for.
    bus_consumers_per_tenant: int = field(default_factory=lambda: _int("SYNCLINE_BUS_CONSUMERS_PER_TENANT", 64))
    bus_consumers_per_connection: int = field(
        default_factory=lambda: _int("SYNCLINE_BUS_CONSUMERS_PER_CONNECTION", 8))
    bus_consumers_max: int = field(default_factory=lambda: _int("SYNCLINE_BUS_CONSUMERS_MAX", 1000))
    bus_consumer_buffer_max: int = field(default_factory=lambda: _int("SYNCLINE_BUS_CONSUMER_BUFFER_MAX", 2000))
    bus_consumer_batch_max: int = field(default_factory=lambda: _int("SYNCLINE_BUS_CONSUMER_BATCH_MAX", 1000))
    bus_consumer_lease_max_s: float = field(default_factory=lambda: _float("SYNCLINE_BUS_CONSUMER_LEASE_MAX_S", 300.0))
    bus_consumer_ttl_max_s: float = field(default_factory=lambda: _float("SYNCLINE_BUS_CONSUMER_TTL_MAX_S", 600.0))
    # Yjs writes per connection: token buckets (sustained rate per second, burst) for
    # messages and for update bytes; past either the connection closes with 4429.
    yjs_rate_messages_per_s: float = field(default_factory=lambda: _float("SYNCLINE_YJS_RATE_MESSAGES_PER_S", 50.0))
    yjs_rate_messages_burst: int = field(default_factory=lambda: _int("SYNCLINE_YJS_RATE_MESSAGES_BURST", 1000))
    yjs_rate_bytes_per_s: float = field(default_factory=lambda: _float("SYNCLINE_YJS_RATE_BYTES_PER_S", 1 << 20))
    yjs_rate_bytes_burst: int = field(default_factory=lambda: _int("SYNCLINE_YJS_RATE_BYTES_BURST", 16 << 20))
    # Stored bytes of a tenant's Yjs documents (their crdt.update events); 0: no quota.
    doc_quota_bytes_per_tenant: int = field(
        default_factory=lambda: _int("SYNCLINE_DOC_QUOTA_BYTES_PER_TENANT", 1 << 30))
    # REST requests per (tenant, user) — per client IP without a valid token — in a window.
    rest_rate_requests: int = field(default_factory=lambda: _int("SYNCLINE_REST_RATE_REQUESTS", 1200))
    rest_rate_window_s: float = field(default_factory=lambda: _float("SYNCLINE_REST_RATE_WINDOW_S", 60.0))
    # -- what only the configuration file sets (api/config_file.py, docs/configuration.md) --
    # Role -> permissions (``[roles]``): the default table unless the file changes it.
    roles: RoleTable = field(default_factory=lambda: DEFAULT_ROLE_TABLE)
    # The ``[resolution]`` rules (engine/records/rules.py); None: every field LWW, any collection.
    resolution_rules: dict[str, Any] | None = None
    config_file: str | None = None  # the file these settings were read from
