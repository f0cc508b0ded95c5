"""One pipeline (source database -> target database), wired from its stages.

    slot --frames--> decoder --messages--> assembler --chunks--> queue --> applier
      ^                                                                      |
      +--------------- feedback: flush = what the target committed <---------+

The reader runs as a socket callback on the event loop and never blocks; it
pauses while the queue holds more than ``batch.queue_bytes`` (backpressure). The
applier folds chunks into one open target transaction and commits at a source
commit when the queue is momentarily empty, or the batch is big or old enough. It
never splits a source transaction across target transactions: a large one is
flushed in pieces into the open transaction and committed at its Commit.

No business rules here: they live in the pure modules this file wires together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from replicator import control
from replicator.apply import ApplyCounts, TargetSession
from replicator.assembler import CHANGE_TAGS, Assembler, NonTransactional, TxnChunk, WorkItem
from replicator.batching import TableBatch, TxnRef
from replicator.catalog import read_source_relation, read_target_table
from replicator.config import Config, PipelineConfig, QualifiedName
from replicator.errors import MaskingError, ProtocolError, SchemaError, SlotError
from replicator.feedback import Feedback
from replicator.lsn import INVALID_LSN, Lsn
from replicator.mapping import TablePlan, build_plan
from replicator.protocol.decoder import PgOutputDecoder, decode_insert
from replicator.protocol.frames import Keepalive, parse_frame
from replicator.protocol.messages import (
    Commit,
    Datum,
    Delete,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
    datetime_to_pg_timestamp,
)
from replicator.stats import PipelineStats, State
from replicator.stream import ReplicationConnection
from replicator.sync import Startup, skip_positions

HEARTBEAT_PREFIX = "replicator.heartbeat"
# An idle pipeline records the keepalive position as progress (so the slot can let WAL
# go) only once it is this far ahead: WAL is recycled by the 16 MB segment anyway, and a
# threshold keeps two-way pipelines from answering each other's progress records forever.
IDLE_RECORD_BYTES = 1024 * 1024
_XLOGDATA_HEADER = 25  # 'w', dataStart, walEnd, sendTime
_U64 = struct.Struct("!Q")
_READ_LIMIT = 2000  # frames per reader callback: keeps the loop fair to the applier
_STATUS_TICK = 0.25  # seconds between feedback checks


def now_pg_us() -> int:
    return datetime_to_pg_timestamp(dt.datetime.now(dt.UTC))


class Pipeline:
    def __init__(
        self,
        config: Config,
        pipe: PipelineConfig,
        *,
        hash_key: bytes | None = None,
        skip_origins: frozenset[str] = frozenset(),
        on_commit: Callable[[Pipeline], Any] | None = None,
    ) -> None:
        self.config = config
        self.pipe = pipe
        self.hash_key = hash_key
        self.skip_origins = skip_origins
        self.stats = PipelineStats()
        self.on_commit = on_commit
        self.log = structlog.get_logger("replicator").bind(pipeline=pipe.name, slot=pipe.slot_name)
        self._stop = asyncio.Event()
        # per connection
        self._source: ReplicationConnection | None = None
        self._target: TargetSession | None = None
        self._feedback = Feedback()
        self._queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self._paused = False
        self._reader_failed: asyncio.Future[None] | None = None
        # applier state
        self._plans: dict[int, TablePlan | None] = {}
        self._relations: dict[int, Relation] = {}
        self._tables: dict[int, TableBatch] = {}
        self._batch_bytes = 0
        self._batch_changes = 0
        self._batch_opened: float | None = None
        self._batch_last: Commit | None = None  # last complete source txn in the open batch
        self._mid_txn = False  # part of a source transaction is in the open batch
        self._unrecorded = INVALID_LSN  # processed but not yet recorded (skipped txns)
        # at most one flush runs on the target while the next changes fold in Python
        self._inflight: asyncio.Task[ApplyCounts] | None = None
        # tables whose copy holds changes committed before an LSN (resumed copies, resyncs)
        self._skip_by_name: dict[QualifiedName, Lsn] = {}
        self._skip: dict[int, Lsn] = {}  # the same, by relation id
        self._txn = TxnRef()  # the source transaction being folded, for dead letters
        self._last_idle_record = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Stream until stopped. Raises on failure; the caller decides about retries."""
        pipe, cfg = self.pipe, self.config
        self.stats.state = State.STARTING
        self._reset_session_state()
        target = await TargetSession.open(
            cfg.databases[pipe.to].dsn.secret_value,
            origin=pipe.origin_name,
            application_name=f"replicator:{pipe.name}:apply",
            pipeline=pipe.name,
        )
        self._target = target
        try:
            await control.ensure_schema(target.conn)
            plans = await self._preflight(target)
            source, start = await Startup(cfg, pipe, target, plans, self.stats).prepare()
            tables = await control.read_tables(target.conn, pipe.name)
            self._skip_by_name = skip_positions(tables)
            # the slot's confirmed point never passes origin progress, so confirming `start`
            # again is safe and gives idle-progress decisions the right baseline
            self._feedback.on_committed(start)
            self._source = source
            try:
                await self._start_stream(source, start)
                self.stats.state = State.STREAMING
                self.log.info("pipeline_streaming", start_lsn=str(start))
                await self._stream(source, target)
                # final feedback: everything committed is confirmed before we go
                self._send_status(source, force=True)
            finally:
                await source.close()
                self._source = None
        finally:
            if self._inflight is not None:
                self._inflight.cancel()
                with contextlib.suppress(BaseException):
                    await self._inflight
                self._inflight = None
            with contextlib.suppress(psycopg.Error, OSError):
                await target.rollback()
            await target.close()
            self._target = None
        self.stats.state = State.STOPPED
        self.log.info("pipeline_stopped", confirmed_lsn=str(self._feedback.confirmed))

    async def _preflight(self, target: TargetSession) -> dict[QualifiedName, TablePlan]:
        """Build every table's plan from the catalogs before streaming: a mask that cannot
        be honoured or a column with nowhere to go stops here, not mid-stream. The plans
        built from Relation messages later go through the same code."""
        pipe, cfg = self.pipe, self.config
        problems: list[str] = []
        plans: dict[QualifiedName, TablePlan] = {}
        masking = False
        async with await psycopg.AsyncConnection.connect(
            cfg.databases[pipe.from_].dsn.secret_value,
            autocommit=True,
            application_name=f"replicator:{pipe.name}:check",
        ) as src:
            for table in pipe.tables:
                try:
                    rel = await read_source_relation(src, table.source)
                    facts = await read_target_table(target.conn, table.target_name)
                    plans[table.source] = build_plan(
                        rel,
                        table,
                        facts,
                        global_masks=cfg.masking.columns,
                        unclassified=cfg.masking.unclassified,
                        hash_key=self.hash_key,
                        tie_source_wins=pipe.tie_source_wins(cfg),
                        commit_timestamps=target.commit_timestamps,
                    )
                except (SchemaError, MaskingError) as exc:
                    problems.append(str(exc))
                    masking |= isinstance(exc, MaskingError)
        if problems:
            cls = MaskingError if masking else SchemaError
            raise cls("\n".join(problems))
        return plans

    def _reset_session_state(self) -> None:
        self._feedback = Feedback()
        self._queue = asyncio.Queue()
        self._paused = False
        self._plans.clear()
        self._relations.clear()
        self._tables.clear()
        self._skip.clear()
        self._reset_batch()
        self._unrecorded = INVALID_LSN

    def _reset_batch(self) -> None:
        self._batch_bytes = 0
        self._batch_changes = 0
        self._batch_opened = None
        self._batch_last = None
        self._mid_txn = False

    async def _start_stream(self, source: ReplicationConnection, start: Lsn) -> None:
        pipe = self.pipe
        options = {
            "proto_version": str(pipe.proto_version),
            "publication_names": pipe.publication_name,
            "messages": "true",
        }
        if self.skip_origins and source.server_version >= 160000:
            # the server drops every change that carries a replication origin
            options["origin"] = "none"
        try:
            await source.start_replication(pipe.slot_name, start, options)
        except psycopg.errors.UndefinedObject as exc:
            raise SlotError(
                f"replication slot {pipe.slot_name!r} does not exist on {pipe.from_!r}: "
                "it is never recreated silently. Run `replicator resync --all` to create a "
                "new slot with a full copy, or `replicator setup` for a new pipeline"
            ) from exc
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            if "invalidated" in str(exc) or "lost" in str(exc):
                raise SlotError(
                    f"replication slot {pipe.slot_name!r} on {pipe.from_!r} was invalidated "
                    "(WAL it needed is gone); run `replicator resync --all`"
                ) from exc
            raise
        self._decoder = PgOutputDecoder(pipe.proto_version)
        # small chunks: the applier yields to the reader between them, so the walsender's
        # socket keeps draining while a big transaction folds
        self._assembler = Assembler(
            skip_origins=self.skip_origins, chunk_bytes=1024 * 1024, chunk_items=4000
        )

    async def _stream(self, source: ReplicationConnection, target: TargetSession) -> None:
        loop = asyncio.get_running_loop()
        self._reader_failed = loop.create_future()
        loop.add_reader(source.fileno, self._on_readable)
        try:
            async with asyncio.TaskGroup() as tg:
                applier = tg.create_task(self._apply_loop(target))
                ticker = tg.create_task(self._status_loop(source))
                watch = tg.create_task(self._watch_reader())
                await applier
                ticker.cancel()
                watch.cancel()
        except BaseExceptionGroup as group:
            # one failure cancels the sibling tasks; report the failure, not the group
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            self._pause_reader()

    async def _watch_reader(self) -> None:
        assert self._reader_failed is not None
        await self._reader_failed

    # -- reader (socket callback) --------------------------------------------------------

    def _pause_reader(self) -> None:
        if self._source is not None and not self._paused:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._source.fileno)
        self._paused = True

    def _resume_reader(self) -> None:
        if self._paused and self._source is not None and not self._stop.is_set():
            self._paused = False
            loop = asyncio.get_running_loop()
            loop.add_reader(self._source.fileno, self._on_readable)
            loop.call_soon(self._on_readable)  # libpq may hold frames the socket won't signal

    def _on_readable(self) -> None:
        if self._paused or self._source is None:
            return
        try:
            self._read_available(self._source)
        except Exception as exc:  # noqa: BLE001 - handed to the pipeline task, not swallowed
            self._pause_reader()
            if self._reader_failed is not None and not self._reader_failed.done():
                self._reader_failed.set_exception(exc)

    def _read_available(self, source: ReplicationConnection) -> None:
        if self._stop.is_set():
            self._pause_reader()
            return
        frames = source.read_frames(_READ_LIMIT)
        decoder, assembler, feedback, queue = (
            self._decoder,
            self._assembler,
            self._feedback,
            self._queue,
        )
        change_tags = CHANGE_TAGS
        last_start = 0
        queued = 0
        for raw in frames:
            if raw[0] == 0x77 and len(raw) > _XLOGDATA_HEADER:  # 'w' XLogData: inlined, hot
                last_start = _U64.unpack_from(raw, 1)[0]
                payload = raw[_XLOGDATA_HEADER:]
                if payload[0] in change_tags:
                    item = assembler.feed_change(payload, last_start)
                else:
                    item = assembler.feed(decoder.decode(payload), Lsn(last_start), len(payload))
                if item is not None:
                    queue.put_nowait(item)
                    queued += _item_bytes(item)
                continue
            frame = parse_frame(raw)
            if isinstance(frame, Keepalive):
                feedback.on_keepalive(frame.wal_end, reply_requested=frame.reply_requested)
                if frame.reply_requested:
                    self._send_status(source, force=True)
            else:
                raise ProtocolError("empty XLogData frame", offset=len(raw), tag="w")
        if last_start:
            feedback.on_data(Lsn(last_start))
        self.stats.received_lsn = feedback.received
        self.stats.queue_bytes += queued
        if self.stats.queue_bytes > self.pipe.batch.queue_bytes:
            self._pause_reader()  # backpressure: resumed by the applier
        elif len(frames) == _READ_LIMIT:
            asyncio.get_running_loop().call_soon(self._on_readable)

    # -- feedback ------------------------------------------------------------------------

    async def _status_loop(self, source: ReplicationConnection) -> None:
        while True:
            await asyncio.sleep(_STATUS_TICK)
            self._send_status(source)

    def _send_status(self, source: ReplicationConnection, *, force: bool = False) -> None:
        status = self._feedback.take(time.monotonic(), force=force)
        if status is None or source.closed:
            return
        source.send_status(status, now_pg_us())
        self.stats.confirmed_lsn = status.flush

    # -- applier -------------------------------------------------------------------------

    def _idle(self) -> bool:
        return (
            self._queue.empty()
            and not self._assembler.in_transaction
            and self._batch_last is None
            and not self._mid_txn
            and not (self._target and self._target.in_transaction)
        )

    async def _apply_loop(self, target: TargetSession) -> None:
        batch_cfg = self.pipe.batch
        max_delay = batch_cfg.max_delay_ms / 1000
        while True:
            stopping = self._stop.is_set()
            if stopping and not self._mid_txn:
                break  # at a source-commit boundary: commit below and go
            if self._queue.empty():
                if self._batch_last is not None and not self._mid_txn:
                    await self._commit(target)  # nothing more is ready: don't make it wait
                    continue
                if stopping:
                    break  # mid-transaction with nothing left to read: roll back below
                if self._idle():
                    await self._maybe_record_idle(target)
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=_STATUS_TICK)
                except TimeoutError:
                    continue
            else:
                item = self._queue.get_nowait()
            self.stats.queue_bytes -= _item_bytes(item)
            if self._paused and self.stats.queue_bytes < batch_cfg.queue_bytes // 2:
                self._resume_reader()
            if isinstance(item, NonTransactional):
                continue  # heartbeat messages only move positions, which keepalives cover
            if item.first and item.commit is None and self._batch_last is not None:
                # a large transaction starts: commit the small ones before it, not after
                await self._commit(target)
            await self._apply_chunk(target, item)
            await asyncio.sleep(0)  # let the reader run between chunks
            if item.commit is None:
                continue
            if self._batch_changes >= batch_cfg.max_changes or (
                self._batch_opened is not None
                and time.monotonic() - self._batch_opened >= max_delay
            ):
                await self._commit(target)
        if self._batch_last is not None and not self._mid_txn:
            await self._commit(target)
        await self._settle()
        if target.in_transaction:
            # stopped in the middle of a source transaction: it will be sent again
            await target.rollback()

    async def _apply_chunk(self, target: TargetSession, chunk: TxnChunk) -> None:
        if self._batch_opened is None:
            self._batch_opened = time.monotonic()
        if chunk.skipped:
            assert chunk.commit is not None
            self.stats.skipped_transactions += 1
        tables = self._tables
        self._txn.begin = chunk.begin
        plans = self._effective_plans(chunk)
        decode = self._decoder.decode
        for item in chunk.items:
            if item.__class__ is bytes:
                tag = item[0]  # type: ignore[index]
                if tag == 0x49:  # Insert: the flat fast path
                    relid, new = decode_insert(item)  # type: ignore[arg-type]
                    plan = plans[relid]
                    if plan is not None:
                        tables[relid].insert(plan.project(new))
                    continue
                msg = decode(item)  # type: ignore[arg-type]
                plan = plans[msg.relation_id]  # type: ignore[union-attr]
                if plan is None:
                    continue
                if msg.__class__ is Update:
                    old = msg.old_tuple  # type: ignore[union-attr]
                    old_row = plan.project(old) if old is not None else None
                    new_row = plan.project(msg.new_tuple)  # type: ignore[union-attr]
                    tb = tables[plan.relation_id]
                    if not tb.update(old_row, new_row):
                        await self._apply_moved_key(target, tb, old_row, new_row)
                else:
                    assert msg.__class__ is Delete
                    tables[plan.relation_id].delete(plan.project(msg.old_tuple))  # type: ignore[union-attr]
                continue
            cls = item.__class__
            if cls is Relation:
                await self._on_relation(target, item)  # type: ignore[arg-type]
                plans = self._effective_plans(chunk)  # the relation may carry a skip
            elif cls is Truncate:
                await self._on_truncate(target, item)  # type: ignore[arg-type]
            else:
                assert cls is LogicalMessage
        self._batch_changes += len(chunk.items)
        self.stats.changes += len(chunk.items)
        self._batch_bytes += chunk.nbytes
        if self._batch_bytes >= self.pipe.batch.flush_bytes:
            await self._flush(target)
        if chunk.commit is not None:
            self._batch_last = chunk.commit
            self._mid_txn = False
            self.stats.transactions += 1
        else:
            self._mid_txn = True

    def _effective_plans(self, chunk: TxnChunk) -> dict[int, TablePlan | None]:
        """The plans for this transaction: None for tables whose copy already holds it."""
        if not self._skip:
            return self._plans
        final = chunk.begin.final_lsn
        skipping = {rid for rid, lsn in self._skip.items() if final < lsn}
        if not skipping:
            return self._plans
        return {rid: None if rid in skipping else p for rid, p in self._plans.items()}

    async def _on_relation(self, target: TargetSession, rel: Relation) -> None:
        rid = rel.relation_id
        if self._relations.get(rid) == rel and rid in self._plans:
            return
        tb = self._tables.get(rid)
        if tb:  # the shape changes: apply what was folded under the old one first
            await self._flush_one(target, tb)
        self._relations[rid] = rel
        table = self.pipe.table_for(rel.namespace or "pg_catalog", rel.relation_name)
        if table is None:
            self.log.warning("relation_not_configured", relation=rel.qualified_name)
            self._plans[rid] = None
            self._tables.pop(rid, None)
            return
        facts = await read_target_table(target.conn, table.target_name)
        plan = build_plan(
            rel,
            table,
            facts,
            global_masks=self.config.masking.columns,
            unclassified=self.config.masking.unclassified,
            hash_key=self.hash_key,
            tie_source_wins=self.pipe.tie_source_wins(self.config),
            commit_timestamps=target.commit_timestamps,
        )
        self._plans[rid] = plan
        self._tables[rid] = TableBatch(plan, ref=self._txn)
        if table.source in self._skip_by_name:
            self._skip[rid] = self._skip_by_name[table.source]
        self.log.info(
            "table_plan",
            relation=rel.qualified_name,
            target=str(plan.target.name),
            mode=plan.mode,
            key=list(plan.key_columns),
            masked=sorted(plan.masked),
        )

    async def _on_truncate(self, target: TargetSession, msg: Truncate) -> None:
        await self._settle()
        names: list[QualifiedName] = []
        for rid in msg.relation_ids:
            plan = self._plans.get(rid)
            if plan is None:
                continue
            self._tables[rid].clear()  # folded changes the truncate would erase anyway
            names.append(plan.target.name)
        if names:
            await target.truncate(names, restart_identity=msg.restart_identity)

    async def _apply_moved_key(
        self,
        target: TargetSession,
        tb: TableBatch,
        old: Sequence[Datum] | None,
        new: Sequence[Datum],
    ) -> None:
        assert old is not None
        await self._flush_one(target, tb)
        counts = ApplyCounts()
        await target.update_moved_key(tb.plan, tb.plan.key_of(old), new, counts)
        self._account(counts)

    async def _flush_one(self, target: TargetSession, tb: TableBatch) -> None:
        await self._settle()
        counts = ApplyCounts()
        await target.flush_table(tb.take(), counts)
        self._account(counts)

    async def _flush(self, target: TargetSession) -> None:
        """Start applying everything folded so far; returns once it is under way."""
        await self._settle()
        snapshots = [tb.take() for tb in self._tables.values() if tb]
        self._batch_bytes = 0
        if snapshots:
            self._inflight = asyncio.create_task(self._apply_snapshots(target, snapshots))

    async def _apply_snapshots(
        self, target: TargetSession, snapshots: list[TableBatch]
    ) -> ApplyCounts:
        counts = ApplyCounts()
        for tb in snapshots:
            await target.flush_table(tb, counts)
        return counts

    async def _settle(self) -> None:
        """Wait for the flush in flight, if any; its failure surfaces here."""
        task, self._inflight = self._inflight, None
        if task is not None:
            self._account(await task)

    def _account(self, counts: ApplyCounts) -> None:
        s = self.stats
        s.inserted += counts.inserted
        s.updated += counts.updated
        s.deleted += counts.deleted
        s.update_missing += counts.update_missing
        s.delete_missing += counts.delete_missing
        s.dead_letters += counts.dead_letters
        s.conflicts += counts.conflicts

    async def _commit(self, target: TargetSession) -> None:
        last = self._batch_last
        assert last is not None
        assert not self._mid_txn
        await self._flush(target)
        await self._settle()
        if target.in_transaction:
            await target.commit(last.end_lsn, last.commit_time)
            self._feedback.on_committed(last.end_lsn)
            self.stats.applied_lsn = last.end_lsn
            self.stats.commits += 1
            src_commit = _pg_us_to_unix(last.commit_time)
            self.stats.last_commit_time = src_commit
            self.stats.apply_delays.append(max(0.0, time.time() - src_commit))
        else:
            # nothing to write (skipped or folded away): progress moves with the next record
            self._unrecorded = max(self._unrecorded, last.end_lsn)
        self._reset_batch()
        if self._source is not None:
            self._send_status(self._source)
        if self.on_commit is not None:
            self.on_commit(self)

    async def _maybe_record_idle(self, target: TargetSession) -> None:
        """Nothing in flight: record the keepalive (or skipped) position as progress, then
        let feedback confirm it, so an idle slot does not pin WAL."""
        candidate = max(self._feedback.idle_advance_target() or INVALID_LSN, self._unrecorded)
        if candidate - self._feedback.confirmed < IDLE_RECORD_BYTES:
            return
        now = time.monotonic()
        if now - self._last_idle_record < self._feedback.interval:
            return
        self._last_idle_record = now
        await target.record_progress(candidate)
        self._feedback.on_committed(candidate)
        self.stats.applied_lsn = candidate
        self._unrecorded = INVALID_LSN


def _item_bytes(item: WorkItem) -> int:
    return item.nbytes if isinstance(item, TxnChunk) else 64


def _pg_us_to_unix(us: int) -> float:
    return us / 1_000_000 + 946_684_800  # 2000-01-01 in Unix seconds
