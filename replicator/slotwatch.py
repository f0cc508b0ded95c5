"""Slot safety on the source: how much WAL the slot holds, and a heartbeat when idle.

Every ``interval`` seconds, on an ordinary SQL connection to the source: read the
slot's retained WAL (``pg_current_wal_lsn() - restart_lsn``), ``wal_status`` and
``safe_wal_size`` into the pipeline's stats, warn above the configured threshold,
and stop the pipeline if the slot is gone or lost. When the stream has been quiet,
emit a non-transactional ``pg_logical_emit_message``: it travels through the slot,
and once applied-up-to it lets the pipeline confirm a recent position, so an idle
database in a busy cluster never pins WAL.

I/O. Never touches the replication connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import structlog
from psycopg import AsyncConnection

from replicator.errors import SlotError
from replicator.lsn import Lsn

HEARTBEAT_PREFIX = "replicator.heartbeat"


@dataclass(slots=True)
class SlotFacts:
    active: bool
    wal_status: str | None
    retained_bytes: int
    safe_wal_size: int | None
    confirmed_flush: Lsn


async def read_slot(conn: AsyncConnection, slot: str) -> SlotFacts | None:
    cur = await conn.execute(
        "SELECT active, wal_status,"
        " pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint,"
        " safe_wal_size, confirmed_flush_lsn::text"
        " FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
        [slot],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    active, status, retained, safe, confirmed = row
    return SlotFacts(
        bool(active), status, int(retained or 0), safe, Lsn(confirmed) if confirmed else Lsn(0)
    )


async def watch(
    dsn: str,
    slot: str,
    *,
    interval: float,
    heartbeat_after: float,
    warn_bytes: int,
    last_data: Callable[[], float],
    report: Callable[[SlotFacts], None],
    application_name: str,
) -> None:
    """Run until cancelled; raise SlotError if the slot is dropped or lost."""
    log = structlog.get_logger("replicator").bind(slot=slot)
    warned = False
    async with await AsyncConnection.connect(
        dsn, autocommit=True, application_name=application_name
    ) as conn:
        while True:
            facts = await read_slot(conn, slot)
            if facts is None:
                raise SlotError(
                    f"replication slot {slot!r} was dropped while streaming; it is never "
                    "recreated silently: run `replicator resync --all`"
                )
            if facts.wal_status == "lost":
                raise SlotError(
                    f"replication slot {slot!r} is lost (the WAL it needs was removed, see "
                    "max_slot_wal_keep_size): run `replicator resync --all`"
                )
            report(facts)
            if warn_bytes and facts.retained_bytes > warn_bytes and not warned:
                log.warning(
                    "slot_retains_wal",
                    retained_bytes=facts.retained_bytes,
                    wal_status=facts.wal_status,
                    safe_wal_size=facts.safe_wal_size,
                    threshold_bytes=warn_bytes,
                )
                warned = True
            elif facts.retained_bytes <= warn_bytes:
                warned = False
            if heartbeat_after and time.monotonic() - last_data() >= heartbeat_after:
                try:
                    await conn.execute(
                        "SELECT pg_catalog.pg_logical_emit_message(false, %s, now()::text)",
                        [HEARTBEAT_PREFIX],
                    )
                except psycopg.errors.InsufficientPrivilege:
                    log.warning(
                        "heartbeat_not_permitted",
                        hint="GRANT EXECUTE ON FUNCTION pg_logical_emit_message"
                        "(boolean, text, text) TO the replication role",
                    )
                    heartbeat_after = 0
            await asyncio.sleep(interval)
