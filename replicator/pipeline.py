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
import dataclasses
import datetime as dt
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from replicator import control, resync, slotwatch
from replicator.apply import ApplyCounts, TargetSession
from replicator.assembler import CHANGE_TAGS, Assembler, NonTransactional, TxnChunk
from replicator.batching import TableBatch, TxnRef
from replicator.catalog import read_source_relation, read_target_table, relation_name
from replicator.config import Config, PipelineConfig, QualifiedName, TableConfig
from replicator.connect import answered_within, connect_source
from replicator.errors import MaskingError, ProtocolError, SchemaError, SlotError
from replicator.feedback import Feedback
from replicator.handoff import Handoff
from replicator.keyfile import key_id
from replicator.lsn import INVALID_LSN, Lsn
from replicator.mapping import TablePlan, build_plan
from replicator.masking import MaskingKey
from replicator.protocol.decoder import PgOutputDecoder, decode_insert
from replicator.protocol.frames import Keepalive, parse_frame
from replicator.protocol.messages import (
    Commit,
    Datum,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
    datetime_to_pg_timestamp,
)
from replicator.resync import HOLD_LIMIT_BYTES, TableSync
from replicator.slotwatch import SlotFacts
from replicator.stats import PipelineStats, State, TableCounts, TableProgress
from replicator.stream import ReplicationConnection
from replicator.sync import Startup, skip_positions

HEARTBEAT_PREFIX = "replicator.heartbeat"
# An idle pipeline records the keepalive position as progress (so the slot can let WAL
# go) only once it is this far ahead: WAL is recycled by the 16 MB segment anyway, and a
# threshold keeps two-way pipelines from answering each other's progress records forever.
IDLE_RECORD_BYTES = 1024 * 1024
IDLE_RETAIN_BYTES = 16 * 1024 * 1024  # ...or once the slot retains a WAL segment's worth
_XLOGDATA_HEADER = 25  # 'w', dataStart, walEnd, sendTime
_U64 = struct.Struct("!Q")
_READ_LIMIT = 2000  # frames per reader callback: keeps the loop fair to the applier
_YIELD_EVERY = 2000  # changes folded between two chances for the reader to run
_STATUS_TICK = 0.25  # seconds between feedback checks


def now_pg_us() -> int:
    return datetime_to_pg_timestamp(dt.datetime.now(dt.UTC))


