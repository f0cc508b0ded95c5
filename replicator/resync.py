"""Resync of one table while its pipeline keeps streaming the others.

The approach of PostgreSQL's tablesync workers, adapted to one applier:

1. from the moment an operator asks (``replicator.tables.state = 'resync'``, written
   by ``replicator resync --table``), the pipeline applies nothing to the table; it
   keeps the table's raw changes aside, in order, with their source transaction;
2. a temporary slot with an exported snapshot gives a consistent point L; a copy
   worker truncates and refills the table under that snapshot in ONE target
   transaction (readers see the old rows until it commits, then the new ones);
3. changes kept aside that committed before L are in the copy: dropped. The rest are
   folded, ahead of any newer change to the table, into the pipeline's open target
   transaction, which also marks the table ``ready`` with ``skip_until = L``.

A crash anywhere before that transaction commits leaves the table in ``resync``:
the next start copies it again. Memory: what is kept aside is bounded; past the
bound the applier waits for the copy instead of growing.

I/O orchestration of the copy; the bookkeeping lives in the pipeline.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

import structlog
from psycopg import AsyncConnection

from replicator import control
from replicator.config import Config, PipelineConfig
from replicator.connect import connect_source
from replicator.errors import SchemaError
from replicator.lsn import Lsn
from replicator.mapping import TablePlan
from replicator.protocol.messages import Begin
from replicator.snapshot import CopyWorker, snapshot_clock
from replicator.stats import TableProgress
from replicator.stream import ReplicationConnection

# changes of a resyncing table kept in memory before the applier waits for the copy
HOLD_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class TableSync:
    """A table being resynced: where its copy stands and what waits for it."""

    plan: TablePlan
    lsn: Lsn | None = None  # the copy's consistent point, once known
    held: list[tuple[Begin, bytes]] = field(default_factory=list)
    held_bytes: int = 0
    copied: bool = False

    def hold(self, begin: Begin, change: bytes) -> None:
        self.held.append((begin, change))
        self.held_bytes += len(change)

    def known_lsn(self, lsn: Lsn) -> None:
        """The consistent point is known: what committed before it is in the copy."""
        self.lsn = lsn
        self.held = [(b, c) for b, c in self.held if b.final_lsn >= lsn]
        self.held_bytes = sum(len(c) for _, c in self.held)

    def hold_or_drop(self, begin: Begin, change: bytes) -> None:
        if self.lsn is None or begin.final_lsn >= self.lsn:
            self.hold(begin, change)


async def check_published(src: AsyncConnection, pipe: PipelineConfig, plan: TablePlan) -> None:
    cur = await src.execute(
        "SELECT 1 FROM pg_catalog.pg_publication_tables"
        " WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        [pipe.publication_name, plan.source.schema, plan.source.name],
    )
    if await cur.fetchone() is None:
        raise SchemaError(
            f"{plan.source} is not in publication {pipe.publication_name!r}: its changes would "
            "never arrive. Run `replicator setup` first"
        )


# One resync copy at a time per pipeline: its worker writes under the pipeline's one
# `__sync` origin (the reverse pipeline knows it as ours), and an origin admits one session.
_COPY_LOCKS: dict[str, asyncio.Lock] = {}


async def copy_table(
    config: Config, pipe: PipelineConfig, sync: TableSync, progress: TableProgress
) -> None:
    """Steps 2 and the first half of 3: copy under a fresh snapshot, tell ``sync`` its LSN.
    Several tables marked at once (a key rotation) are copied one after the other."""
    async with _COPY_LOCKS.setdefault(pipe.name, asyncio.Lock()):
        await _copy_table(config, pipe, sync, progress)


async def _copy_table(
    config: Config, pipe: PipelineConfig, sync: TableSync, progress: TableProgress
) -> None:
    src_dsn = config.databases[pipe.from_].dsn.secret_value
    dst_dsn = config.databases[pipe.to].dsn.secret_value
    log = structlog.get_logger("replicator").bind(pipeline=pipe.name, table=str(sync.plan.source))
    async with await connect_source(src_dsn, f"replicator:{pipe.name}:resync") as src:
        await check_published(src, pipe, sync.plan)
        cur = await src.execute(
            "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = %s", [sync.plan.relation_id]
        )
        partitioned = bool((await cur.fetchone() or [False])[0])
        clock = await snapshot_clock(src)
    repl = await ReplicationConnection.connect(
        src_dsn, application_name=f"replicator:{pipe.name}:resync"
    )
    try:
        lsn, snapshot = await repl.create_slot(
            # one per table: several tables of a pipeline may resync at once (a key rotation)
            f"{pipe.slot_name}_resync_{os.getpid()}_{sync.plan.relation_id}",
            temporary=True,
            snapshot="export",
        )
        sync.known_lsn(lsn)  # no await in between: the applier sees LSN and filter together
        log.info("resync_started", snapshot_lsn=str(lsn))
        worker = await CopyWorker.open(
            src_dsn,
            dst_dsn,
            origin=f"{pipe.origin_name}__sync",
            name=f"replicator:{pipe.name}:resync",
            pipeline=pipe.name,
        )
        try:

            def on_rows(n: int, b: int) -> None:
                progress.rows += n
                progress.bytes += b

            rows, nbytes = await worker.copy_range(
                sync.plan,
                control.CopyRange(sync.plan.source, 0, None, None),
                snapshot=snapshot,
                snapshot_lsn=lsn,
                pipeline=pipe.name,
                merge=False,
                truncate_first=True,
                partitioned=partitioned,
                on_rows=on_rows,
                record=False,
                snapshot_time=clock,
            )
        finally:
            await worker.close()
        progress.ranges_done = progress.ranges_total = 1
        log.info("resync_copied", rows=rows, bytes=nbytes)
    finally:
        await repl.close()
    sync.copied = True
