"""Initial copy and resync: table ranges copied under a source snapshot.

Each range is one ``COPY (SELECT ...) TO STDOUT`` on the source inside a
``REPEATABLE READ`` transaction that imports the snapshot, streamed into the
target in one target transaction that also marks the range done: a crash mid-copy
resumes with exactly the ranges still missing. Workers run ranges in parallel.

Values pass through the table plan: the source SELECT lists the plan's columns in
target order (renames and exclusions happen there), and masked columns go through
the plan's compiled mask functions, the same ones the stream uses. Rows of a table
without masks are passed through as COPY text, untouched.

I/O. Memory stays bounded: rows move in chunks of ~1 MB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

import psycopg
import structlog
from psycopg import AsyncConnection, sql

from replicator import control, sqlgen
from replicator.apply import ApplyCounts, TargetSession
from replicator.batching import TableBatch, TxnRef
from replicator.classify import Directive, classify
from replicator.config import QualifiedName
from replicator.errors import SchemaError
from replicator.lsn import Lsn
from replicator.mapping import TablePlan
from replicator.protocol.messages import Begin, datetime_to_pg_timestamp
from replicator.sqlgen import copy_value
from replicator.stats import TableProgress

_CHUNK_BYTES: Final = 1024 * 1024
_COPY_ESCAPES: Final = {
    b"\\\\": b"\\",
    b"\\t": b"\t",
    b"\\n": b"\n",
    b"\\r": b"\r",
    b"\\b": b"\b",
    b"\\f": b"\f",
    b"\\v": b"\v",
}
_COPY_ESCAPE_RE: Final = re.compile(rb"\\[\\tnrbfv]")


def unescape_copy_value(v: bytes) -> bytes:
    """One field of COPY text output (not ``\\N``) back to the value's text."""
    if b"\\" not in v:
        return v
    return _COPY_ESCAPE_RE.sub(lambda m: _COPY_ESCAPES[m.group()], v)


def mask_copy_lines(plan: TablePlan, data: bytes) -> bytes:
    """Apply the plan's masks to COPY text rows (columns already in target order)."""
    masks = plan.masks
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        fields = line.split(b"\t")
        for pos, fn in masks:
            v = fields[pos]
            if v != b"\\N":
                fields[pos] = copy_value(fn(unescape_copy_value(v)))
        out.append(b"\t".join(fields))
    out.append(b"")
    return b"\n".join(out)


# rows read to place the range bounds of a big table
_SAMPLE_ROWS: Final = 100_000


