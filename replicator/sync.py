"""From nothing to streaming: the initial copy, and its resumption after a crash.

The first ``run`` of a pipeline (not ``setup``) creates the slot, as PostgreSQL's
own subscriptions do in their worker: ``CREATE_REPLICATION_SLOT ... (SNAPSHOT
'export')`` on the replication connection, which then stays idle while copy
workers import the snapshot. Streaming starts on that same connection at the
slot's consistent point, so no row is missed or doubled between copy and stream.

A crash mid-copy leaves the slot at its consistent point and some ranges done.
The next start copies only the missing ranges, under the snapshot of a temporary
slot, then streams from the first consistent point again. Replaying those
changes over rows copied later is harmless where rows are matched by a unique
key (each change is an upsert or a delete by key); a table without such a key is
one range, re-copied whole, and its changes apply only from that later snapshot
(``skip_until``).

A pipeline that has streamed once never gets a new slot here: a missing or lost
slot stops it, and only ``replicator resync --all`` starts over.

I/O orchestration; the copying itself is :mod:`replicator.snapshot`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Mapping

import structlog
from psycopg import AsyncConnection

from replicator import control
from replicator.apply import TargetSession
from replicator.catalog import truncate_facts
from replicator.config import Config, PipelineConfig, QualifiedName
from replicator.connect import answered_within, connect_source
from replicator.errors import SchemaError, SlotError
from replicator.lsn import INVALID_LSN, Lsn
from replicator.mapping import TablePlan
from replicator.preflight.rules import copy_truncate_findings
from replicator.protocol.messages import datetime_to_pg_timestamp
from replicator.snapshot import (
    CopyWorker,
    TableProgress,
    plan_table_ranges,
    run_copy,
    snapshot_clock,
)
from replicator.stats import PipelineStats
from replicator.stream import ReplicationConnection


async def slot_exists(src: AsyncConnection, slot: str) -> bool:
    cur = await src.execute(
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", [slot]
    )
    return await cur.fetchone() is not None


class Startup:
    def __init__(
        self,
        config: Config,
        pipe: PipelineConfig,
        target: TargetSession,
        plans: Mapping[QualifiedName, TablePlan],
        stats: PipelineStats,
        *,
        key_id: str | None = None,
    ) -> None:
        self.config = config
        self.pipe = pipe
        self.target = target
        self.plans = plans
        self.key_id = key_id
        self.stats = stats
        self.progress = stats.copy
        self.log = structlog.get_logger("replicator").bind(pipeline=pipe.name)
        self.src_dsn = config.databases[pipe.from_].dsn.secret_value
        self.dst_dsn = config.databases[pipe.to].dsn.secret_value

    async def prepare(self) -> tuple[ReplicationConnection, Lsn]:
        """A replication connection ready for START_REPLICATION, and where to start."""
        repl, start = await self._prepare()
        try:
            pipe = self.pipe
            async with answered_within(pipe.target_timeout_s, repr(pipe.to), "target_timeout_s"):
                await self._rotate_key()
        except BaseException:
            await repl.close()
            raise
        return repl, start

    async def _rotate_key(self) -> None:
        """Key rotation: when the masking key is not the one the target's hashed values
        were written with, every table with a `hash` mask is marked for resync, in the
        same transaction that records the new key's id. The pipeline then re-copies each
        under the new key while it streams (changes to such a table are held until its
        copy lands: readers see the old hashes, then all the new ones, never a mix).
        No id recorded yet (a first run, or a target from before ids): record it."""
        hashed = [name for name, plan in self.plans.items() if plan.hashed]
        if not hashed or self.key_id is None:
            return
        conn = self.target.conn
        recorded = await control.read_key_id(conn, self.pipe.name)
        if recorded == self.key_id:
            return
        await self.target.begin()
        try:
            if recorded is not None:
                for name in hashed:
                    await control.write_table(conn, self.pipe.name, name, "resync")
            await control.write_key_id(conn, self.pipe.name, self.key_id)
            await conn.execute("COMMIT")
            self.target.in_transaction = False
        except BaseException:
            await self.target.rollback()
            raise
        if recorded is None:
            self.log.info("hash_key_recorded", key_id=self.key_id)
        else:
            self.log.warning(
                "hash_key_changed",
                key_id=self.key_id,
                previous_key_id=recorded,
                tables_to_rehash=len(hashed),
            )

    async def _prepare(self) -> tuple[ReplicationConnection, Lsn]:
        pipe = self.pipe

        def both() -> contextlib.AbstractAsyncContextManager[None]:
            return answered_within(
                pipe.source_timeout_s + pipe.target_timeout_s,
                f"{pipe.from_!r} or {pipe.to!r} (checking the slot and progress)",
                "source_timeout_s + target_timeout_s",
            )

        async with both():  # the quick checks of a start; a copy takes its own time
            state = await control.read_pipeline(self.target.conn, pipe.name)
            src = await connect_source(self.src_dsn, f"replicator:{pipe.name}:plan")
        async with src:
            if state is None:
                return await self._first_run(src)
            if state.slot != pipe.slot_name:
                raise SlotError(
                    f"pipeline {pipe.name!r} streams from slot {state.slot!r}, the config names "
                    f"{pipe.slot_name!r}; run `replicator resync --all` to switch slots"
                )
            async with both():
                start = await self._resume_point(src, state)
            if state.state == "copying":
                await self._resume_copy(src, start)
        repl = await self._connect()
        return repl, start

    async def _resume_point(self, src: AsyncConnection, state: control.PipelineState) -> Lsn:
        """Where a pipeline that ran before resumes, once its slot and progress check out."""
        pipe = self.pipe
        if not await slot_exists(src, pipe.slot_name):
            raise SlotError(
                f"replication slot {pipe.slot_name!r} on {pipe.from_!r} is missing: it is "
                "never recreated silently (changes since it went are lost). "
                "Run `replicator resync --all` for a new slot and a full copy"
            )
        progress = await self.target.progress()
        if state.state == "copying":
            assert state.consistent_lsn is not None
            await self._refuse_progress_ahead(src, max(progress, state.consistent_lsn))
            return state.consistent_lsn
        await self._refuse_progress_ahead(src, progress)
        return progress

    async def _refuse_progress_ahead(self, src: AsyncConnection, start: Lsn) -> None:
        """Progress past the source's WAL means the source went back in time (a restore, a
        rebuilt server): resuming there would skip, and confirm away, every new change."""
        current = await control.source_position(src)
        if start > current:
            pipe = self.pipe
            raise SlotError(
                f"pipeline {pipe.name!r}: origin {pipe.origin_name!r} on {pipe.to!r} has "
                f"progress {start}, ahead of the source {pipe.from_!r}'s current WAL position "
                f"{current}: the source went back (restored, rebuilt or pointed elsewhere) and "
                "resuming would skip every new change. Stop the daemon and run "
                "`replicator resync --all --pipeline "
                f"{pipe.name}` for a new slot, a full copy and reset progress"
            )

    async def _reset_progress(self) -> None:
        """A pipeline starting afresh starts from no progress: committing under an origin
        only moves it forward, so progress left from an earlier life of the pipeline (or
        of its source) would win over the new slot's positions at the next start."""
        progress = await self.target.progress()
        if progress == INVALID_LSN:
            return  # the usual first run: nothing to reset
        conn, origin = self.target.conn, self.target.origin
        self.log.warning("origin_progress_reset", origin=origin, progress=str(progress))
        await conn.execute("SELECT pg_catalog.pg_replication_origin_session_reset()")
        try:
            await control.reset_origin(conn, origin)
        finally:
            await conn.execute(
                "SELECT pg_catalog.pg_replication_origin_session_setup(%s)", [origin]
            )

    async def _connect(self) -> ReplicationConnection:
        return await ReplicationConnection.connect(
            self.src_dsn, application_name=f"replicator:{self.pipe.name}"
        )

    async def _first_run(self, src: AsyncConnection) -> tuple[ReplicationConnection, Lsn]:
        pipe = self.pipe
        if pipe.snapshot == "truncate":
            await self._check_truncatable()
        await self._reset_progress()
        repl = await self._connect()
        try:
            if await slot_exists(src, pipe.slot_name):
                # never streamed (no state here): nothing was consumed from it, so a fresh
                # slot with a snapshot loses nothing
                self.log.warning("slot_recreated_before_first_use", slot=pipe.slot_name)
                await src.execute(
                    "SELECT pg_catalog.pg_drop_replication_slot(%s)", [pipe.slot_name]
                )
            if pipe.snapshot == "skip":
                lsn, _ = await repl.create_slot(pipe.slot_name, snapshot="nothing")
                await self._finish(lsn, {})
                self.log.info("initial_copy_skipped", consistent_lsn=str(lsn))
                return repl, lsn
            clock = await snapshot_clock(src)
            lsn, snapshot = await repl.create_slot(pipe.slot_name, snapshot="export")
            self.log.info("slot_created", slot=pipe.slot_name, consistent_lsn=str(lsn))
            ranges = await self._plan(src, lsn)
            await self._copy(ranges, snapshot, lsn, clock, merge=pipe.snapshot == "merge")
            await self._finish(lsn, {})
            return repl, lsn
        except BaseException:
            await repl.close()
            raise

    async def _check_truncatable(self) -> None:
        """Refuse, as `check` does, a first copy whose TRUNCATE PostgreSQL would refuse."""
        targets = [plan.target.name for plan in self.plans.values()]
        facts = await truncate_facts(self.target.conn, targets)
        problems = copy_truncate_findings(
            self.pipe.to, self.pipe.name, targets, facts, copying=True
        )
        if problems:
            raise SchemaError("\n".join(f"{f.obj}: {f.message}. Fix: {f.fix}" for f in problems))

    async def _plan(self, src: AsyncConnection, lsn: Lsn) -> list[control.CopyRange]:
        """Ranges for every table; truncated targets; all committed together."""
        target = self.target
        ranges: list[control.CopyRange] = []
        await target.begin()
        try:
            for name, plan in self.plans.items():
                table_ranges = await plan_table_ranges(src, plan, self.pipe.copy_.range_rows)
                ranges += table_ranges
                await control.write_table(target.conn, self.pipe.name, name, "copying")
            if self.pipe.snapshot == "truncate":
                # together: foreign keys among the pipeline's tables do not stop one TRUNCATE
                await target.truncate(
                    [plan.target.name for plan in self.plans.values()], restart_identity=False
                )
            await control.plan_ranges(target.conn, self.pipe.name, ranges)
            await control.write_pipeline(
                target.conn, self.pipe.name, self.pipe.slot_name, "copying", lsn
            )
            await target.conn.execute("COMMIT")
            target.in_transaction = False
        except BaseException:
            await target.rollback()
            raise
        return ranges

    async def _copy(
        self,
        ranges: list[control.CopyRange],
        snapshot: str | None,
        lsn: Lsn,
        clock: int,
        *,
        merge: bool,
    ) -> None:
        pipe = self.pipe
        items = []
        for r in ranges:
            plan = self.plans[r.table]
            prog = self.progress.setdefault(r.table, TableProgress(r.table))
            prog.ranges_total += 1
            items.append((plan, r, await self._partitioned(plan)))
        started = dt.datetime.now(dt.UTC)
        self.log.info(
            "initial_copy_started",
            tables=len(self.plans),
            ranges=len(items),
            workers=pipe.copy_.workers,
        )

        async def open_worker(i: int) -> CopyWorker:
            return await CopyWorker.open(
                self.src_dsn,
                self.dst_dsn,
                origin=f"{pipe.origin_name}__c{i}",
                name=f"replicator:{pipe.name}:copy{i}",
                pipeline=pipe.name,
            )

        await run_copy(
            items,
            workers=pipe.copy_.workers,
            open_worker=open_worker,
            snapshot=snapshot,
            snapshot_lsn=lsn,
            pipeline=pipe.name,
            merge=merge,
            progress=self.progress,
            log=self.log,
            snapshot_time=clock,
        )
        elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
        rows = sum(p.rows for p in self.progress.values())
        self.log.info("initial_copy_done", rows=rows, seconds=round(elapsed, 1))

    async def _partitioned(self, plan: TablePlan) -> bool:
        async with await connect_source(self.src_dsn, f"replicator:{self.pipe.name}") as src:
            cur = await src.execute(
                "SELECT relkind FROM pg_catalog.pg_class WHERE oid = %s", [plan.relation_id]
            )
            row = await cur.fetchone()
        return bool(row and row[0] == "p")

    async def _resume_copy(self, src: AsyncConnection, consistent: Lsn) -> None:
        ranges = await control.read_ranges(self.target.conn, self.pipe.name)
        remaining = [r for r in ranges if not r.done]
        missing = [r for r in remaining if r.table not in self.plans]
        if missing:
            raise SlotError(f"initial copy of {missing[0].table} cannot resume: not configured")
        temp = await self._connect()
        try:
            clock = await snapshot_clock(src)
            lsn, snapshot = await temp.create_slot(
                f"{self.pipe.slot_name}_resume_{os.getpid()}", temporary=True, snapshot="export"
            )
            self.log.info("initial_copy_resumed", ranges=len(remaining), snapshot_lsn=str(lsn))
            # rows already there (copied before the crash, or moved in since) merge by key
            await self._copy(remaining + catch_up(ranges), snapshot, lsn, clock, merge=True)
        finally:
            await temp.close()
        # rows matched by a unique key converge when the stream replays from the first
        # consistent point; the others must not see changes their copy already holds
        skip = {r.table: lsn for r in remaining if not self.plans[r.table].conflict_index}
        await self._finish(consistent, skip)

    async def _finish(self, start: Lsn, skip: Mapping[QualifiedName, Lsn]) -> None:
        """Tables ready, pipeline streaming, origin progress at the stream's start: one
        target transaction, so a crash before it simply resumes the copy."""
        target = self.target
        await target.begin()
        try:
            for name in self.plans:
                await control.write_table(
                    target.conn, self.pipe.name, name, "ready", skip_until=skip.get(name)
                )
            await control.write_pipeline(
                target.conn, self.pipe.name, self.pipe.slot_name, "streaming", start
            )
            await target.commit(start, datetime_to_pg_timestamp(dt.datetime.now(dt.UTC)))
        except BaseException:
            await target.rollback()
            raise


def catch_up(ranges: list[control.CopyRange]) -> list[control.CopyRange]:
    """Catch-up passes over the done block ranges of tables whose copy is unfinished.

    A row that an update moved out of a range still to copy into one copied before the
    crash is in neither copy: its new version sits in a done range, and the stream alone
    cannot restore it when the update left a TOASTed column unchanged. Such a version is
    newer than the done range's snapshot, so re-reading (merge by key) each done range's
    rows whose xmin that snapshot may not have seen fills the hole: every row visible to
    the new snapshot is then in a range copied under it, or was already visible to the
    snapshot its done range was copied under."""
    unfinished = {r.table for r in ranges if not r.done}
    return [
        dataclasses.replace(r, done=False, newer_than=r.snapshot_xmin or 0)
        for r in ranges
        if r.done and r.table in unfinished and (r.lower_block, r.upper_block) != (None, None)
    ]


def skip_positions(tables: Mapping[QualifiedName, control.TableState]) -> dict[QualifiedName, Lsn]:
    return {
        q: t.skip_until for q, t in tables.items() if t.skip_until and t.skip_until != INVALID_LSN
    }
