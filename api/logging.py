"""One log format: JSON lines through structlog, for our lines and everybody else's.

Every line is one JSON object on stderr with ``service``, ``version``, ``level``,
``timestamp`` and ``event``. Our code logs through structlog (``log``, ``security_log``);
the libraries that log through the standard ``logging`` module (alembic's migrations,
uvicorn's access and error loggers, the prune job in store/maintenance.py) go through
the same processors via a :class:`structlog.stdlib.ProcessorFormatter` on the root
logger, so nothing reaches stderr as plain text.

Per request or connection, ``bind`` adds fields to every line (``correlation_id``,
``trace_id``, ``tenant``, ``user``, ``route``/``endpoint``) through structlog's context
variables. docs/observability.md lists the fields.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, merge_contextvars

SERVICE_ENV = "OTEL_SERVICE_NAME"  # the OpenTelemetry name for it; tracing uses the same one
DEFAULT_SERVICE = "syncline"
# The standard-library loggers we route into the JSON stream and their default levels
# (alembic's per-revision INFO lines are noise at startup; uvicorn's access lines repeat
# our own ``http.request`` lines, so they show only when asked for with SYNCLINE_LOG_LEVEL).
_FOREIGN_LEVELS = {"alembic": logging.WARNING, "uvicorn.access": logging.WARNING}

_configured = False


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured:
    a CLI test runner (or pytest) swaps it for a while, and a logger bound to the swapped
    stream would write to a closed file afterwards."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _CurrentStderr()


def service_name() -> str:
    return os.environ.get(SERVICE_ENV) or DEFAULT_SERVICE


def service_version() -> str:
    try:
        from importlib.metadata import version

        return version("syncline")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _service_fields(service: str, version: str):
    def add(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        event.setdefault("version", version)
        return event

    return add


def _level_from_env(default: int) -> int:
    name = os.environ.get("SYNCLINE_LOG_LEVEL", "").strip().upper()
    return logging.getLevelNamesMapping().get(name, default) if name else default


def configure_logging(json_logs: bool = True, level: int = logging.INFO) -> None:
    """Configure structlog and the standard ``logging`` root once per process (later
    calls are no-ops: tests build many apps in one process). ``json_logs=False``
    (``SYNCLINE_LOG_FORMAT=console``) renders for a human at a terminal instead."""
    global _configured
    if _configured:
        return
    _configured = True
    level = _level_from_env(level)
    shared = [
        merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _service_fields(service_name(), service_version()),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
    # The standard library's loggers: same fields, same renderer, one handler on the root.
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):  # a plain text handler (basicConfig); a test runner's capture stays
        if type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    asked = bool(os.environ.get("SYNCLINE_LOG_LEVEL", "").strip())
    for name, floor in _FOREIGN_LEVELS.items():
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True
        foreign.setLevel(level if asked else max(floor, level))  # an explicit SYNCLINE_LOG_LEVEL applies to all
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own config may have given them handlers
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)


def new_correlation_id(given: str | None = None) -> str:
    if given and 0 < len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def bind(**values) -> None:
    bind_contextvars(**values)


def clear() -> None:
    clear_contextvars()


log = structlog.get_logger("syncline")
security_log = structlog.get_logger("syncline.security")

_UA_MAX = 200


def peer_of(scope: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(peer address "host:port", user agent) of an ASGI scope, for refusal lines."""
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else None
    agent = None
    for name, value in scope.get("headers") or ():
        if name == b"user-agent":
            agent = value.decode("latin-1")[:_UA_MAX]
            break
    return peer, agent


def login_refused(scope: Mapping[str, Any], *, endpoint: str, code: str, stage: str = "handshake") -> None:
    """One ``auth.refused`` line for a refused login (a missing, expired, badly signed,
    malformed or revoked token) with the peer's address and user agent; never the token.
    ``stage``: ``handshake`` (REST request or WebSocket upgrade) or ``in_band`` (a native
    ``auth`` message on an open connection)."""
    peer, agent = peer_of(scope)
    security_log.warning("auth.refused", endpoint=endpoint, code=code, stage=stage, peer=peer, user_agent=agent,
                         path=scope.get("path"))
