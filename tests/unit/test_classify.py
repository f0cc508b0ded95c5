"""Which failures retry, which dead-letter a row, which stop the pipeline."""

from __future__ import annotations

import psycopg
import pytest

from replicator.classify import Directive, classify
from replicator.errors import SlotError


@pytest.mark.parametrize(
    ("exc", "directive"),
    [
        # client-side, no SQLSTATE: a lost connection, however psycopg reports it
        (psycopg.OperationalError("connection refused"), Directive.RETRY),
        (psycopg.DatabaseError("server closed the connection unexpectedly"), Directive.RETRY),
        # client-side misuse: retrying would repeat it
        (psycopg.ProgrammingError("the query has 2 placeholders but 1 parameter"), Directive.STOP),
        (psycopg.InterfaceError("the connection is closed"), Directive.STOP),
        (psycopg.DataError("cannot dump"), Directive.STOP),
        # server-side, by SQLSTATE class
        (psycopg.errors.AdminShutdown(), Directive.RETRY),
        (psycopg.errors.SerializationFailure(), Directive.RETRY),
        (psycopg.errors.ObjectInUse(), Directive.RETRY),
        # a hot standby, a demoted primary, default_transaction_read_only: retry
        (psycopg.errors.ReadOnlySqlTransaction(), Directive.RETRY),
        (psycopg.errors.IdleInTransactionSessionTimeout(), Directive.RETRY),
        (psycopg.errors.UniqueViolation(), Directive.DEAD_LETTER),
        (psycopg.errors.InvalidTextRepresentation(), Directive.DEAD_LETTER),
        (psycopg.errors.UndefinedTable(), Directive.STOP),
        (SlotError("replication slot 'x' does not exist"), Directive.STOP),
        (ConnectionResetError(), Directive.RETRY),
        (ExceptionGroup("task group", [psycopg.OperationalError("lost")]), Directive.RETRY),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_directive(exc: BaseException, directive: Directive) -> None:
    assert classify(exc) is directive


def test_retry_reason_says_a_database_is_read_only():
    from replicator.classify import retry_reason  # noqa: PLC0415

    assert "read-only" in retry_reason(psycopg.errors.ReadOnlySqlTransaction())
    assert "read-only" in retry_reason(
        ExceptionGroup("task group", [psycopg.errors.ReadOnlySqlTransaction()])
    )
    assert retry_reason(psycopg.OperationalError("refused")) == "connection lost or refused"