class Pipeline:
    def __init__(
        self,
        config: Config,
        pipe: PipelineConfig,
        *,
        hash_key: MaskingKey | None = None,
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
        self._queue = Handoff(pipe.batch.queue_bytes)
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
        self._since_yield = 0
        self._last_data_at = time.monotonic()  # any frame from the source (liveness)
        self._syncs: dict[int, TableSync] = {}  # tables being resynced, by relation id
        # published relations the config does not name, not yet warned about (by id)
        self._unconfigured: dict[int, str] = {}
        self._plans_by_name: dict[QualifiedName, TablePlan] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._unpaused = asyncio.Event()  # cleared while a DBA pauses the pipeline
        self._unpaused.set()
        self._last_idle_record = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Stream until stopped. Raises on failure; the caller decides about retries."""
        pipe, cfg = self.pipe, self.config
        self.stats.state = State.STARTING
        self._reset_session_state()
        # every step of a start waits on a server: each is bounded, so one that never
        # answers is retried like a dead route instead of holding the pipeline silent
        async with answered_within(pipe.target_timeout_s, repr(pipe.to), "target_timeout_s"):
            target = await TargetSession.open(
                cfg.databases[pipe.to].dsn.secret_value,
                origin=pipe.origin_name,
                application_name=f"replicator:{pipe.name}:apply",
                pipeline=pipe.name,
            )
        self._target = target
        try:
            async with answered_within(pipe.target_timeout_s, repr(pipe.to), "target_timeout_s"):
                await control.ensure_schema(target.conn)
            plans = await self._preflight(target)
            self._plans_by_name = plans
            source, start = await Startup(
                cfg,
                pipe,
                target,
                plans,
                self.stats,
                key_id=key_id(self.hash_key) if self.hash_key else None,
            ).prepare()
            self._source = source
            try:
                async with answered_within(
                    pipe.target_timeout_s, repr(pipe.to), "target_timeout_s"
                ):
                    await self._reconcile_tables(target, plans)
                # the slot's confirmed point never passes origin progress, so confirming
                # `start` again is safe and gives idle-progress decisions the right baseline
                self._feedback.on_committed(start)
                async with answered_within(
                    pipe.source_timeout_s,
                    f"START_REPLICATION on {pipe.from_!r}",
                    "source_timeout_s",
                ):
                    await self._start_stream(source, start)
                self.stats.state = State.STREAMING
                self.stats.retry_reason = None
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
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    await target.rollback()
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(5):
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
        # each step is bounded, not the whole: a config of thousands of tables takes its
        # time, a server that stops answering does not
        either = max(pipe.source_timeout_s, pipe.target_timeout_s)
        async with answered_within(pipe.source_timeout_s, repr(pipe.from_), "source_timeout_s"):
            src = await connect_source(
                cfg.databases[pipe.from_].dsn.secret_value, f"replicator:{pipe.name}:check"
            )
        async with src:
            async with answered_within(pipe.target_timeout_s, repr(pipe.to), "target_timeout_s"):
                known = await control.read_relation_ids(target.conn, pipe.name)
            for table in pipe.tables:
                try:
                    async with answered_within(
                        either,
                        f"{pipe.from_!r} or {pipe.to!r} (catalogs of {table.source})",
                        "source_timeout_s, target_timeout_s",
                    ):
                        plans[table.source] = await self._plan_table(
                            src, target, table, known.get(table.source)
                        )
                except (SchemaError, MaskingError) as exc:
                    problems.append(str(exc))
                    masking |= isinstance(exc, MaskingError)
        if problems:
            cls = MaskingError if masking else SchemaError
            raise cls("\n".join(problems))
        return plans

    async def _plan_table(
        self,
        src: psycopg.AsyncConnection[Any],
        target: TargetSession,
        table: TableConfig,
        known_oid: int | None,
    ) -> TablePlan:
        pipe, cfg = self.pipe, self.config
        rel = await read_source_relation(src, table.source, oid=known_oid)
        now_named = await relation_name(src, rel.relation_id)
        if now_named is not None and now_named != table.source:
            self.log.warning(
                "relation_renamed",
                relation=str(table.source),
                new_name=str(now_named),
                relation_id=rel.relation_id,
                fix="followed by its OID; update the config's `source`",
            )
        facts = await read_target_table(target.conn, table.target_name)
        return build_plan(
            rel,
            table,
            facts,
            global_masks=cfg.masking.columns,
            unclassified=cfg.masking.unclassified,
            hash_key=self.hash_key,
            tie_source_wins=pipe.tie_source_wins(cfg),
            commit_timestamps=target.commit_timestamps,
            returned=pipe.return_table(cfg, table),
        )

    async def _reconcile_tables(
        self, target: TargetSession, plans: dict[QualifiedName, TablePlan]
    ) -> None:
        """The tables' control rows against the config, before streaming. A table out of
        the config had its changes dropped: it is forgotten, so that once back it is copied
        again like any added table (one renamed on the source and now configured under its
        new name is the same table: it carries over)."""
        conn, name = target.conn, self.pipe.name
        relation_ids = {n: p.relation_id for n, p in plans.items()}
        await control.adopt_renamed(conn, name, relation_ids)
        await control.forget_tables(conn, name, plans.keys())
        tables = await control.read_tables(conn, name)
        self._skip_by_name = skip_positions(tables)
        for table in plans.keys() - tables.keys():  # added to the config since: copy it
            await control.write_table(conn, name, table, "resync")
        await control.record_relation_ids(conn, name, relation_ids)

    def _reset_session_state(self) -> None:
        self._feedback = Feedback()
        self._queue = Handoff(self.pipe.batch.queue_bytes)
        self.stats.queue_bytes = 0
        self._paused = False
        self._plans.clear()
        self._relations.clear()
        self._tables.clear()
        self._skip.clear()
        self._syncs.clear()
        self._unconfigured.clear()
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
        timeout = await source.wal_sender_timeout()
        if timeout:
            # unprompted status updates must beat the server's timeout comfortably, above
            # all while backpressure keeps us from reading (then they are all it hears)
            self._feedback.max_interval = max(1.0, min(10.0, timeout / 4))
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
                self._tg = tg
                applier = tg.create_task(self._apply_loop(target))
                helpers = [
                    tg.create_task(self._status_loop(source)),
                    tg.create_task(self._watch_reader()),
                    tg.create_task(self._watch_slot()),
                    tg.create_task(self._control_loop()),
                ]
                await applier
                for task in helpers:
                    task.cancel()
                for task in self._sync_tasks():
                    task.cancel()
        except BaseExceptionGroup as group:
            # one failure cancels the sibling tasks; report the failure, not the group
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            self._pause_reader()

    # -- operator control: pause, resync (replicator.pipelines / replicator.tables) ------

    def _sync_tasks(self) -> list[asyncio.Task[None]]:
        prefix = f"resync:{self.pipe.name}:"
        return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix)]

    async def _control_loop(self) -> None:
        """LISTEN replicator_control on the target; re-read the pipeline's row and its
        tables on every notification naming it, and every 30 s in case one was missed."""
        dsn = self.config.databases[self.pipe.to].dsn.secret_value
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name=f"replicator:{self.pipe.name}:control"
        ) as conn:
            await conn.execute("LISTEN replicator_control")
            while True:
                await self._refresh_control(conn)
                async for note in conn.notifies(timeout=30, stop_after=1):
                    del note  # whichever pipeline it names, reading again is cheap

    async def _refresh_control(self, conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute(
            "SELECT paused FROM replicator.pipelines WHERE pipeline = %s", [self.pipe.name]
        )
        row = await cur.fetchone()
        paused = bool(row and row[0])
        if paused and self._unpaused.is_set():
            self.log.info("pipeline_paused")
            self._unpaused.clear()
        elif not paused and not self._unpaused.is_set():
            self.log.info("pipeline_resumed")
            self._unpaused.set()
        for name, state in (await control.read_tables(conn, self.pipe.name)).items():
            plan = self._plans_by_name.get(name)
            if state.state == "resync" and plan is not None and plan.relation_id not in self._syncs:
                self._start_sync(plan)

    def _start_sync(self, plan: TablePlan) -> None:
        assert self._tg is not None
        sync = TableSync(plan)
        self._syncs[plan.relation_id] = sync
        progress = TableProgress(plan.source, ranges_total=1)
        self.stats.copy[plan.source] = progress
        self._tables.get(plan.relation_id, TableBatch(plan)).clear()  # the copy replaces it
        self._tg.create_task(
            resync.copy_table(self.config, self.pipe, sync, progress),
            name=f"resync:{self.pipe.name}:{plan.source}",
        )

    async def _finish_syncs(self, target: TargetSession) -> None:
        """Copies that committed: fold what waited for them, mark the tables ready."""
        finished = False
        for rid, sync in list(self._syncs.items()):
            if sync.copied:
                await self._finish_sync(target, rid, sync)
                finished = True
        if finished and self._batch_last is None:
            # nothing else to commit with: commit now (progress stays where it is)
            await self._flush(target)
            await self._settle()
            await target.commit(
                self._feedback.confirmed, datetime_to_pg_timestamp(dt.datetime.now(dt.UTC))
            )

    async def _finish_sync(self, target: TargetSession, rid: int, sync: TableSync) -> None:
        del self._syncs[rid]
        assert sync.lsn is not None
        self._skip[rid] = sync.lsn
        self._skip_by_name[sync.plan.source] = sync.lsn
        if rid not in self._tables:
            self._tables[rid] = TableBatch(sync.plan, ref=self._txn)
            self._plans.setdefault(rid, sync.plan)
        current = self._txn.begin
        for begin, change in sync.held:  # older than anything still to come: fold first
            self._txn.begin = begin
            await self._fold_change(target, self._plans, change)
        self._txn.begin = current
        await self._settle()  # see _on_relation: the flush in flight owns the connection
        await target.begin()
        await control.write_table(
            target.conn, self.pipe.name, sync.plan.source, "ready", skip_until=sync.lsn
        )
        self.log.info("resync_done", table=str(sync.plan.source), held=len(sync.held))

    async def _watch_slot(self) -> None:
        pipe = self.pipe

        def report(facts: SlotFacts) -> None:
            self.stats.slot_retained_bytes = facts.retained_bytes
            self.stats.slot_wal_status = facts.wal_status

        await slotwatch.watch(
            self.config.databases[pipe.from_].dsn.secret_value,
            pipe.slot_name,
            interval=max(1.0, min(10.0, pipe.heartbeat_interval_s or 10.0)),
            heartbeat_after=pipe.heartbeat_interval_s,
            warn_bytes=int(pipe.slot_warn_bytes),
            last_data=lambda: self._last_data_at,
            report=report,
            application_name=f"replicator:{pipe.name}:slotwatch",
        )

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
        if frames:
            self._last_data_at = time.monotonic()
        decoder, assembler, feedback, queue = (
            self._decoder,
            self._assembler,
            self._feedback,
            self._queue,
        )
        change_tags = CHANGE_TAGS
        last_start = 0
        for raw in frames:
            if raw[0] == 0x77 and len(raw) > _XLOGDATA_HEADER:  # 'w' XLogData: inlined, hot
                last_start = _U64.unpack_from(raw, 1)[0]
                payload = raw[_XLOGDATA_HEADER:]
                if payload[0] in change_tags:
                    item = assembler.feed_change(payload, last_start)
                else:
                    item = assembler.feed(decoder.decode(payload), Lsn(last_start), len(payload))
                if item is not None:
                    queue.put(item)
                    if self.stats.pending_since is None:
                        self.stats.pending_since = time.time()
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
        self.stats.queue_bytes = queue.nbytes
        if queue.full:
            self._pause_reader()  # backpressure: resumed by the applier
        elif len(frames) == _READ_LIMIT:
            asyncio.get_running_loop().call_soon(self._on_readable)

    # -- feedback ------------------------------------------------------------------------

    async def _status_loop(self, source: ReplicationConnection) -> None:
        timeout = self.pipe.source_timeout_s
        while True:
            await asyncio.sleep(_STATUS_TICK)
            self._send_status(source)
            silent = time.monotonic() - self._last_data_at
            if silent > timeout and not self._paused:
                # we ask for a reply every 10 s: silence this long is a dead route, whatever
                # TCP believes (a blackhole keeps the socket looking healthy)
                raise psycopg.OperationalError(
                    f"no data from the source for {silent:.0f}s (source_timeout_s = {timeout})"
                )

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
            if not self._mid_txn:
                if self._syncs:
                    await self._finish_syncs(target)
                if not self._unpaused.is_set() and not stopping:
                    await self._pause(target)
                    continue
            if self._queue.empty():
                if self._batch_last is not None and not self._mid_txn:
                    await self._commit(target)  # nothing more is ready: don't make it wait
                    continue
                if stopping:
                    break  # mid-transaction with nothing left to read: roll back below
                if self._idle():
                    self.stats.pending_since = None
                    await self._maybe_record_idle(target)
                try:
                    item = await self._queue.take(_STATUS_TICK)
                except TimeoutError:
                    continue
            else:
                item = self._queue.take_nowait()
            if not self._unpaused.is_set() and not self._mid_txn and not self._stop.is_set():
                await self._pause(target)  # paused while we waited: hold this item till resumed
            self.stats.queue_bytes = self._queue.nbytes
            if self._syncs:
                await self._wait_for_copies()
            if self._paused and self._queue.drained:
                self._resume_reader()
            if isinstance(item, NonTransactional):
                # a heartbeat (or any message outside a transaction): everything before it
                # was sent before it, so once idle its position may be recorded
                self._unrecorded = max(self._unrecorded, item.lsn)
                continue
            if item.first and item.commit is None and self._batch_last is not None:
                # a large transaction starts: commit the small ones before it, not after
                await self._commit(target)
            await self._apply_chunk(target, item)
            self._since_yield += len(item.items)
            if self._since_yield >= _YIELD_EVERY:  # let the reader drain the socket
                self._since_yield = 0
                await asyncio.sleep(0)
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

    async def _fold_change(
        self,
        target: TargetSession,
        plans: dict[int, TablePlan | None],
        change: bytes,
        chunk: TxnChunk | None = None,
    ) -> None:
        """Decode one raw change and fold it into its table's batch; a change of a table
        being resynced is kept aside for after its copy."""
        msg = self._decoder.decode(change)
        rid = msg.relation_id  # type: ignore[union-attr]  # a change: Insert, Update or Delete
        plan = plans.get(rid)
        if plan is None:
            if chunk is not None and rid in self._syncs:
                self._syncs[rid].hold_or_drop(chunk.begin, change)
            elif rid in self._unconfigured:
                self._warn_unconfigured(rid)
            return
        tb = self._tables[rid]
        if msg.__class__ is Insert:
            tb.insert(plan.project(msg.new_tuple))
        elif msg.__class__ is Update:
            old = msg.old_tuple
            old_row = plan.project(old) if old is not None else None
            new_row = plan.project(msg.new_tuple)
            if not tb.update(old_row, new_row):
                await self._apply_moved_key(target, tb, old_row, new_row)
        else:
            assert msg.__class__ is Delete
            tb.delete(plan.project(msg.old_tuple))

    async def _pause(self, target: TargetSession) -> None:
        """A DBA paused us: finish the batch at hand, then apply and confirm nothing more
        until resumed (the queue fills and the reader stops: the slot keeps the WAL)."""
        if self._batch_last is not None:
            await self._commit(target)
        self.stats.state = State.PAUSED
        stopped = asyncio.ensure_future(self._stop.wait())
        resumed = asyncio.ensure_future(self._unpaused.wait())
        await asyncio.wait({stopped, resumed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        resumed.cancel()
        self.stats.state = State.STREAMING

    async def _wait_for_copies(self) -> None:
        """What a resyncing table kept aside grew past its bound: wait for its copy."""
        while any(s.held_bytes > HOLD_LIMIT_BYTES and not s.copied for s in self._syncs.values()):
            await asyncio.sleep(0.1)

    async def _apply_chunk(self, target: TargetSession, chunk: TxnChunk) -> None:
        if self._batch_opened is None:
            self._batch_opened = time.monotonic()
        if chunk.skipped:
            assert chunk.commit is not None
            self.stats.skipped_transactions += 1
        tables = self._tables
        self._txn.begin = chunk.begin
        plans = self._effective_plans(chunk)
        syncs = self._syncs
        for item in chunk.items:
            if item.__class__ is bytes:
                if item[0] == 0x49:  # Insert: the flat fast path, inline
                    relid, new = decode_insert(item)
                    plan = plans[relid]
                    if plan is not None:
                        tables[relid].insert(plan.project(new))
                    elif relid in syncs:
                        syncs[relid].hold_or_drop(chunk.begin, item)
                    elif relid in self._unconfigured:
                        self._warn_unconfigured(relid)
                    continue
                await self._fold_change(target, plans, item, chunk)
                continue
            if item.__class__ is Relation:
                await self._on_relation(target, item)
                plans = self._effective_plans(chunk)  # the relation may carry a skip
            elif item.__class__ is Truncate:
                await self._on_truncate(target, item)
            else:
                assert item.__class__ is LogicalMessage
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
        """The plans for this transaction: None for tables whose copy already holds it,
        and for tables being resynced (their changes wait for the copy)."""
        if self._syncs:
            skip = {rid for rid, lsn in self._skip.items() if chunk.begin.final_lsn < lsn}
            skip |= self._syncs.keys()
            return {rid: None if rid in skip else p for rid, p in self._plans.items()}
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
        table = self._renamed_table(rel)
        if table is not None:
            # a configured table renamed on the source: same OID, same target, same masks
            rel = dataclasses.replace(
                rel, namespace=table.source.schema, relation_name=table.source.name
            )
        else:
            table = self.pipe.table_for(rel.namespace or "pg_catalog", rel.relation_name)
        if table is None:
            # pgoutput also describes a leaf partition whose changes it sends under the
            # root: only a change of this relation says the config is missing something
            self._unconfigured[rid] = rel.qualified_name
            self._plans[rid] = None
            self._tables.pop(rid, None)
            return
        # the flush in flight shares the connection: one of its statements may fail (a
        # refused row it is about to replay or dead-letter) and leave the transaction
        # aborted until its own handler rolls back; nothing else may run in between
        await self._settle()
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
            returned=self.pipe.return_table(self.config, table),
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

    def _renamed_table(self, rel: Relation) -> TableConfig | None:
        """The configured table this relation is, by its OID, when it goes by another
        name now (renamed while streaming, or before this start)."""
        plan = next(
            (p for p in self._plans_by_name.values() if p.relation_id == rel.relation_id), None
        )
        if plan is None:
            return None
        if (rel.namespace or "pg_catalog", rel.relation_name) == (
            plan.source.schema,
            plan.source.name,
        ):
            return None
        table = self.pipe.table_for(plan.source.schema, plan.source.name)
        if table is not None:
            self.log.warning(
                "relation_renamed",
                relation=str(plan.source),
                new_name=rel.qualified_name,
                relation_id=rel.relation_id,
                fix="followed by its OID; update the config's `source`",
            )
        return table

    def _warn_unconfigured(self, rid: int) -> None:
        """The first change of a published table the config does not name, once per
        session: its changes are not applied."""
        self.log.warning("relation_not_configured", relation=self._unconfigured.pop(rid))

    async def _on_truncate(self, target: TargetSession, msg: Truncate) -> None:
        await self._settle()
        final = self._txn.begin.final_lsn if self._txn.begin else Lsn(0)
        names: list[QualifiedName] = []
        for rid in msg.relation_ids:
            sync = self._syncs.get(rid)
            if sync is not None:  # rare: wait for its copy, then judge by its position
                while not sync.copied:
                    await asyncio.sleep(0.1)
                await self._finish_sync(target, rid, sync)
            plan = self._plans.get(rid)
            if plan is None or final < self._skip.get(rid, Lsn(0)):
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
        """Wait for the flush in flight, if any; its failure surfaces here. A target that
        takes longer than target_timeout_s is a dead route: the pipeline reconnects."""
        task, self._inflight = self._inflight, None
        if task is not None:
            async with asyncio.timeout(self.pipe.target_timeout_s):
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
        for table, (ins, upd, dele) in counts.per_table.items():
            t = s.table_rows.get(table)
            if t is None:
                t = s.table_rows[table] = TableCounts()
            t.inserted += ins
            t.updated += upd
            t.deleted += dele

    async def _commit(self, target: TargetSession) -> None:
        last = self._batch_last
        assert last is not None
        assert not self._mid_txn
        committed = False
        async with asyncio.timeout(self.pipe.target_timeout_s):
            await self._flush(target)
            await self._settle()
            if target.in_transaction:
                await target.commit(last.end_lsn, last.commit_time)
                committed = True
        if committed:
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
        gap = candidate - self._feedback.confirmed
        retained = self.stats.slot_retained_bytes or 0
        # a small gap is not worth a write, unless the slot holds back real WAL: the slot
        # releases WAL only once we confirm past a later running-xacts record
        if gap <= 0 or (gap < IDLE_RECORD_BYTES and retained < IDLE_RETAIN_BYTES):
            return
        now = time.monotonic()
        if now - self._last_idle_record < self._feedback.interval:
            return
        self._last_idle_record = now
        async with asyncio.timeout(self.pipe.target_timeout_s):
            await target.record_progress(candidate)
        self._feedback.on_committed(candidate)
        self.stats.applied_lsn = candidate
        self._unrecorded = INVALID_LSN


def _pg_us_to_unix(us: int) -> float:
    return us / 1_000_000 + 946_684_800  # 2000-01-01 in Unix seconds
