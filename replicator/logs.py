"""Logging setup: structlog, JSON lines by default, console rendering at a terminal.

Events are lowercase names with key=value fields; context (pipeline, slot, xid,
LSN, table) is bound per asyncio task with contextvars. Never log a row value or
a DSN with its password: pass :class:`replicator.config.Dsn` objects, which redact
themselves.

What this module guarantees, whatever the caller passes:

- A traceback never shows a frame's local variables, in any format: both renderers get
  :func:`replicator.errors.format_exception_safely` (frames, and each exception as
  :func:`~replicator.errors.describe_error` shows it), never structlog's or rich's own
  exception formatters, which print locals when rich is installed.
- Libraries' own loggers (aiohttp, psycopg, asyncio: the stdlib ``logging`` root) go
  through the same processors and renderer, so a JSON stream stays JSON. Their message
  is the format string with only numbers substituted: the other arguments (a request
  line a client sent, an error with its DETAIL) are withheld.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog

from replicator.errors import describe_error, format_exception_safely

WITHHELD = "<withheld>"


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) > 1 else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def render_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``exc_info`` -> ``exception``: a traceback without locals or value-bearing text."""
    exc = _exception_of(event_dict.pop("exc_info", None))
    if exc is not None:
        event_dict["exception"] = format_exception_safely(exc)
    return event_dict


def _console_exception_formatter(sio: Any, exc_info: Any) -> None:
    # only reached if an exc_info slipped past render_exception: same safe text
    exc = _exception_of(exc_info)
    if exc is not None:
        sio.write("\n" + format_exception_safely(exc))


class _Withheld:
    """Stands in for a library log argument that may carry bytes from outside."""

    def __str__(self) -> str:
        return WITHHELD

    __repr__ = __str__


def _safe_arg(arg: Any) -> Any:
    if isinstance(arg, bool | int | float) or arg is None:
        return arg
    if isinstance(arg, BaseException):
        return describe_error(arg)
    return _Withheld()


def foreign_record(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A stdlib record from a library: its template, numbers and described errors only."""
    record: logging.LogRecord | None = event_dict.get("_record")
    args = event_dict.pop("positional_args", None)
    template = event_dict.get("event")
    if isinstance(template, str) and args:
        values: tuple[Any, ...] | dict[str, Any]
        if isinstance(args, dict):  # logger.info("%(x)s", {"x": ...})
            values = {k: _safe_arg(v) for k, v in args.items()}
        else:
            values = tuple(_safe_arg(v) for v in (args if isinstance(args, tuple) else (args,)))
        try:
            event_dict["event"] = template % values
        except (TypeError, ValueError, KeyError):
            event_dict["event"] = template  # e.g. %d given a withheld value
    elif not isinstance(template, str):
        event_dict["event"] = WITHHELD
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


def _level_of(level: str) -> int:
    return logging.getLevelNamesMapping()[level.upper()]


def configure(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info", *, stream: Any = None
) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        render_exception,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=_console_exception_formatter
        )
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_level_of(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # every other logger in the process: the root's one handler renders as we do
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[foreign_record, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            use_get_message=False,  # the template: foreign_record substitutes safe args
            pass_foreign_args=True,
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # libraries log at their own levels; below warning they speak of requests and
    # queries, so even at debug we only take their warnings (ours follow `level`)
    root.setLevel(max(_level_of(level), logging.WARNING))
    logging.captureWarnings(True)


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger("replicator", **bound)
