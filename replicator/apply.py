"""The target side: one session that applies folded batches and records progress.

The session runs as PostgreSQL's own apply worker does: ``session_replication_role
= replica`` (no user triggers, no FK checks), under the pipeline's replication
origin so its writes are tagged. Each target transaction ends with
``pg_replication_origin_xact_setup(end_lsn, commit_time)`` and COMMIT, so the
source position and the data it describes commit together: exactly once.

A table's net changes go out as one COPY into a temporary staging table and one
round trip of set-based statements (DELETE ... USING, UPDATE ... FROM per group
of columns, INSERT ... SELECT ... ON CONFLICT). Inserts into a table that cannot
conflict, or that turn out not to, skip the staging table and COPY straight in.

I/O only: what to apply is decided by :mod:`replicator.batching`, how it is
spelled by :mod:`replicator.sqlgen`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
import structlog
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from replicator import control, sqlgen
from replicator.batching import UPDATE, Entry, Key, Row, TableBatch
from replicator.catalog import owned_sequences, truncate_facts
from replicator.classify import Directive, classify
from replicator.config import QualifiedName
from replicator.connect import target_conninfo
from replicator.errors import describe_error
from replicator.lsn import INVALID_LSN, Lsn
from replicator.mapping import TablePlan
from replicator.protocol.messages import UNCHANGED_TOAST, Begin, Datum, pg_timestamp_to_datetime
from replicator.query import fetch_one

_log = structlog.get_logger("replicator")


@dataclass(slots=True)
class ApplyCounts:
    """What one flush did, for metrics and conflict accounting."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    update_missing: int = 0
    delete_missing: int = 0
    dead_letters: int = 0
    conflicts: int = 0  # rows written to replicator.conflicts
    per_table: dict[QualifiedName, list[int]] = field(default_factory=dict)

    def add(self, table: QualifiedName, ins: int, upd: int, dele: int) -> None:
        self.inserted += ins
        self.updated += upd
        self.deleted += dele
        c = self.per_table.setdefault(table, [0, 0, 0])
        c[0] += ins
        c[1] += upd
        c[2] += dele


