"""Logging setup: structlog, JSON lines by default, console rendering at a terminal.

Events are lowercase names with key=value fields; context (pipeline, slot, xid,
LSN, table) is bound per asyncio task with contextvars. Never log a row value or
a DSN with its password: pass :class:`replicator.config.Dsn` objects, which redact
themselves.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import orjson
import structlog


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info", *, stream: Any = None
) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        processors[-1] = structlog.dev.set_exc_info
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger("replicator", **bound)  # type: ignore[no-any-return]