async def plan_table_ranges(
    src: AsyncConnection, plan: TablePlan, rows_per_range: int
) -> list[control.CopyRange]:
    """Ranges on the first key column for keyed tables; one range otherwise.

    Key ranges, not block ranges: an update moves a row to another block, but not to
    another key range, so ranges copied under different snapshots (a resumed copy)
    never hold the same row twice or lose one that moved. Bounds are quantiles of a
    sample. A partitioned table, or one without a unique key on the target (re-copied
    whole on resume), is one range."""
    cur = await src.execute(
        "SELECT c.relkind, c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = %s",
        [plan.relation_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise SchemaError(f"source table {plan.source} does not exist")
    relkind, reltuples = row
    single = [control.CopyRange(plan.source, 0, None, None)]
    if relkind != "r" or not plan.conflict_index or not plan.key:
        return single
    table = sqlgen.table_ident(plan.source)
    if reltuples < 0:  # never analyzed: estimate from a 1% sample
        cur = await src.execute(
            sql.SQL("SELECT count(*) * 100 FROM ONLY {} TABLESAMPLE SYSTEM (1)").format(table)
        )
        reltuples = (await cur.fetchone())[0]  # type: ignore[index]
    if reltuples <= rows_per_range:
        return single
    n = min(1000, int(reltuples // rows_per_range) + 1)
    pct = min(100.0, 100.0 * _SAMPLE_ROWS / reltuples)
    key = sql.Identifier(plan.source_columns[plan.key[0]])
    cur = await src.execute(
        sql.SQL(
            "SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {k})::text[]"
            " FROM ONLY {t} TABLESAMPLE SYSTEM (%s)"
        ).format(k=key, t=table),
        [[i / n for i in range(1, n)], pct],
    )
    bounds = list({b for b in ((await cur.fetchone())[0] or []) if b is not None})  # type: ignore[index]
    if not bounds:
        return single
    # distinct bounds, ordered by the server in the key's own order (not text order)
    cur = await src.execute(
        sql.SQL("SELECT array_agg(b ORDER BY CAST(b AS {ty})) FROM unnest(%s::text[]) AS b").format(
            ty=_type_of(plan, plan.key[0])
        ),
        [bounds],
    )
    ordered = (await cur.fetchone())[0]  # type: ignore[index]
    edges = [None, *ordered, None]
    return [
        control.CopyRange(plan.source, i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)
    ]


def _type_of(plan: TablePlan, pos: int) -> sql.Identifier:
    return sql.Identifier(*plan.stage_types[pos])


def _select(plan: TablePlan, rng: control.CopyRange, partitioned: bool) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in plan.source_columns)
    conds = []
    if plan.key:
        key = sql.Identifier(plan.source_columns[plan.key[0]])
        ty = _type_of(plan, plan.key[0])
        if rng.lower_key is not None:
            conds.append(
                sql.SQL("{} >= CAST({} AS {})").format(key, sql.Literal(rng.lower_key), ty)
            )
        if rng.upper_key is not None:
            conds.append(sql.SQL("{} < CAST({} AS {})").format(key, sql.Literal(rng.upper_key), ty))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    return sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT").format(
        cols,
        sql.SQL("") if partitioned else sql.SQL("ONLY "),
        sqlgen.table_ident(plan.source),
        where,
    )


class CopyWorker:
    """One source and one target connection; copies ranges one after another."""

    def __init__(self, src: AsyncConnection, target: TargetSession) -> None:
        self.src = src
        self.target = target

    @classmethod
    async def open(
        cls, src_dsn: str, target_dsn: str, *, origin: str, name: str, pipeline: str
    ) -> CopyWorker:
        src = await AsyncConnection.connect(src_dsn, autocommit=True, application_name=name)
        try:
            async with await AsyncConnection.connect(target_dsn, autocommit=True) as admin:
                # the worker's writes are tagged with its own origin (a session can hold
                # only one), so a reverse pipeline recognises them as ours
                await admin.execute(
                    "SELECT pg_catalog.pg_replication_origin_create(%s)"
                    " WHERE pg_catalog.pg_replication_origin_oid(%s) IS NULL",
                    [origin, origin],
                )
            target = await TargetSession.open(
                target_dsn, origin=origin, application_name=name, pipeline=pipeline
            )
        except BaseException:
            await src.close()
            raise
        return cls(src, target)

    async def close(self) -> None:
        await self.src.close()
        await self.target.close()

    async def copy_range(
        self,
        plan: TablePlan,
        rng: control.CopyRange,
        *,
        snapshot: str | None,
        snapshot_lsn: Lsn,
        pipeline: str,
        merge: bool,
        truncate_first: bool,
        partitioned: bool,
        on_rows: Callable[[int, int], None],
        record: bool = True,
    ) -> tuple[int, int]:
        """Copy one range in one target transaction. If the target rejects a row, the
        range is copied again through the apply's own path, where rejected rows go to
        the dead letters and the rest lands."""
        counted = [0, 0]

        def track(n: int, b: int) -> None:
            counted[0] += n
            counted[1] += b
            on_rows(n, b)

        args = {
            "record": record,
            "snapshot": snapshot,
            "snapshot_lsn": snapshot_lsn,
            "pipeline": pipeline,
            "truncate_first": truncate_first,
            "partitioned": partitioned,
        }
        try:
            return await self._attempt(plan, rng, merge=merge, on_rows=track, **args)
        except psycopg.Error as exc:
            if merge or classify(exc) is not Directive.DEAD_LETTER:
                raise
        on_rows(-counted[0], -counted[1])  # that attempt rolled back
        return await self._attempt(plan, rng, merge=True, on_rows=on_rows, **args)

    async def _attempt(
        self,
        plan: TablePlan,
        rng: control.CopyRange,
        *,
        snapshot: str | None,
        snapshot_lsn: Lsn,
        pipeline: str,
        merge: bool,
        truncate_first: bool,
        partitioned: bool,
        on_rows: Callable[[int, int], None],
        record: bool = True,
    ) -> tuple[int, int]:
        src, target = self.src, self.target
        await src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            if snapshot:
                await src.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                )
            await target.begin()
            if truncate_first:
                await target.conn.execute(
                    sql.SQL("TRUNCATE ONLY {}").format(sqlgen.table_ident(plan.target.name))
                )
            if merge:
                rows, nbytes = await self._merge(plan, rng, partitioned, on_rows, snapshot_lsn)
            else:
                rows, nbytes = await self._copy(plan, rng, partitioned, on_rows)
            if record:  # the initial copy's ranges; a resync is one transaction anyway
                await control.mark_range_done(
                    target.conn, pipeline, rng, rows=rows, nbytes=nbytes, lsn=snapshot_lsn
                )
            await target.conn.execute("COMMIT")
            target.in_transaction = False
        except BaseException:
            await target.rollback()
            raise
        finally:
            await src.execute("ROLLBACK")
        return rows, nbytes

    async def _copy(
        self,
        plan: TablePlan,
        rng: control.CopyRange,
        partitioned: bool,
        on_rows: Callable[[int, int], None],
    ) -> tuple[int, int]:
        rows = nbytes = 0
        masked = bool(plan.masks)
        async with (
            self.src.cursor() as scur,
            scur.copy(_select(plan, rng, partitioned)) as out,
            self.target.conn.cursor() as tcur,
            tcur.copy(sqlgen.copy_direct(plan)) as inp,
        ):
            buf: list[bytes] = []
            size = 0
            async for data in out:
                buf.append(bytes(data))
                size += len(data)
                if size >= _CHUNK_BYTES:
                    chunk = b"".join(buf)
                    n = len(buf)
                    await inp.write(mask_copy_lines(plan, chunk) if masked else chunk)
                    rows += n
                    nbytes += size
                    on_rows(n, size)
                    buf, size = [], 0
            if buf:
                chunk = b"".join(buf)
                await inp.write(mask_copy_lines(plan, chunk) if masked else chunk)
                rows += len(buf)
                nbytes += size
                on_rows(len(buf), size)
        return rows, nbytes

    async def _merge(
        self,
        plan: TablePlan,
        rng: control.CopyRange,
        partitioned: bool,
        on_rows: Callable[[int, int], None],
        snapshot_lsn: Lsn,
    ) -> tuple[int, int]:
        """Merge into existing rows: the staged upsert of the stream's insert path (and
        its dead letters, which name the snapshot's position as their source LSN)."""
        rows = nbytes = 0
        tb = TableBatch(
            plan,
            ref=TxnRef(Begin(snapshot_lsn, datetime_to_pg_timestamp(dt.datetime.now(dt.UTC)), 0)),
        )
        async with self.src.cursor() as scur, scur.copy(_select(plan, rng, partitioned)) as out:
            async for data in out:
                line = bytes(data).rstrip(b"\n")
                fields: list[bytes | None] = [
                    None if f == b"\\N" else unescape_copy_value(f) for f in line.split(b"\t")
                ]
                tb.insert(plan.mask_row(fields))
                rows += 1
                nbytes += len(data)
                if tb.changes >= 20_000:
                    on_rows(tb.changes, 0)
                    await self._merge_flush(tb)
            if tb:
                on_rows(tb.changes, 0)
                await self._merge_flush(tb)
        return rows, nbytes

    async def _merge_flush(self, tb: TableBatch) -> None:
        # inserts only: a straight COPY, or on a key the target already holds, the staged
        # INSERT ... ON CONFLICT of the stream (the copy never deletes target rows)
        await self.target.flush_table(tb.take(), ApplyCounts())


async def run_copy(
    ranges: list[tuple[TablePlan, control.CopyRange, bool]],
    *,
    workers: int,
    open_worker: Callable[[int], Awaitable[CopyWorker]],
    snapshot: str | None,
    snapshot_lsn: Lsn,
    pipeline: str,
    merge: bool,
    progress: dict[QualifiedName, TableProgress],
    log: structlog.stdlib.BoundLogger,
) -> None:
    """Copy ``ranges`` (plan, range, partitioned) with up to ``workers`` in parallel.

    A failed range is retried alone (three tries, then the copy fails and resumes with
    the ranges still missing on the next start)."""
    queue: asyncio.Queue[tuple[TablePlan, control.CopyRange, bool]] = asyncio.Queue()
    for item in ranges:
        queue.put_nowait(item)

    async def work(i: int) -> None:
        worker = await open_worker(i)
        try:
            while True:
                try:
                    plan, rng, partitioned = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                prog = progress[plan.source]

                def on_rows(n: int, b: int, prog: TableProgress = prog) -> None:
                    prog.rows += n
                    prog.bytes += b

                for attempt in range(3):
                    before = (prog.rows, prog.bytes)
                    try:
                        await worker.copy_range(
                            plan,
                            rng,
                            snapshot=snapshot,
                            snapshot_lsn=snapshot_lsn,
                            pipeline=pipeline,
                            merge=merge,
                            truncate_first=False,
                            partitioned=partitioned,
                            on_rows=on_rows,
                        )
                        break
                    except psycopg.OperationalError:
                        prog.rows, prog.bytes = before
                        if attempt == 2:
                            raise
                        log.warning("copy_range_retry", table=str(plan.source), range=rng.range_no)
                        await asyncio.sleep(1 + attempt)
                prog.ranges_done += 1
                if prog.ranges_done == prog.ranges_total:
                    prog.finished = time.monotonic()
                log.info(
                    "copy_range_done",
                    table=str(plan.source),
                    range=rng.range_no,
                    rows=prog.rows,
                    bytes=prog.bytes,
                    ranges=f"{prog.ranges_done}/{prog.ranges_total}",
                )
        finally:
            await worker.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            for p in progress.values():
                if p.finished is None and p.ranges_total:
                    eta = p.eta_seconds()
                    log.info(
                        "copy_progress",
                        table=str(p.table),
                        rows=p.rows,
                        bytes=p.bytes,
                        rows_per_s=round(p.rate()),
                        eta_s=None if eta is None else round(eta),
                    )

    reporter = asyncio.create_task(report())
    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(max(1, min(workers, len(ranges)))):
                tg.create_task(work(i))
    finally:
        reporter.cancel()
