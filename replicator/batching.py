"""Folding: many source changes of one table become one net change per key.

Within a batch (whole source transactions, applied in one target transaction)
an insert, updates and a delete of the same key collapse into what the target
must end up with. The result is three sets that the apply runs in this order:

1. ``deleted``: keys (as of the batch start) whose row must go;
2. ``rows`` of kind UPDATE: change the row found at ``old_key`` (the key at the
   batch start) to the new values; columns whose TOAST value did not change are
   left out of that row's update, never overwritten;
3. ``rows`` of kind INSERT: full new rows.

Deleting first and inserting last keeps every fold correct when keys move
(``UPDATE ... SET id = ...``) or are reused (delete then insert). Tables whose
rows cannot be matched by a key keep their changes in source order instead.

Pure: no I/O. Values arrive already projected and masked by the table plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from replicator.errors import SchemaError
from replicator.mapping import TablePlan
from replicator.protocol.messages import UNCHANGED_TOAST, Datum

INSERT: Final = 0
UPDATE: Final = 1

Key = tuple[Datum, ...]


class Entry:
    """The net change of one key. ``old_key`` is where an UPDATE finds its row."""

    __slots__ = ("kind", "old_key", "values")

    def __init__(self, kind: int, values: list[Datum], old_key: Key | None) -> None:
        self.kind = kind
        self.values = values
        self.old_key = old_key

    def __repr__(self) -> str:
        return f"Entry({'INSERT' if self.kind == INSERT else 'UPDATE'}, old_key={self.old_key!r})"


@dataclass(slots=True)
class OrderedOp:
    """A change of a table without a usable key, applied in source order."""

    op: str  # "I", "U" or "D"
    old: list[Datum] | None
    new: list[Datum] | None


@dataclass(slots=True)
class TableBatch:
    plan: TablePlan
    rows: dict[Key, Entry] = field(default_factory=dict)
    deleted: dict[Key, None] = field(default_factory=dict)  # an ordered set
    ordered: list[OrderedOp] = field(default_factory=list)
    changes: int = 0

    def __bool__(self) -> bool:
        return bool(self.rows or self.deleted or self.ordered)

    # -- folding ---------------------------------------------------------------------

    def insert(self, row: list[Datum]) -> None:
        self.changes += 1
        if self.plan.mode != "keyed":
            self.ordered.append(OrderedOp("I", None, row))
            return
        self.rows[self.plan.key_of(row)] = Entry(INSERT, row, None)

    def update(self, old: list[Datum] | None, row: list[Datum]) -> None:
        self.changes += 1
        plan = self.plan
        if plan.mode != "keyed":
            if plan.mode == "insert_only" or old is None:
                raise SchemaError(
                    f"{plan.source}: UPDATE cannot be matched on the target: the table has no "
                    "replica identity key (set REPLICA IDENTITY FULL or add a primary key)"
                )
            self.ordered.append(OrderedOp("U", old, row))
            return
        key = plan.key_of(row)
        src = plan.key_of(old) if old is not None else key
        prev = self.rows.pop(src, None)
        if prev is None:
            self.rows[key] = Entry(UPDATE, row, src)
            return
        if UNCHANGED_TOAST in row:
            before = prev.values
            for i, v in enumerate(row):
                if v is UNCHANGED_TOAST:
                    row[i] = before[i]
        self.rows[key] = Entry(prev.kind, row, prev.old_key)

    def delete(self, old: list[Datum]) -> None:
        self.changes += 1
        plan = self.plan
        if plan.mode != "keyed":
            if plan.mode == "insert_only":
                raise SchemaError(
                    f"{plan.source}: DELETE cannot be matched on the target: the table has no "
                    "replica identity key (set REPLICA IDENTITY FULL or add a primary key)"
                )
            self.ordered.append(OrderedOp("D", old, None))
            return
        key = plan.key_of(old)
        prev = self.rows.pop(key, None)
        if prev is None:
            self.deleted[key] = None
        elif prev.kind == UPDATE:
            assert prev.old_key is not None
            self.deleted[prev.old_key] = None
        # an INSERT folded away: the row never existed before this batch

    # -- views for the apply ---------------------------------------------------------

    def inserts(self) -> list[list[Datum]]:
        return [e.values for e in self.rows.values() if e.kind == INSERT]

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

    def clear(self) -> None:
        self.rows.clear()
        self.deleted.clear()
        self.ordered.clear()
        self.changes = 0
