"""Connection recipes: the session settings every value-carrying session is pinned to.

Values cross between servers as text: the replication stream, the initial copy, a
resync and the apply all read or write them in one format, whatever the servers' own
defaults (``ALTER DATABASE ... SET DateStyle`` included). The settings are defined here
once; every source session that reads values and every target session that writes
them connects through this module.

I/O only in :func:`connect_source`; no SQL is built here. :func:`answered_within` bounds
a step that waits on a server: TCP keepalives catch a dead peer, not a live one that
never answers (a walsender stuck on START_REPLICATION, a route that swallows bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

# datestyle, intervalstyle and extra_float_digits as PostgreSQL's apply worker sets them;
# bytea_output and lc_monetary so bytea and money values parse on any target
PINNED_OPTIONS: Final = (
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 "
    "-c bytea_output=hex -c lc_monetary=C"
)

# detect a dead peer even when no query is running (half-open connections)
_KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "connect_timeout": "15",
}


def source_conninfo(dsn: str, *, application_name: str, replication: bool = False) -> str:
    """A source session (walsender with ``replication``) with the pinned output format."""
    extra = {
        "client_encoding": "UTF8",
        "options": PINNED_OPTIONS,
        "application_name": application_name,
        **_KEEPALIVES,
    }
    if replication:
        extra["replication"] = "database"
    return make_conninfo(dsn, **extra)


def target_conninfo(dsn: str, application_name: str) -> str:
    """A target session whose text input (and output) is the same pinned format."""
    return make_conninfo(
        dsn,
        options=PINNED_OPTIONS,
        application_name=application_name,
        client_encoding="UTF8",
        **_KEEPALIVES,
    )


async def connect_source(dsn: str, application_name: str) -> AsyncConnection:
    """An autocommit source session that reads values (copy, resync, range planning)."""
    return await AsyncConnection.connect(
        source_conninfo(dsn, application_name=application_name), autocommit=True
    )


@contextlib.asynccontextmanager
async def answered_within(seconds: float, what: str, setting: str) -> AsyncIterator[None]:
    """Run the block within ``seconds``, or fail it as a lost connection (retried) whose
    message names the step and the setting that bounds it."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise psycopg.OperationalError(
            f"{what} did not answer within {seconds:g}s ({setting})"
        ) from None
