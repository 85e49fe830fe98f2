"""structlog setup (JSON lines by default) and redact() so keys and device tokens never appear in full."""

from __future__ import annotations

import logging
import sys
from contextlib import AbstractContextManager
from typing import Any

import structlog

from pushgw.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")


def redact(secret: str | None, keep: int = 4) -> str:
    """`abcd…(64)`: enough to correlate, never enough to use."""
    if not secret:
        return ""
    if len(secret) <= keep * 2:
        return f"…({len(secret)})"
    return f"{secret[:keep]}…({len(secret)})"


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def log_context(**fields: str) -> AbstractContextManager[Any]:
    """Every log line inside the block, and in the tasks it starts, carries these fields (push_id, unit)."""
    return structlog.contextvars.bound_contextvars(**fields)
