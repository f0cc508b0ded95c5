"""Initial copy and resync: table ranges copied under a source snapshot.

Each range is one ``COPY (SELECT ...) TO STDOUT`` on the source inside a
``REPEATABLE READ`` transaction that imports the snapshot, streamed into the
target in one target transaction that also marks the range done: a crash mid-copy
resumes with exactly the ranges still missing. Workers run ranges in parallel.

Values pass through the table plan: the source SELECT lists the plan's columns in
target order (renames and exclusions happen there), and masked columns go through
the plan's compiled mask functions, the same ones the stream uses. Rows of a table
without masks are passed through as COPY text, untouched.

Rows are read many at a time straight from libpq and written while the next chunk
is read. Memory stays bounded: rows move in chunks of ~1 MB, a few chunks in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

import psycopg
import structlog
from psycopg import AsyncConnection, pq, sql

from replicator import control, sqlgen
from replicator.apply import ApplyCounts, TargetSession
from replicator.batching import TableBatch, TxnRef
from replicator.classify import Directive, classify
from replicator.config import QualifiedName
from replicator.connect import connect_source
from replicator.errors import SchemaError
from replicator.lsn import Lsn
from replicator.mapping import TablePlan
from replicator.protocol.messages import Begin, Datum, datetime_to_pg_timestamp
from replicator.query import fetch_one
from replicator.sqlgen import copy_value
from replicator.stats import TableProgress
from replicator.stream import wait_fd

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


async def plan_table_ranges(
    src: AsyncConnection, plan: TablePlan, rows_per_range: int
) -> list[control.CopyRange]:
    """Block ranges (ctid) for big keyed tables; one range otherwise.

    The bounds are block numbers: they carry no value of the table, so nothing stored
    in ``replicator.copy_ranges`` on the target can reveal what a mask hides (key
    bounds of a hashed key would be raw source values). PostgreSQL 14+ reads a range as
    a TID range scan. Under one snapshot the ranges partition the table exactly; a row
    can move to another block between the snapshots of a resumed copy, which
    :mod:`replicator.sync` makes up for (catch-up over the ranges done before). A
    partitioned table, or one without a unique key on the target (re-copied whole on
    resume), is one range."""
    cur = await src.execute(
        "SELECT c.relkind, c.reltuples,"
        " pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::int"
        " FROM pg_catalog.pg_class c WHERE c.oid = %s",
        [plan.relation_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise SchemaError(f"source table {plan.source} does not exist")
    relkind, reltuples, blocks = row
    single = [control.CopyRange(plan.source, 0, None, None)]
    if relkind != "r" or not plan.conflict_index or not plan.key:
        return single
    if reltuples < 0:  # never analyzed: estimate from a 1% sample
        cur = await src.execute(
            sql.SQL("SELECT count(*) * 100 FROM ONLY {} TABLESAMPLE SYSTEM (1)").format(
                sqlgen.table_ident(plan.source)
            )
        )
        reltuples = (await fetch_one(cur))[0]
    return block_ranges(plan.source, reltuples, blocks, rows_per_range)


def block_ranges(
    table: QualifiedName, rows: float, blocks: int, rows_per_range: int
) -> list[control.CopyRange]:
    """About ``rows_per_range`` rows a range (at most 1000 ranges), cut at evenly spaced
    blocks; the first range starts at block 0 and the last is open, so rows in blocks
    added after planning are copied too."""
    n = min(1000, blocks, int(rows // rows_per_range) + 1) if rows > rows_per_range else 1
    cuts = sorted({blocks * i // n for i in range(1, n)} - {0})
    edges: list[int | None] = [None, *cuts, None]
    return [
        control.CopyRange(table, i, None, None, lower_block=edges[i], upper_block=edges[i + 1])
        for i in range(len(edges) - 1)
    ]


def _type_of(plan: TablePlan, pos: int) -> sql.Identifier:
    return sql.Identifier(*plan.stage_types[pos])


def _tid(block: int) -> sql.Composed:
    return sql.SQL("CAST({} AS tid)").format(sql.Literal(f"({block},0)"))


def _select(plan: TablePlan, rng: control.CopyRange, partitioned: bool) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in plan.source_columns)
    conds = []
    if rng.lower_block is not None:
        conds.append(sql.SQL("ctid >= {}").format(_tid(rng.lower_block)))
    if rng.upper_block is not None:
        conds.append(sql.SQL("ctid < {}").format(_tid(rng.upper_block)))
    if rng.newer_than is not None:
        # row versions the earlier snapshot may not have seen: xmin not before its xmin.
        # age() compares 32-bit xids modulo wraparound; what it gets wrong near a frozen
        # or wrapped xmin errs on the side of copying a row again (the copy merges)
        conds.append(
            sql.SQL("pg_catalog.age(xmin) <= pg_catalog.age(CAST({} AS xid))").format(
                sql.Literal(str(rng.newer_than % 2**32))
            )
        )
    if plan.key and (rng.lower_key is not None or rng.upper_key is not None):
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


class _CopyOut:
    """``COPY ... TO STDOUT`` read straight from libpq, every row already received per
    wakeup.

    psycopg's copy iterator hands over one row per await: on a range of millions of
    rows the event loop costs more than the copy. Rows are joined into chunks of about
    ``_CHUNK_BYTES``. The connection must be idle (inside its transaction) and is left
    idle again: at the end, or by :meth:`abort` when the reader gives up early."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._loop = asyncio.get_running_loop()
        self._active = False

    async def start(self, query: sql.Composable) -> None:
        pgconn = self._pgconn
        pgconn.send_query(query.as_bytes(self._conn))
        while pgconn.flush():
            await wait_fd(self._loop, pgconn.socket, write=True)
        res = await self._result()
        if res is not None and res.status == pq.ExecStatus.COPY_OUT:
            self._active = True
            return
        await self._finish(res)
        raise psycopg.OperationalError(f"COPY TO STDOUT: unexpected result {res}")

    async def read(self) -> tuple[bytes, int] | None:
        """The next chunk of whole rows and how many rows it holds; None at the end."""
        pgconn = self._pgconn
        parts: list[memoryview | bytes] = []
        size = 0
        while self._active:
            n, data = pgconn.get_copy_data(1)
            if n > 0:
                parts.append(data)
                size += n
                if size >= _CHUNK_BYTES:
                    break
            elif n == 0:
                await wait_fd(self._loop, pgconn.socket, write=False)
                pgconn.consume_input()
            elif n == -1:
                self._active = False
                await self._finish(await self._result())
            else:
                self._active = False
                raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
        return (b"".join(parts), len(parts)) if parts else None

    async def abort(self) -> None:
        """Stop a copy still running: cancel it, drain what is in flight, so the
        connection can take its ROLLBACK. Closes it if that does not work out."""
        if not self._active:
            return
        self._active = False
        pgconn = self._pgconn
        try:
            async with asyncio.timeout(10):
                await self._conn.cancel_safe()
                while (n := pgconn.get_copy_data(1)[0]) != -1:
                    if n == 0:
                        await wait_fd(self._loop, pgconn.socket, write=False)
                        pgconn.consume_input()
                    elif n < -1:
                        raise psycopg.OperationalError("COPY TO STDOUT: connection lost")
                with contextlib.suppress(psycopg.Error):
                    await self._finish(await self._result())
        except (TimeoutError, psycopg.Error, OSError):
            await self._conn.close()

    async def _result(self) -> pq.abc.PGresult | None:
        pgconn = self._pgconn
        while pgconn.is_busy():
            await wait_fd(self._loop, pgconn.socket, write=False)
            pgconn.consume_input()
        return pgconn.get_result()

    async def _finish(self, res: pq.abc.PGresult | None) -> None:
        """Collect the command's remaining results; raise the first error among them."""
        error: psycopg.Error | None = None
        while res is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = psycopg.errors.error_from_result(res)
            res = await self._result()
        if error is not None:
            raise error