class TargetSession:
    """One connection to the target, owned by one pipeline."""

    def __init__(self, conn: AsyncConnection, origin: str, pipeline: str = "") -> None:
        self.conn = conn
        self.origin = origin
        self.pipeline = pipeline  # names dead letters
        self.in_transaction = False
        self.commit_timestamps = False  # track_commit_timestamp on the target (set by open)
        self._stages: dict[int, tuple] = {}  # target oid -> staging shape created
        self._dirty: set[int] = set()  # stages holding rows from an earlier flush

    @classmethod
    async def open(
        cls, dsn: str, *, origin: str, application_name: str, pipeline: str = ""
    ) -> TargetSession:
        conn = await AsyncConnection.connect(
            target_conninfo(dsn, application_name), autocommit=True
        )
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "SELECT pg_catalog.pg_replication_origin_session_setup(%s)", [origin]
            )
            cur = await conn.execute("SELECT current_setting('track_commit_timestamp')::bool")
            tracked = (await fetch_one(cur))[0]
        except BaseException:
            await conn.close()
            raise
        session = cls(conn, origin, pipeline)
        session.commit_timestamps = bool(tracked)
        return session

    async def close(self) -> None:
        await self.conn.close()

    async def progress(self) -> Lsn:
        """Where this pipeline's committed progress stands (0/0 if it never applied);
        see :func:`replicator.control.read_progress`."""
        return await control.read_progress(self.conn, self.pipeline, self.origin) or INVALID_LSN

    # -- transaction -----------------------------------------------------------------

    async def begin(self) -> None:
        if not self.in_transaction:
            await self.conn.execute("BEGIN")
            self.in_transaction = True

    async def commit(self, end_lsn: Lsn, commit_time: int) -> None:
        """Record ``end_lsn`` as progress (:meth:`progress`) and as this origin's, with the
        source's commit time, and commit: one round trip."""
        assert self.in_transaction
        when = pg_timestamp_to_datetime(commit_time)
        await self.conn.execute(
            sql.SQL(
                "{}; SELECT pg_catalog.pg_replication_origin_xact_setup({}, {}); COMMIT"
            ).format(self._record_applied(end_lsn), sql.Literal(str(end_lsn)), sql.Literal(when))
        )
        self.in_transaction = False
        self._dirty.clear()  # ON COMMIT DELETE ROWS emptied every stage

    async def rollback(self) -> None:
        if self.in_transaction and not self.conn.closed:
            await self.conn.execute("ROLLBACK")
        self.in_transaction = False
        self._stages.clear()  # stages created in the failed transaction are gone
        self._dirty.clear()

    async def record_progress(self, lsn: Lsn) -> None:
        """Move origin progress with no data (idle source): a transaction needs an xid to
        write a commit record, and the commit record is what carries origin progress."""
        assert not self.in_transaction
        await self.conn.execute(
            sql.SQL(
                "BEGIN; SELECT pg_catalog.pg_current_xact_id(); {};"
                " SELECT pg_catalog.pg_replication_origin_xact_setup({}, {}); COMMIT"
            ).format(
                self._record_applied(lsn),
                sql.Literal(str(lsn)),
                sql.Literal(dt.datetime.now(dt.UTC)),
            )
        )

    def _record_applied(self, lsn: Lsn) -> sql.Composed:
        return sql.SQL(
            "UPDATE replicator.pipelines SET applied_lsn = {} WHERE pipeline = {}"
        ).format(sql.Literal(str(lsn)), sql.Literal(self.pipeline))

    # -- applying --------------------------------------------------------------------

    async def flush_table(self, tb: TableBatch, counts: ApplyCounts) -> None:
        """Apply one table's folded changes inside the open transaction.

        Rows the target rejects (a data or integrity error) do not stop the stream: the
        table's changes are replayed in source order, in consecutive pieces under
        savepoints, each piece folded again and halved while the target refuses it, until
        each refused change stands alone after every change before it. Folding may have
        run a change ahead of the one that made room for it (a value freed and taken
        again under a UNIQUE index that is not the key): in source order that change
        applies. Once a change of a row is refused, that row's later changes in the
        batch fold onto it instead of applying alone, and their net change is tried
        once more at the end (a bad value updated again, or the row deleted, is no dead
        letter, as when folded). What the target still refuses goes, masked, to
        replicator.dead_letters in this same transaction, one letter per row, and the
        rest applies. If the dead letter cannot be written, the error stands."""
        await self.begin()
        await self.conn.execute("SAVEPOINT replicator_flush")
        try:
            await self._flush_any(tb, counts)
        except psycopg.Error as exc:
            if classify(exc) is not Directive.DEAD_LETTER:
                raise
            await self._rollback_to("replicator_flush")
            refused: dict[object, Refused] = {}
            await self._isolate(tb.split(), counts, refused)
            for held in refused.values():
                await self._last_try(held, counts)
        else:
            await self.conn.execute("RELEASE SAVEPOINT replicator_flush")

    async def _flush_any(self, tb: TableBatch, counts: ApplyCounts) -> None:
        if tb.plan.mode == "keyed":
            await self._flush_keyed(tb, counts)
        else:
            await self._flush_ordered(tb, counts)

    async def _rollback_to(self, savepoint: str) -> None:
        await self.conn.execute(
            sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(savepoint))
        )
        # a staging table created after the savepoint is gone again
        self._stages.clear()
        self._dirty.clear()

    async def _isolate(
        self,
        parts: list[TableBatch],
        counts: ApplyCounts,
        refused: dict[object, Refused],
    ) -> None:
        """Bisect ``parts`` (one source change each, in source order) down to the changes
        the target rejects. The halves apply one after the other, so every change is
        judged on the state the changes before it left, as on the source. A refused change
        goes into ``refused`` under its row's key; later changes of that row fold onto it
        there, before the piece they are in is tried."""
        if len(parts) == 1:
            await self.conn.execute("SAVEPOINT replicator_row")
            try:
                await self._flush_any(parts[0], counts)
            except psycopg.Error as exc:
                if classify(exc) is not Directive.DEAD_LETTER:
                    raise
                await self._rollback_to("replicator_row")
                refused[row_after(parts[0])] = Refused(parts[0], exc)
            else:
                await self.conn.execute("RELEASE SAVEPOINT replicator_row")
            return
        mid = len(parts) // 2
        for whole in (parts[:mid], parts[mid:]):
            # rows refused so far: their later changes wait with the refused one
            half = absorb(whole, refused) if refused else whole
            if not half:
                continue
            await self.conn.execute("SAVEPOINT replicator_half")
            try:
                await self._flush_any(TableBatch.merge(half), counts)
            except psycopg.Error as exc:
                if classify(exc) is not Directive.DEAD_LETTER:
                    raise
                await self._rollback_to("replicator_half")
                await self._isolate(half, counts, refused)
            else:
                await self.conn.execute("RELEASE SAVEPOINT replicator_half")

    async def _last_try(self, held: Refused, counts: ApplyCounts) -> None:
        """A row's refused change, with the row's later changes folded onto it: applied if
        the target now takes the net change, else a dead letter."""
        error = held.error
        if held.absorbed:
            await self.conn.execute("SAVEPOINT replicator_row")
            try:
                await self._flush_any(held.part, counts)
            except psycopg.Error as exc:
                if classify(exc) is not Directive.DEAD_LETTER:
                    raise
                await self._rollback_to("replicator_row")
                error = exc
            else:
                await self.conn.execute("RELEASE SAVEPOINT replicator_row")
                return
        await self._dead_letter(held.part, error)
        counts.dead_letters += 1

    async def _dead_letter(self, part: TableBatch, exc: psycopg.Error) -> None:
        plan = part.plan
        letter = dead_letter_of(part)
        txn = letter.txn
        await self.conn.execute(
            "INSERT INTO replicator.dead_letters (pipeline, source_table, target_table,"
            " operation, key, row_data, old_key, error_class, error_message, source_lsn,"
            " source_xid, source_commit_time) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::pg_lsn, %s, %s)",
            [
                self.pipeline,
                str(plan.source),
                str(plan.target.name),
                letter.operation,
                Jsonb(letter.key),
                None if letter.row is None else Jsonb(letter.row),
                None if letter.old_key is None else Jsonb(letter.old_key),
                exc.sqlstate or "",
                describe_error(exc),
                str(txn.final_lsn) if txn else "0/0",
                txn.xid if txn else None,
                pg_timestamp_to_datetime(txn.commit_time) if txn else None,
            ],
        )

    async def _flush_keyed(self, tb: TableBatch, counts: ApplyCounts) -> None:
        plan = tb.plan
        groups = tb.update_groups()
        if not tb.deleted and not groups:
            inserts = tb.inserts()
            if await self._try_copy_direct(plan, inserts):
                counts.add(plan.target.name, len(inserts), 0, 0)
                return
        await self._ensure_stage(plan)
        items = tb.insert_items()
        numbered = list(enumerate(groups.items()))
        data = sqlgen.stage_lines(
            plan,
            tb.deleted.items(),
            ((g, _staged_updates(entries)) for g, (_, entries) in numbered),
            items,
        )
        log_inserts = sqlgen.log_insert_conflicts(plan, self.pipeline) if items else None
        async with self.conn.cursor() as cur:
            async with cur.copy(sqlgen.copy_into_stage(plan)) as copy:
                await copy.write(data)
            # one round trip; conflicts are logged set-based, before the statement they
            # describe changes what they look at
            statements: list[sql.Composable] = []
            if tb.deleted:
                statements += [
                    sqlgen.log_delete_conflicts(plan, self.pipeline),
                    sqlgen.delete_from_stage(plan),
                ]
            for g, (skip, _) in numbered:
                statements.append(sqlgen.update_from_stage(plan, g, skip, self.pipeline))
            if items:
                if log_inserts is not None:
                    statements.append(log_inserts)
                statements.append(sqlgen.insert_from_stage(plan))
            await cur.execute(sql.SQL("; ").join(statements))
            self._dirty.add(plan.target.oid)
            deleted = updated = inserted = 0
            if tb.deleted:
                missing, logged = await fetch_one(cur)
                counts.conflicts += logged
                counts.delete_missing += missing
                cur.nextset()
                deleted = cur.rowcount
                cur.nextset()
            for _ in numbered:
                n, missing, logged = await fetch_one(cur)
                updated += n
                counts.update_missing += missing
                counts.conflicts += logged
                cur.nextset()
            if items:
                if log_inserts is not None:
                    counts.conflicts += cur.rowcount
                    cur.nextset()
                inserted = cur.rowcount
        counts.add(plan.target.name, inserted, updated, deleted)

    async def _try_copy_direct(self, plan: TablePlan, rows: Sequence[Sequence[Datum]]) -> bool:
        """COPY inserts straight into the table. Where a unique key could conflict, under a
        savepoint: on a unique violation, undo and let the staged merge decide."""
        if not rows:
            return True
        data = sqlgen.copy_rows(rows)
        if not plan.conflict_index:
            async with self.conn.cursor() as cur, cur.copy(sqlgen.copy_direct(plan)) as copy:
                await copy.write(data)
            return True
        await self.conn.execute("SAVEPOINT replicator_copy")
        try:
            async with self.conn.cursor() as cur, cur.copy(sqlgen.copy_direct(plan)) as copy:
                await copy.write(data)
        except psycopg.errors.UniqueViolation:
            await self.conn.execute("ROLLBACK TO SAVEPOINT replicator_copy")
            return False
        await self.conn.execute("RELEASE SAVEPOINT replicator_copy")
        return True

    async def _ensure_stage(self, plan: TablePlan) -> None:
        oid = plan.target.oid
        shape = (plan.stage_types, plan.key)
        if self._stages.get(oid) != shape:
            await self.conn.execute(sqlgen.create_stage(plan))
            self._stages[oid] = shape
            self._dirty.discard(oid)
        elif oid in self._dirty:
            await self.conn.execute(sqlgen.truncate_stage(plan))
            self._dirty.discard(oid)

    async def _flush_ordered(self, tb: TableBatch, counts: ApplyCounts) -> None:
        """Tables without a usable key: changes in source order, one matching row each."""
        plan = tb.plan
        pending: list[Sequence[Datum]] = []
        ins = upd = dele = 0
        for op in tb.ordered:
            if op.op == "I":
                assert op.new is not None
                pending.append(op.new)
                continue
            if pending:
                await self._try_copy_direct(plan, pending)
                ins += len(pending)
                pending = []
            assert op.old is not None
            if op.op == "U":
                assert op.new is not None
                q = sqlgen.update_one_row(plan, op.old, op.new)
            else:
                q = sqlgen.delete_one_row(plan, op.old)
            cur = await self.conn.execute(q)
            if op.op == "U":
                upd += cur.rowcount
                counts.update_missing += 1 - cur.rowcount
            else:
                dele += cur.rowcount
                counts.delete_missing += 1 - cur.rowcount
        if pending:
            await self._try_copy_direct(plan, pending)
            ins += len(pending)
        counts.add(plan.target.name, ins, upd, dele)

    async def update_moved_key(
        self, plan: TablePlan, old_key: Sequence[Datum], row: Sequence[Datum], counts: ApplyCounts
    ) -> None:
        """A key move that cannot be folded (some TOAST values unknown): applied alone."""
        await self.begin()
        await self.conn.execute("SAVEPOINT replicator_row")
        try:
            cur = await self.conn.execute(sqlgen.update_by_key(plan, old_key, row))
        except psycopg.Error as exc:
            if classify(exc) is not Directive.DEAD_LETTER:
                raise
            await self._rollback_to("replicator_row")
            tb = TableBatch(plan)
            tb.rows[tuple(row[i] for i in plan.key)] = Entry(UPDATE, row, tuple(old_key))
            await self._dead_letter(tb, exc)
            counts.dead_letters += 1
            return
        await self.conn.execute("RELEASE SAVEPOINT replicator_row")
        counts.update_missing += 1 - min(1, cur.rowcount)
        counts.add(plan.target.name, 0, cur.rowcount, 0)

    async def truncate(self, tables: Sequence[QualifiedName], *, restart_identity: bool) -> None:
        """Empty ``tables`` in the open transaction, as PostgreSQL's apply replays a
        TRUNCATE: one statement for them all (foreign keys among them do not stop it),
        a partitioned table with its partitions, never a CASCADE to other tables.

        A table referenced from a table outside that statement cannot be truncated; where
        the apply would stop for good, its rows are deleted instead (no foreign key action
        fires in this session), which leaves the target as the source: the referencing
        rows stay, as they did where the source truncated."""
        await self.begin()
        facts = await truncate_facts(self.conn, tables)
        together, blocked = facts.split(tables)
        if together:
            await self.conn.execute(
                sqlgen.truncate(
                    together, restart_identity=restart_identity, partitioned=facts.partitioned
                )
            )
        for name, ref in blocked.items():
            _log.warning(
                "truncate_as_delete",
                pipeline=self.pipeline,
                table=str(name),
                constraint=ref.constraint,
                referenced_by=str(ref.table),
            )
            await self.conn.execute(sqlgen.delete_all(name, partitioned=facts.partitioned))
            if restart_identity:
                for seq in await owned_sequences(self.conn, name):
                    await self.conn.execute(sqlgen.restart_sequence(seq))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected net change, as the apply would have written it (masked)."""

    operation: str
    key: dict[str, str | None]
    row: dict[str, str | None] | None
    old_key: dict[str, str | None] | None
    txn: Begin | None


def _staged_updates(entries: Iterable[Entry]) -> Iterator[tuple[Key, Row, Begin | None]]:
    """An update group's staging rows. An UPDATE entry always knows the key it finds its
    row by (only INSERT entries have none)."""
    for e in entries:
        assert e.old_key is not None
        yield e.old_key, e.values, e.txn


def _text(v: Datum) -> str | None:
    if v is None:
        return None
    if not isinstance(v, bytes):
        raise TypeError(f"cannot write a {type(v).__name__} value as text")
    return v.decode()


@dataclass(slots=True)
class Refused:
    """A row's first change the target refused in source order, with the row's later
    changes of the batch folded onto it (``absorbed``)."""

    part: TableBatch
    error: psycopg.Error
    absorbed: bool = False


def row_before(part: TableBatch) -> object:
    """The key by which a keyed table's change finds its row (none for other tables)."""
    if not part.log:
        return id(part)  # a table without a key: each change stands alone
    _, old, new, _ = part.in_order()[0]
    row = new if old is None else old
    assert row is not None  # a change without its old row has its new one
    return part.plan.key_of(row)


