"""The exception hierarchy. Classification into retry/dead-letter/stop lives in one place,
:mod:`replicator.classify`; these classes only carry context.

Messages never include row values: a value may be an unmasked secret.
"""

from __future__ import annotations


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


def describe_error(exc: BaseException) -> str:
    """One line about an error that is safe to log, expose or store.

    PostgreSQL puts row values in DETAIL ("Key (email)=(...) already exists", "Failing
    row contains (...)") and CONTEXT (COPY ... line N, column c: "..."); both are
    dropped. What stays: the class, SQLSTATE, the primary message and object names.
    """
    import psycopg  # noqa: PLC0415 - keeps this module importable by pure code

    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        primary = diag.message_primary
        if primary is None:  # client-side (libpq) errors: no diagnostics, no row values
            primary = str(exc).strip().split("\n", 1)[0]
        where = [
            f"{label} {value}"
            for label, value in (
                ("table", ".".join(p for p in (diag.schema_name, diag.table_name) if p)),
                ("column", diag.column_name),
                ("constraint", diag.constraint_name),
            )
            if value
        ]
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        suffix = f" ({', '.join(where)})" if where else ""
        return f"{type(exc).__name__}{state}: {primary}{suffix}"
    return f"{type(exc).__name__}: {exc}"
