"""Folding: many source changes of one table become one net change per key.

Within a batch (whole source transactions, applied in one target transaction)
an insert, updates and a delete of the same key collapse into what the target
must end up with. The result is three sets that the apply runs in this order:

1. ``deleted``: keys (as of the batch start) whose row must go;
2. ``rows`` of kind UPDATE: change the row found at its key to the new values;
   columns whose TOAST value did not change are left out of that row's update,
   never overwritten;
3. ``rows`` of kind INSERT: full new rows.

A key move (``UPDATE ... SET id = ...``) folds into a delete of the old key and an
insert of the new row; deleting first and inserting last keeps moves that swap
keys and keys reused after a delete from colliding halfway. A key move whose
unchanged TOAST values we never received cannot be folded: :meth:`TableBatch.update`
returns False and the caller applies it alone, in order. Tables whose rows cannot
be matched by a key keep their changes in source order instead.

Pure: no I/O. Values arrive already projected and masked by the table plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

from replicator.errors import SchemaError
from replicator.mapping import TablePlan
from replicator.protocol.messages import UNCHANGED_TOAST, Begin, Datum

INSERT: Final = 0
UPDATE: Final = 1

Key = tuple[Datum, ...]
Row = Sequence[Datum]  # read-only: may be the decoded tuple itself


class TxnRef:
    """The source transaction being folded, shared by the batches of one pipeline: the
    pipeline sets it once per chunk, folds record it, dead letters report it."""

    __slots__ = ("begin",)

    def __init__(self, begin: Begin | None = None) -> None:
        self.begin = begin


class Entry:
    """The net change of one key. ``old_key`` is where an UPDATE finds its row;
    ``txn`` is the Begin of the last source transaction that changed it."""

    __slots__ = ("kind", "old_key", "txn", "values")

    def __init__(
        self, kind: int, values: Row, old_key: Key | None, txn: Begin | None = None
    ) -> None:
        self.kind = kind
        self.values = values
        self.old_key = old_key
        self.txn = txn

    def __repr__(self) -> str:
        return f"Entry({'INSERT' if self.kind == INSERT else 'UPDATE'}, old_key={self.old_key!r})"


@dataclass(slots=True)
class OrderedOp:
    """A change of a table without a usable key, applied in source order."""

    op: str  # "I", "U" or "D"
    old: Row | None
    new: Row | None
    txn: Begin | None = None


@dataclass(slots=True)
class TableBatch:
    plan: TablePlan
    rows: dict[Key, Entry] = field(default_factory=dict)
    # keys to delete (in order) -> the source transaction that deleted them
    deleted: dict[Key, Begin | None] = field(default_factory=dict)
    ordered: list[OrderedOp] = field(default_factory=list)
    # Inserts not folded yet. While a batch only inserts, keys are unique (the source
    # enforces it) and nothing needs folding; the first update or delete folds them.
    appended: list[Row] = field(default_factory=list)
    changes: int = 0
    ref: TxnRef = field(default_factory=TxnRef)
    # (index into appended, Begin) where the source transaction changes: cheap per row
    appended_txns: list[tuple[int, Begin | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.appended or self.rows or self.deleted or self.ordered)

    # -- folding ---------------------------------------------------------------------

    def insert(self, row: Row) -> None:
        self.changes += 1
        if self.plan.mode != "keyed":
            self.ordered.append(OrderedOp("I", None, row, self.ref.begin))
        elif not self.rows and not self.deleted:
            begin = self.ref.begin
            if not self.appended_txns or self.appended_txns[-1][1] is not begin:
                self.appended_txns.append((len(self.appended), begin))
            self.appended.append(row)
        else:
            self.rows[self.plan.key_of(row)] = Entry(INSERT, row, None, self.ref.begin)

    def appended_txn(self, index: int) -> Begin | None:
        """The source transaction of ``appended[index]``."""
        found = None
        for start, begin in self.appended_txns:
            if start > index:
                break
            found = begin
        return found

    def _fold_appended(self) -> None:
        key_of = self.plan.key_of
        rows = self.rows
        for i, row in enumerate(self.appended):
            rows[key_of(row)] = Entry(INSERT, row, None, self.appended_txn(i))
        self.appended.clear()
        self.appended_txns.clear()

    def update(self, old: Row | None, row: Row) -> bool:
        """Fold an update. False when it cannot be folded: a key move whose unchanged TOAST
        values we do not hold. The caller then applies what is folded, and this update
        alone, in source order."""
        self.changes += 1
        plan = self.plan
        if self.appended:
            self._fold_appended()
        if plan.mode != "keyed":
            if plan.mode == "insert_only" or old is None:
                raise SchemaError(
                    f"{plan.source}: UPDATE cannot be matched on the target: the table has no "
                    "replica identity key (set REPLICA IDENTITY FULL or add a primary key)"
                )
            self.ordered.append(OrderedOp("U", old, row, self.ref.begin))
            return True
        key = plan.key_of(row)
        src = plan.key_of(old) if old is not None else key
        prev = self.rows.pop(src, None)
        merged = row
        if prev is not None and UNCHANGED_TOAST in row:
            before = prev.values
            merged = [before[i] if v is UNCHANGED_TOAST else v for i, v in enumerate(row)]
        txn = self.ref.begin
        if prev is not None and prev.kind == INSERT:
            self.rows[key] = Entry(INSERT, merged, None, txn)  # still an insert, new values
            return True
        base = prev.old_key if prev is not None else src
        if key == base:
            self.rows[key] = Entry(UPDATE, merged, base, txn)
        elif UNCHANGED_TOAST not in merged:
            # a key move with every value known: delete + insert. Deletes run first and
            # inserts last, so moves that swap keys never collide halfway.
            assert base is not None
            self.deleted[base] = txn
            self.rows[key] = Entry(INSERT, merged, None, txn)
        else:
            if prev is not None:
                self.rows[src] = prev  # undo: the caller flushes it before this update
            self.changes -= 1
            return False
        return True

    def delete(self, old: Row) -> None:
        self.changes += 1
        plan = self.plan
        if self.appended:
            self._fold_appended()
        if plan.mode != "keyed":
            if plan.mode == "insert_only":
                raise SchemaError(
                    f"{plan.source}: DELETE cannot be matched on the target: the table has no "
                    "replica identity key (set REPLICA IDENTITY FULL or add a primary key)"
                )
            self.ordered.append(OrderedOp("D", old, None, self.ref.begin))
            return
        key = plan.key_of(old)
        prev = self.rows.pop(key, None)
        if prev is None:
            self.deleted[key] = self.ref.begin
        elif prev.kind == UPDATE:
            assert prev.old_key is not None
            self.deleted[prev.old_key] = self.ref.begin
        # an INSERT folded away: the row never existed before this batch

    # -- views for the apply ---------------------------------------------------------

    def inserts(self) -> list[Row]:
        if not self.rows:
            return self.appended
        return [e.values for e in self.rows.values() if e.kind == INSERT] + self.appended

    def insert_items(self) -> list[tuple[Row, Begin | None]]:
        """Inserts with the source transaction each comes from (for the staged path)."""
        items = [(e.values, e.txn) for e in self.rows.values() if e.kind == INSERT]
        if self.appended:
            bounds = [*self.appended_txns, (len(self.appended), None)]
            for (start, begin), (stop, _) in pairwise(bounds):
                items.extend((row, begin) for row in self.appended[start:stop])
        return items

    def update_groups(self) -> dict[tuple[int, ...], list[Entry]]:
        """UPDATE entries grouped by the positions they leave alone (unchanged TOAST)."""
        groups: dict[tuple[int, ...], list[Entry]] = {}
        for e in self.rows.values():
            if e.kind != UPDATE:
                continue
            vals = e.values
            skip = (
                tuple(i for i, v in enumerate(vals) if v is UNCHANGED_TOAST)
                if UNCHANGED_TOAST in vals
                else ()
            )
            groups.setdefault(skip, []).append(e)
        return groups

    def take(self) -> TableBatch:
        """Hand over everything folded so far and start empty: the snapshot can be applied
        in the background while new changes fold here."""
        snap = TableBatch(
            self.plan,
            self.rows,
            self.deleted,
            self.ordered,
            self.appended,
            self.changes,
            self.ref,
            self.appended_txns,
        )
        self.rows, self.deleted, self.ordered, self.appended = {}, {}, [], []
        self.appended_txns = []
        self.changes = 0
        return snap

    def split(self) -> list[TableBatch]:
        """Every net change on its own, for isolating the rows a target rejects. The
        changes of different keys are independent, so any subset applies on its own."""
        parts: list[TableBatch] = []

        def part() -> TableBatch:
            tb = TableBatch(self.plan, ref=self.ref)
            parts.append(tb)
            return tb

        for key, txn in self.deleted.items():
            part().deleted[key] = txn
        for key, e in self.rows.items():
            part().rows[key] = e
        for i, row in enumerate(self.appended):
            part().rows[self.plan.key_of(row) if self.plan.key else (i,)] = Entry(
                INSERT, row, None, self.appended_txn(i)
            )
        for op in self.ordered:
            part().ordered.append(op)
        for tb in parts:
            tb.changes = 1
        return parts

    @classmethod
    def merge(cls, parts: Sequence[TableBatch]) -> TableBatch:
        tb = TableBatch(parts[0].plan, ref=parts[0].ref)
        for p in parts:
            tb.deleted.update(p.deleted)
            tb.rows.update(p.rows)
            tb.ordered.extend(p.ordered)
            tb.changes += p.changes
        return tb

    def clear(self) -> None:
        self.appended = []
        self.appended_txns = []
        self.rows.clear()
        self.deleted.clear()
        self.ordered.clear()
        self.changes = 0
