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

Folding reorders: a table's net updates run in one statement, in no particular order.
Where the target has a UNIQUE index besides the key, a valid source history (a value
freed by one row and taken by another, a swap through a temporary value) can collide
halfway. So a keyed batch also keeps the ordered log of the changes it folded
(:attr:`TableBatch.log`: references to the rows it holds anyway), and
:meth:`TableBatch.split` / :meth:`TableBatch.merge` cut and refold that log in source
order: the apply replays a table the target refused piece by piece, and only a change
refused on its own, after every change before it, is judged bad.

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


# One change of a keyed table as folded: (op, old, new, txn). ``op`` is "I", "U" or "D";
# ``old`` is what update()/delete() received (None for an update that keeps its key),
# ``new`` the row as folded (unchanged TOAST values filled in from earlier in the batch).
Change = tuple[str, Row | None, Row | None, Begin | None]


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
    # keyed tables: the changes folded into rows/deleted, in source order. The rows still
    # in ``appended`` come after all of them (see :meth:`in_order`).
    log: list[Change] = field(default_factory=list)

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
            begin = self.ref.begin
            self.rows[self.plan.key_of(row)] = Entry(INSERT, row, None, begin)
            self.log.append(("I", None, row, begin))

    def _fold_appended(self) -> None:
        key_of = self.plan.key_of
        rows = self.rows
        log = self.log
        bounds = [*self.appended_txns, (len(self.appended), None)]
        for (start, begin), (stop, _) in pairwise(bounds):
            for row in self.appended[start:stop]:
                rows[key_of(row)] = Entry(INSERT, row, None, begin)
                log.append(("I", None, row, begin))
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
        else:
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
        self.log.append(("U", old, merged, txn))
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
        txn = self.ref.begin
        if prev is None:
            self.deleted[key] = txn
        elif prev.kind == UPDATE:
            assert prev.old_key is not None
            self.deleted[prev.old_key] = txn
        # an INSERT folded away: the row never existed before this batch
        self.log.append(("D", old, None, txn))

    def in_order(self) -> list[Change]:
        """Every change folded into this keyed batch, in source order."""
        if not self.appended:
            return self.log
        bounds = [*self.appended_txns, (len(self.appended), None)]
        tail = [
            ("I", None, row, begin)
            for (start, begin), (stop, _) in pairwise(bounds)
            for row in self.appended[start:stop]
        ]
        return self.log + tail

    def replay(self, changes: Sequence[Change]) -> None:
        """Fold ``changes`` (from :meth:`in_order`) again, each under its own transaction."""
        ref = self.ref
        for op, old, new, txn in changes:
            ref.begin = txn
            if op == "I":
                assert new is not None
                self.insert(new)
            elif op == "U":
                assert new is not None
                # a key move is logged only once every value is known: it always folds
                folded = self.update(old, new)
                assert folded
            else:
                assert old is not None
                self.delete(old)

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
            self.log,
        )
        self.rows, self.deleted, self.ordered, self.appended = {}, {}, [], []
        self.appended_txns = []
        self.log = []
        self.changes = 0
        return snap

    def split(self) -> list[TableBatch]:
        """Every source change on its own, in source order, for isolating the changes a
        target rejects. Applying the parts one after the other in this order is applying
        the source's history: a part the target refuses then is refused in its own right,
        not because folding moved it ahead of a change that made room for it."""
        parts: list[TableBatch] = []
        if self.plan.mode == "keyed":
            for change in self.in_order():
                tb = TableBatch(self.plan)
                tb.replay((change,))
                if tb.appended:
                    tb._fold_appended()  # the same shape as every other part: rows + log
                parts.append(tb)
        else:
            for op in self.ordered:
                tb = TableBatch(self.plan, ref=self.ref)
                tb.ordered.append(op)
                tb.changes = 1
                parts.append(tb)
        return parts

    @classmethod
    def merge(cls, parts: Sequence[TableBatch]) -> TableBatch:
        """Consecutive parts of one :meth:`split`, folded together again in order."""
        tb = TableBatch(parts[0].plan)
        if tb.plan.mode == "keyed":
            for p in parts:
                tb.replay(p.in_order())
        else:
            for p in parts:
                tb.ordered.extend(p.ordered)
                tb.changes += p.changes
        return tb

    def clear(self) -> None:
        self.appended = []
        self.appended_txns = []
        self.rows.clear()
        self.deleted.clear()
        self.ordered.clear()
        self.log = []
        self.changes = 0
