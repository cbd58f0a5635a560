"""Settings from the environment (``SYNCLINE_*``), with defaults for the embedded setup."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB = "sqlite+aiosqlite:///var/syncline.db"
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


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Settings:
    database_url: str = field(default_factory=lambda: os.environ.get("SYNCLINE_DATABASE_URL", DEFAULT_DB))
    redis_url: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_REDIS_URL") or None)
    host: str = field(default_factory=lambda: os.environ.get("SYNCLINE_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _int("SYNCLINE_PORT", 8000))
    jwt_secret: str = field(default_factory=lambda: os.environ.get("SYNCLINE_JWT_SECRET") or _dev_secret())
    jwt_algorithm: str = field(default_factory=lambda: os.environ.get("SYNCLINE_JWT_ALGORITHM", "HS256"))
    jwt_public_key: str | None = field(default_factory=lambda: os.environ.get("SYNCLINE_JWT_PUBLIC_KEY") or None)
    retention_s: float = field(default_factory=lambda: _float("SYNCLINE_RETENTION_S", 7 * 86400))
    max_payload: int = field(default_factory=lambda: _int("SYNCLINE_MAX_PAYLOAD", 1024 * 1024))
    poll_interval_s: float = field(default_factory=lambda: _float("SYNCLINE_POLL_INTERVAL_S", 1.0))