def row_after(part: TableBatch) -> object:
    """The key a keyed table's change leaves its row at (none for other tables)."""
    if not part.log:
        return id(part)
    op, old, new, _ = part.in_order()[-1]
    row = old if op == "D" else new
    assert row is not None  # a delete has its old row, any other change its new one
    return part.plan.key_of(row)


def absorb(parts: Sequence[TableBatch], refused: dict[object, Refused]) -> list[TableBatch]:
    """``parts`` without the changes of rows already refused: those fold, in order, onto
    the refused change of their row (which then follows the row to a moved key)."""
    kept: list[TableBatch] = []
    for p in parts:
        held = refused.pop(row_before(p), None)
        if held is None:
            kept.append(p)
            continue
        refused[row_after(p)] = Refused(TableBatch.merge([held.part, p]), held.error, True)
    return kept


def dead_letter_of(part: TableBatch) -> DeadLetter:
    """The single change in ``part`` as a dead letter. Values are the masked ones the
    plan produced; an unchanged TOAST value was never received and is left out."""
    plan = part.plan
    cols = plan.columns
    keycols = plan.key_columns

    def row_of(values: Sequence[Datum]) -> dict[str, str | None]:
        return {c: _text(v) for c, v in zip(cols, values, strict=True) if v is not UNCHANGED_TOAST}

    def key_of(values: Sequence[Datum]) -> dict[str, str | None]:
        return dict(zip(keycols, map(_text, plan.key_of(values)), strict=True))

    if part.log:
        # a keyed table's refused source changes of one row (a key move is one change,
        # not delete + insert): as one change from the first one's row to the last one's
        changes = part.in_order()
        first_op, first_old, first_new, _ = changes[0]
        op, old, new, txn = changes[-1]
        if op == "D":
            assert old is not None
            return DeadLetter("delete", key_of(old), None, None, txn)
        assert new is not None
        row, key = row_of(new), key_of(new)
        if first_op == "I":
            return DeadLetter("insert", key, row, None, txn)
        assert first_new is not None
        old_key = key_of(first_new if first_old is None else first_old)
        return DeadLetter("update", key, row, old_key, txn)
    if part.deleted:
        ((deleted_key, deleted_txn),) = part.deleted.items()
        return DeadLetter(
            "delete",
            dict(zip(keycols, map(_text, deleted_key), strict=True)),
            None,
            None,
            deleted_txn,
        )
    if part.rows:
        (entry,) = part.rows.values()
        row = row_of(entry.values)
        key = {c: row.get(c) for c in keycols}
        if entry.kind == UPDATE:
            old_key = dict(zip(keycols, map(_text, entry.old_key or ()), strict=True))
            return DeadLetter("update", key, row, old_key, entry.txn)
        return DeadLetter("insert", key, row, None, entry.txn)
    (ordered,) = part.ordered
    if ordered.op == "I":
        assert ordered.new is not None
        return DeadLetter("insert", {}, row_of(ordered.new), None, ordered.txn)
    assert ordered.old is not None
    old_row = row_of(ordered.old)
    if ordered.op == "U":
        assert ordered.new is not None
        return DeadLetter("update", {}, row_of(ordered.new), old_row, ordered.txn)
    return DeadLetter("delete", {}, None, old_row, ordered.txn)
