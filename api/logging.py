"""Structured JSON logs (structlog) with a correlation id bound per request and per connection."""
from __future__ import annotations

import logging
import sys
import uuid

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, merge_contextvars

_configured = False


def configure_logging(json_logs: bool = True, level: int = logging.INFO) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


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
