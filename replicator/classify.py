"""One place that maps a failure to what the pipeline does next.

RETRY: transient (connection loss; SQLSTATE classes 08 connection, 40 transaction
rollback, 53 insufficient resources, 57 operator intervention; a slot still held by
a walsender that has not noticed its client is gone). The pipeline reconnects with
exponential backoff and resumes from the target's origin progress.

DEAD_LETTER: the target rejects a row (classes 22 data exception, 23 integrity).

STOP: retrying cannot help (bad config or schema, a lost slot, undecodable bytes,
missing privileges). The pipeline stops with a hint for the operator; the others go on.
"""

from __future__ import annotations

import enum

import psycopg

from replicator.errors import (
    ConfigError,
    MaskingError,
    ProtocolError,
    SchemaError,
    SlotError,
    StreamStateError,
)


class Directive(enum.Enum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


_RETRY_CLASSES = frozenset({"08", "40", "53", "57"})
_ROW_CLASSES = frozenset({"22", "23"})


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def classify(exc: BaseException) -> Directive:
    exc = leaf(exc)
    if isinstance(
        exc, ConfigError | SchemaError | MaskingError | SlotError | ProtocolError | StreamStateError
    ):
        return Directive.STOP
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # No SQLSTATE: the error came from the client. An OperationalError is a lost or
            # refused connection; a bare DatabaseError is an error result libpq made up
            # itself ("server closed the connection unexpectedly" in the middle of a
            # COPY or a pipeline). A fresh connection cures both. Other classes are our
            # own misuse (a value psycopg cannot dump, a bad call): retrying repeats it.
            lost = isinstance(exc, psycopg.OperationalError) or type(exc) is psycopg.DatabaseError
            return Directive.RETRY if lost else Directive.STOP
        if state[:2] in _RETRY_CLASSES:
            return Directive.RETRY
        if state == "55006":  # object_in_use: "replication slot ... is active for PID ..."
            return Directive.RETRY
        if state[:2] in _ROW_CLASSES:
            return Directive.DEAD_LETTER
        return Directive.STOP
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return Directive.RETRY
    return Directive.STOP
