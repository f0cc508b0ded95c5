"""The exception hierarchy. Classification into retry/dead-letter/stop lives in one place,
:mod:`replicator.classify`; these classes only carry context.

Messages never include row values: a value may be an unmasked secret.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Collection


class ReplicatorError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(ReplicatorError):
    """The configuration is invalid. ``problems`` lists every finding, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


class ProtocolError(ReplicatorError):
    """Bytes from the server do not decode. ``offset`` is the byte position in the message."""

    def __init__(self, reason: str, *, offset: int, tag: str | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.tag = tag
        where = f" in {tag!r} message" if tag else ""
        super().__init__(f"{reason}{where} at byte {offset}")


class StreamStateError(ReplicatorError):
    """Messages arrived in an order the protocol does not allow (e.g. Insert outside Begin)."""


class SchemaError(ReplicatorError):
    """A source relation cannot be mapped onto its target table (missing column, no key, ...)."""


class SlotError(ReplicatorError):
    """The replication slot is missing, lost or otherwise unusable. Never auto-recreated."""


class MaskingError(ReplicatorError):
    """A masking rule cannot be honoured; the pipeline stops rather than ship a value unmasked."""


# SQLSTATE classes whose primary messages name objects (relations, columns, roles,
# settings, connections) but never data. Every other class may quote data: 22 data
# exception ('invalid input syntax for type integer: "<value>"'), 23 integrity (a
# partition key, an exclusion), 27 and 44 (triggered changes, check options); their
# quoted spans and any text after ": " are removed. The rest (P0 PL/pgSQL RAISE, 38/39
# routines, XX internal, anything unknown) carries text a trigger or extension wrote,
# with no shape to rely on: its message is withheld altogether.
_NAMES_ONLY_CLASSES = frozenset(
    {"08", "0A", "0L", "0P", "21", "24", "25", "26", "28", "2B", "2D", "34", "3B", "3D", "3F"}
    | {"40", "42", "53", "54", "55", "57", "58"}
)
_DATA_CLASSES = frozenset({"22", "23", "27", "44"})
_QUOTED = re.compile(r'"([^"]*)"')
# COPY's CONTEXT names the column before the value: 'COPY t, line 3, column amount: "x"'
_COPY_COLUMN = re.compile(r"^COPY [^,\n]*, line \d+, column ([^:\n]+):")
WITHHELD = "message withheld (this class of error may quote row values)"


def redact_message(message: str, names: Collection[str]) -> str:
    """``message`` (a server's primary message) without the values it may quote.

    A double-quoted span stays when it is one of ``names`` (the object names the server
    reported alongside). Of the rest, one quoted span becomes ``"…"``; more than one, or
    an odd quote (a value holding quotes), cuts the message at the first quote, since
    spans can then no longer be told apart. Text after the first ": " is cut: PostgreSQL
    puts the offending value there.
    """
    kept: dict[str, str] = {}

    def stash(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            return m.group(0)
        token = f"\0{len(kept)}\0"
        kept[token] = m.group(0)
        return token

    text = _QUOTED.sub(stash, message)
    if text.count('"') == 2:  # exactly one unknown quoted span
        head, _, rest = text.partition('"')
        text = head + '"…"' + rest.partition('"')[2]
    elif '"' in text:
        text = text.split('"', 1)[0]
    text = text.split(": ", 1)[0].rstrip(" :")
    for token, original in kept.items():
        text = text.replace(token, original)
    return text


def describe_error(exc: BaseException) -> str:
    """One line about an error that is safe to log, expose or store.

    PostgreSQL puts row values in DETAIL ("Key (email)=(...) already exists", "Failing
    row contains (...)") and CONTEXT (COPY ... line N, column c: "..."); both are
    dropped. For data-bearing SQLSTATE classes the primary message goes through
    :func:`redact_message` (or is withheld, see ``_NAMES_ONLY_CLASSES``). What stays: the
    class, SQLSTATE, the primary message with values removed, and object names.
    """
    import psycopg  # noqa: PLC0415 - keeps this module importable by pure code

    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        state = exc.sqlstate or ""
        column = diag.column_name
        if column is None and diag.context:
            found = _COPY_COLUMN.match(diag.context)
            column = found.group(1) if found else None
        names = [n for n in (diag.schema_name, diag.table_name, column, diag.constraint_name) if n]
        if diag.datatype_name:
            names.append(diag.datatype_name)
        primary = diag.message_primary
        if primary is None:  # client-side (libpq) errors: no diagnostics, no row values
            primary = str(exc).strip().split("\n", 1)[0]
        elif state[:2] in _DATA_CLASSES:
            primary = redact_message(primary, names)
        elif state[:2] not in _NAMES_ONLY_CLASSES:
            primary = WITHHELD
        where = [
            f"{label} {value}"
            for label, value in (
                ("table", ".".join(p for p in (diag.schema_name, diag.table_name) if p)),
                ("column", column),
                ("constraint", diag.constraint_name),
            )
            if value
        ]
        shown = f" [{state}]" if state else ""
        suffix = f" ({', '.join(where)})" if where else ""
        return f"{type(exc).__name__}{shown}: {primary}{suffix}"
    if isinstance(exc, ReplicatorError | OSError):
        # ours are written not to quote values; an OSError says errno, text and file name
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        return f"{type(exc).__name__}: {len(exc.exceptions)} sub-exception(s)"
    # anything else (a KeyError, a ValueError from int(), a library's parse error) may
    # carry the value it choked on: say what it was and where (tracebacks), not what it said
    return f"{type(exc).__name__}" + (": message withheld" if str(exc) else "")


_MAX_CHAIN = 16  # causes, contexts and group members shown per traceback


def format_exception_safely(exc: BaseException) -> str:
    """A traceback for logs: frames (file, line, function, source line) and, per exception
    in the chain, :func:`describe_error` instead of ``str(exc)``. Never a frame's local
    variables, never a message that :func:`describe_error` would not show; exception notes
    (``__notes__``) are left out, as they can say anything."""
    out: list[str] = []
    budget = [_MAX_CHAIN]
    _format_chain(exc, out, set(), budget, "")
    return "".join(out).rstrip("\n")


def _format_chain(
    exc: BaseException, out: list[str], seen: set[int], budget: list[int], indent: str
) -> None:
    # oldest first, as Python prints it: the cause or context, then what it led to
    seen.add(id(exc))
    budget[0] -= 1
    if budget[0] < 0:
        out.append(f"{indent}... (more exceptions left out)\n")
        return
    cause, link = exc.__cause__, "The above exception was the direct cause of the following"
    if cause is None and not exc.__suppress_context__:
        cause, link = exc.__context__, "During handling of the above exception, another occurred"
    if cause is not None and id(cause) not in seen:
        _format_chain(cause, out, seen, budget, indent)
        out.append(f"\n{indent}{link}:\n\n")
    if exc.__traceback__ is not None:
        out.append(f"{indent}Traceback (most recent call last):\n")
        frames = traceback.extract_tb(exc.__traceback__)  # capture_locals stays False
        out.extend(indent + line for line in traceback.format_list(frames))
    out.append(f"{indent}{describe_error(exc)}\n")
    if isinstance(exc, BaseExceptionGroup):
        for i, sub in enumerate(exc.exceptions, 1):
            if id(sub) in seen:
                continue
            out.append(f"{indent}+---- {i} ----\n")
            _format_chain(sub, out, seen, budget, indent + "| ")
