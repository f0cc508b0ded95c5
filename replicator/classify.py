"""One place that maps a failure to what the pipeline does next.

RETRY: transient (connection loss; SQLSTATE classes 08 connection, 40 transaction
rollback, 53 insufficient resources, 57 operator intervention; a slot still held by
a walsender that has not noticed its client is gone; a read-only database, 25006: a hot
standby, a demoted primary or default_transaction_read_only, which a failover or a DBA
ends; a session ended by idle_in_transaction_session_timeout or transaction_timeout).
The pipeline reconnects with exponential backoff and resumes from the target's origin
progress. :func:`retry_reason` says in a few words why, for ``/readyz``.

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
READ_ONLY = "25006"  # read_only_sql_transaction: standby, demoted primary, read-only default
# the server ended the session over a timeout: a new one starts clean
_SESSION_TIMEOUTS = frozenset({"25P03", "25P04"})
_RETRY_STATES = frozenset({"55006", READ_ONLY, *_SESSION_TIMEOUTS})


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
        # 55006 object_in_use: "replication slot ... is active for PID ..."
        if state in _RETRY_STATES:
            return Directive.RETRY
        if state[:2] in _ROW_CLASSES:
            return Directive.DEAD_LETTER
        return Directive.STOP
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return Directive.RETRY
    return Directive.STOP


_CLASS_REASONS = {
    "08": "connection failure",
    "40": "transaction rolled back (serialization failure or deadlock)",
    "53": "server out of resources",
    "57": "server shut down or cancelled the query",
}


def retry_reason(exc: BaseException) -> str:
    """Why a RETRY failure is retried, for people (``/readyz``, ``/status``): no values."""
    exc = leaf(exc)
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        state = exc.sqlstate
        if state == READ_ONLY:
            return (
                "a database is read-only (hot standby, demoted primary or "
                "default_transaction_read_only); retrying until it accepts writes"
            )
        if state == "55006":
            return "replication slot still held by another walsender"
        if state in _SESSION_TIMEOUTS:
            return "the server ended the session over a timeout"
        return _CLASS_REASONS.get(state[:2], "transient server error")
    return "connection lost or refused"