async def snapshot_clock(src: AsyncConnection) -> int:
    """The source's clock, read just before a snapshot is taken (pg microseconds).

    Copied rows commit with it as their commit timestamp (origin xact setup), not the
    copy's own commit time: they hold the source as of the snapshot, so under
    ``target_wins`` every change the stream brings from after the snapshot is newer
    than them and wins, however long the copy took."""
    cur = await src.execute("SELECT pg_catalog.clock_timestamp()")
    row = await cur.fetchone()
    assert row is not None
    return datetime_to_pg_timestamp(row[0])


class CopyWorker:
    """One source and one target connection; copies ranges one after another."""

    def __init__(self, src: AsyncConnection, target: TargetSession) -> None:
        self.src = src
        self.target = target

    @classmethod
    async def open(
        cls, src_dsn: str, target_dsn: str, *, origin: str, name: str, pipeline: str
    ) -> CopyWorker:
        src = await connect_source(src_dsn, name)
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
        snapshot_time: int | None = None,
    ) -> tuple[int, int]:
        """Copy one range in one target transaction. If the target rejects a row, the
        range is copied again through the apply's own path, where rejected rows go to
        the dead letters and the rest lands."""
        counted = [0, 0]

        def track(n: int, b: int) -> None:
            counted[0] += n
            counted[1] += b
            on_rows(n, b)

        async def attempt(merge: bool, progress: Callable[[int, int], None]) -> tuple[int, int]:
            return await self._attempt(
                plan,
                rng,
                merge=merge,
                on_rows=progress,
                record=record,
                snapshot=snapshot,
                snapshot_lsn=snapshot_lsn,
                pipeline=pipeline,
                truncate_first=truncate_first,
                partitioned=partitioned,
                snapshot_time=snapshot_time,
            )

        try:
            return await attempt(merge, track)
        except psycopg.Error as exc:
            if merge or classify(exc) is not Directive.DEAD_LETTER:
                raise
        on_rows(-counted[0], -counted[1])  # that attempt rolled back
        return await attempt(True, on_rows)

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
        snapshot_time: int | None = None,
    ) -> tuple[int, int]:
        src, target = self.src, self.target
        when = datetime_to_pg_timestamp(dt.datetime.now(dt.UTC))
        if snapshot_time is not None:
            when = snapshot_time  # see snapshot_clock
        await src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            if snapshot:
                await src.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                )
            # the snapshot's xmin: a later resume catches up on what it could not see
            cur = await src.execute(
                "SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text"
            )
            xmin = int((await fetch_one(cur))[0])
            await target.begin()
            if truncate_first:
                await target.truncate([plan.target.name], restart_identity=False)
            if merge:
                rows, nbytes = await self._merge(
                    plan, rng, partitioned, on_rows, Begin(snapshot_lsn, when, 0)
                )
            else:
                rows, nbytes = await self._copy(plan, rng, partitioned, on_rows)
            if record:  # the initial copy's ranges; a resync is one transaction anyway
                await control.mark_range_done(
                    target.conn,
                    pipeline,
                    rng,
                    rows=rows,
                    nbytes=nbytes,
                    lsn=snapshot_lsn,
                    xmin=xmin,
                )
            # the rows commit as of the snapshot, with its position and its time
            await target.commit(snapshot_lsn, when)
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
        reader = _CopyOut(self.src)
        # the reader runs ahead of the writer by a few chunks: the source keeps sending
        # while the target takes the previous chunk
        queue: asyncio.Queue[tuple[bytes, int] | Exception | None] = asyncio.Queue(4)

        async def produce() -> None:
            try:
                while (item := await reader.read()) is not None:
                    await queue.put(item)
            except Exception as exc:  # noqa: BLE001 - handed over: the writer raises it
                await queue.put(exc)
            else:
                await queue.put(None)

        await reader.start(_select(plan, rng, partitioned))
        producer = asyncio.create_task(produce())
        try:
            async with (
                self.target.conn.cursor() as tcur,
                tcur.copy(sqlgen.copy_direct(plan)) as inp,
            ):
                while (item := await queue.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    chunk, n = item
                    await inp.write(mask_copy_lines(plan, chunk) if masked else chunk)
                    rows += n
                    nbytes += len(chunk)
                    on_rows(n, len(chunk))
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
            await reader.abort()
        return rows, nbytes

    async def _merge(
        self,
        plan: TablePlan,
        rng: control.CopyRange,
        partitioned: bool,
        on_rows: Callable[[int, int], None],
        snapshot: Begin,
    ) -> tuple[int, int]:
        """Merge into existing rows: the staged upsert of the stream's insert path (and
        its dead letters, which name the snapshot's position as their source LSN)."""
        rows = nbytes = 0
        tb = TableBatch(plan, ref=TxnRef(snapshot))
        reader = _CopyOut(self.src)
        await reader.start(_select(plan, rng, partitioned))
        try:
            while (item := await reader.read()) is not None:
                chunk, _ = item
                nbytes += len(chunk)
                for line in chunk[:-1].split(b"\n"):
                    fields: list[Datum] = [
                        None if f == b"\\N" else unescape_copy_value(f) for f in line.split(b"\t")
                    ]
                    tb.insert(plan.mask_row(fields))
                    rows += 1
                if tb.changes >= 20_000:
                    on_rows(tb.changes, 0)
                    await self._merge_flush(tb)
            if tb:
                on_rows(tb.changes, 0)
                await self._merge_flush(tb)
        finally:
            await reader.abort()
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
    snapshot_time: int | None = None,
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
                            snapshot_time=snapshot_time,
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
