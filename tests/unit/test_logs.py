"""Logging: no traceback carries frame locals or value-bearing messages, in any format,
and libraries' own log lines come out through the same renderer."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
import structlog

from replicator import logs
from replicator.errors import MaskingError, format_exception_safely
from replicator.masking import MaskingKey, compile_mask, parse_mask

PLANTED = "AADHAAR111122223333"
KEY_BYTES = b"k3y-bytes-that-must-never-show-0123456789"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as the console format's colours need."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _fail_with_locals() -> None:
    planted_local = PLANTED  # noqa: F841 - a local a locals-printing renderer would show
    key = MaskingKey(KEY_BYTES)  # noqa: F841
    try:
        int(PLANTED + "x")  # ValueError: "invalid literal for int() ...: 'AADHAAR...'"
    except ValueError as exc:
        raise MaskingError("cannot mask column 'aadhaar'") from exc


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_logged_traceback_shows_frames_but_no_locals_or_values(fmt):
    stream = Terminal() if fmt == "console" else io.StringIO()
    logs.configure(fmt, "info", stream=stream)
    try:
        _fail_with_locals()
    except MaskingError:
        structlog.get_logger("replicator").error("pipeline_failed", exc_info=True)
    out = stream.getvalue()
    assert "_fail_with_locals" in out  # the frames are there
    assert "cannot mask column 'aadhaar'" in out  # our own message is there
    assert "ValueError" in out  # and the cause's type
    assert PLANTED not in out
    assert "planted_local" not in out
    assert "k3y-bytes" not in out
    if fmt == "json":
        (line,) = out.splitlines()
        assert "exception" in orjson.loads(line)


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_library_log_lines_use_our_renderer_and_withhold_their_arguments(fmt):
    stream = Terminal() if fmt == "console" else io.StringIO()
    logs.configure(fmt, "info", stream=stream)
    client_bytes = b"GET /?aadhaar=" + PLANTED.encode() + b" HTTP/1.1"
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s: %d bytes", client_bytes, 41, exc_info=ValueError(PLANTED)
    )
    logging.getLogger("psycopg").warning("error ignored in rollback on %r", object())
    logging.getLogger("aiohttp.access").info("access %s", PLANTED)  # below the library floor
    out = stream.getvalue()
    assert PLANTED not in out
    assert "Error handling request from <withheld>: 41 bytes" in out
    assert "error ignored in rollback on <withheld>" in out
    if fmt == "json":
        lines = [orjson.loads(line) for line in out.splitlines()]  # every line is JSON
        assert [(x["logger"], x["level"]) for x in lines] == [
            ("aiohttp.server", "error"),
            ("psycopg", "warning"),
        ]
        assert lines[0]["exception"] == "ValueError: message withheld"


def test_safe_traceback_renders_groups_and_chains_without_messages_of_unknown_errors():
    try:
        try:
            {}[PLANTED]
        except KeyError as exc:
            raise ExceptionGroup("task group", [exc, MaskingError("stop")]) from None
    except ExceptionGroup as group:
        text = format_exception_safely(group)
    assert PLANTED not in text
    assert "KeyError: message withheld" in text
    assert "MaskingError: stop" in text


def test_hash_mask_functions_hold_no_key_bytes_in_their_closure():
    fn = compile_mask(parse_mask("hash"), MaskingKey(KEY_BYTES))
    cells = [c.cell_contents for c in fn.__closure__ or ()]
    assert all(KEY_BYTES not in repr(c).encode() for c in cells)
    assert not any(isinstance(c, bytes | MaskingKey) for c in cells)
