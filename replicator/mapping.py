"""Table plans: how one source relation lands in its target table.

A :class:`TablePlan` is compiled once per ``Relation`` message from three
inputs: the relation as the source described it, the table's config (renames,
exclusions, masks, conflict rule) and facts read from the target catalog
(:class:`TargetTable`). The hot path then only calls :meth:`TablePlan.project`
and :meth:`TablePlan.key_of`: plain tuple picks and mask calls.

Pure: no I/O. Errors name the pipeline's source table and the column at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, Literal

from replicator.config import Conflict, QualifiedName, TableConfig
from replicator.errors import MaskingError, SchemaError
from replicator.masking import MaskFn, MaskingKey, MaskSpec, compile_mask, resolve_masks
from replicator.protocol.messages import BinaryDatum, Column, Datum, Relation, TupleData


@dataclass(frozen=True, slots=True)
class TargetColumn:
    name: str
    type_schema: str  # base type (domains resolved): what the staging table uses
    type_name: str
    not_null: bool
    generated: bool
    max_chars: int | None  # varchar(n)/char(n) limit, for mask fit checks
    type_category: str  # pg_type.typcategory of the base type ('S' = string)
    # the base type has a default equality operator (catalog.py asks the server); rows
    # are matched on the text of the others (json, jsonpath, xml, point, ...)
    has_equality: bool


@dataclass(frozen=True, slots=True)
class TargetTable:
    """What the apply needs to know about a target table, read from its catalog."""

    name: QualifiedName
    oid: int
    columns: Mapping[str, TargetColumn]
    unique_keys: tuple[frozenset[str], ...]  # column sets of usable unique indexes
    primary_key: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ForeignKeyRef:
    """Constraint ``constraint`` on ``table`` references ``references``."""

    constraint: str
    table: QualifiedName
    references: QualifiedName


@dataclass(frozen=True, slots=True)
class TruncateFacts:
    partitioned: frozenset[QualifiedName]
    references: tuple[ForeignKeyRef, ...]

    def split(
        self, tables: Sequence[QualifiedName]
    ) -> tuple[list[QualifiedName], dict[QualifiedName, ForeignKeyRef]]:
        """The tables one TRUNCATE can take together, and those it cannot, each with a
        constraint from a table outside that TRUNCATE (PostgreSQL refuses to truncate a
        table referenced from a table it does not truncate too). Leaving a table out can
        leave out what it references in turn: repeated until nothing changes."""
        keep = list(dict.fromkeys(tables))
        blocked: dict[QualifiedName, ForeignKeyRef] = {}
        while True:
            inside = set(keep)
            found = {
                ref.references: ref
                for ref in reversed(self.references)
                if ref.references in inside and ref.table not in inside
            }
            if not found:
                return keep, blocked
            for name, ref in found.items():
                blocked.setdefault(name, ref)
            keep = [t for t in keep if t not in found]


ApplyMode = Literal["keyed", "full_row", "insert_only"]


@dataclass(frozen=True, slots=True)
class TablePlan:
    relation_id: int
    source: QualifiedName
    target: TargetTable
    columns: tuple[str, ...]  # target columns written, in row order
    source_columns: tuple[str, ...]  # the source columns they come from, same order
    stage_types: tuple[tuple[str, str], ...]  # staging column types (schema, name)
    key: tuple[int, ...]  # positions of key columns within ``columns``
    mode: ApplyMode
    conflict_index: bool  # an ON CONFLICT target exists for ``key``
    conflict: Conflict
    # newer_wins ties: True when the incoming row wins (this pipeline has the priority)
    tie_source_wins: bool
    # the target tracks commit timestamps: target_wins can tell a row changed locally
    # after the incoming change from one that was not (last writer wins)
    commit_timestamps: bool
    masked: frozenset[str]  # target columns that carry a lossy or hashed mask
    # two-way tables: positions of the columns the reverse pipeline does not carry back.
    # This pipeline alone writes them, so an incoming row that loses its conflict still
    # brings them (otherwise a masked or excluded column would never converge)
    one_way: tuple[int, ...]
    equality: tuple[bool, ...]  # per column: compare typed (True) or as text (False)
    _pick: Callable[[TupleData], tuple[Datum, ...]] = field(repr=False)
    _key: Callable[[Sequence[Datum]], tuple[Datum, ...]] = field(repr=False)
    _masks: tuple[tuple[int, MaskFn], ...] = field(repr=False)
    _identity: bool = field(default=False, repr=False)  # every source column, in order
    # target columns that carry a `hash` mask: re-copied when the key changes
    hashed: frozenset[str] = frozenset()

    @property
    def masks(self) -> tuple[tuple[int, MaskFn], ...]:
        """(position in the target row, compiled mask) for every masked column."""
        return self._masks

    def mask_row(self, row: list[Datum]) -> list[Datum]:
        """Apply the masks to a row already in target order (the initial copy's rows)."""
        for pos, fn in self._masks:
            v = row[pos]
            if v.__class__ is bytes:
                row[pos] = fn(v)
        return row

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(self.columns[i] for i in self.key)

    def project(self, tup: TupleData) -> Sequence[Datum]:
        """Source tuple -> target-ordered values, masks applied. NULL and unchanged
        TOAST pass through every mask untouched. The result may be the input tuple
        itself (no masks, columns one to one): treat it as read-only."""
        if not self._masks:
            return tup if self._identity else self._pick(tup)
        row = list(self._pick(tup))
        for pos, fn in self._masks:
            v = row[pos]
            if v.__class__ is bytes:
                row[pos] = fn(v)
            elif v.__class__ is BinaryDatum:
                raise MaskingError(
                    f"{self.source}.{self.columns[pos]}: binary value cannot be masked"
                )
        return row

    def key_of(self, row: Sequence[Datum]) -> tuple[Datum, ...]:
        return self._key(row)


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[Datum]], tuple[Datum, ...]]:
    if not indexes:
        return lambda _row: ()
    if len(indexes) == 1:
        i = indexes[0]
        return lambda row: (row[i],)
    return itemgetter(*indexes)


def build_plan(
    relation: Relation,
    table: TableConfig,
    target: TargetTable,
    *,
    global_masks: Mapping[str, MaskSpec],
    unclassified: Literal["allow", "deny"],
    hash_key: MaskingKey | None,
    tie_source_wins: bool = True,
    commit_timestamps: bool = False,
    returned: TableConfig | None = None,
) -> TablePlan:
    """``returned``: the reverse pipeline's entry for this table when it is two-way."""
    src = QualifiedName(relation.namespace or "pg_catalog", relation.relation_name)
    rel_cols = [c.name for c in relation.columns]
    where = f"{src} -> {target.name}"

    try:
        specs = resolve_masks(f"{src.schema}.{src.name}", rel_cols, table.mask, global_masks)
    except ValueError as exc:
        raise MaskingError(f"{where}: {exc}") from None

    if unclassified == "deny":
        for name in rel_cols:
            if name not in specs and name not in table.exclude:
                raise MaskingError(
                    f"{where}: column {name!r} has no mask and is not listed as plain "
                    "(masking.unclassified = 'deny'); classify it or exclude it"
                )

    picks: list[int] = []
    columns: list[str] = []
    by_source: dict[str, int] = {}
    for i, col in enumerate(relation.columns):
        dest = table.target_column(col.name)
        if dest is None:
            continue
        tcol = target.columns.get(dest)
        if tcol is None:
            raise SchemaError(
                f"{where}: source column {col.name!r} has no target column {dest!r} "
                "(add the column, rename it with `columns`, or `exclude` it)"
            )
        if tcol.generated:
            continue  # generated target columns are computed there, never written
        by_source[col.name] = len(columns)
        picks.append(i)
        columns.append(dest)

    # --- key -----------------------------------------------------------------------
    mode: ApplyMode
    if table.key is not None:
        key_src = list(table.key)
        missing = [k for k in key_src if k not in by_source]
        if missing:
            raise SchemaError(f"{where}: key column(s) {missing} are not replicated")
        mode = "keyed"
    elif relation.replica_identity in ("d", "i") and any(c.is_key for c in relation.columns):
        key_src = [c.name for c in relation.columns if c.is_key]
        for k in key_src:
            if k not in by_source:
                raise SchemaError(
                    f"{where}: replica identity column {k!r} is excluded or has no target "
                    "column; rows could not be matched"
                )
        mode = "keyed"
    elif relation.replica_identity == "f":
        key_src = _key_from_target(target, table, by_source)
        mode = "keyed" if key_src else "full_row"
    else:
        key_src = []
        mode = "insert_only"
    key = tuple(by_source[k] for k in key_src)
    key_targets = frozenset(columns[i] for i in key)
    conflict_index = bool(key) and key_targets in target.unique_keys

    if table.conflict.column is not None and table.conflict.column not in columns:
        raise SchemaError(
            f"{where}: conflict column {table.conflict.column!r} is not a replicated column"
        )

    one_way: tuple[int, ...] = ()
    if returned is not None and table.conflict.rule == "newer_wins":
        one_way = tuple(
            i
            for i, col in enumerate(columns)
            if returned.target_column(col) is None and i not in key and col != table.conflict.column
        )

    # --- masks -----------------------------------------------------------------------
    masks: list[tuple[int, MaskFn]] = []
    masked: set[str] = set()
    hashed: set[str] = set()
    unique_cols = set().union(*target.unique_keys) if target.unique_keys else set()
    for name, spec in specs.items():
        if spec.kind == "plain" or name not in by_source:
            continue
        pos = by_source[name]
        dest = columns[pos]
        if spec.lossy and (dest in key_targets or dest in unique_cols):
            raise MaskingError(
                f"{where}: lossy mask {spec} on key or unique column {dest!r} would merge "
                "distinct rows; use `hash`, which keeps them distinct"
            )
        _check_fits(where, spec, relation.columns[picks[pos]], target.columns[dest])
        try:
            fn = compile_mask(spec, hash_key)
        except MaskingError as exc:
            raise MaskingError(f"{where}.{name}: {exc}") from None
        masks.append((pos, fn))
        masked.add(dest)
        if spec.kind == "hash":
            hashed.add(dest)

    tcols = [target.columns[c] for c in columns]
    return TablePlan(
        relation_id=relation.relation_id,
        source=src,
        target=target,
        columns=tuple(columns),
        source_columns=tuple(relation.columns[i].name for i in picks),
        stage_types=tuple((c.type_schema, c.type_name) for c in tcols),
        key=key,
        mode=mode,
        conflict_index=conflict_index,
        conflict=table.conflict,
        tie_source_wins=tie_source_wins,
        commit_timestamps=commit_timestamps,
        masked=frozenset(masked),
        one_way=one_way,
        equality=tuple(c.has_equality for c in tcols),
        _pick=_picker(picks),
        _key=_picker(key),
        _masks=tuple(masks),
        hashed=frozenset(hashed),
        _identity=picks == list(range(len(relation.columns))),
    )


_CHAR_TYPE_OIDS: Final = frozenset({1042, 1043})  # bpchar, varchar: typmod = length + 4


def _check_fits(where: str, spec: MaskSpec, source: Column, target: TargetColumn) -> None:
    """A mask's output must be something the target column can hold."""
    dest = target.name
    if spec.kind == "null":
        if target.not_null:
            raise MaskingError(
                f"{where}: mask `null` on column {dest!r}, which is NOT NULL on the target"
            )
        return
    if target.type_category != "S":
        raise MaskingError(
            f"{where}: mask {spec} writes text, but target column {dest!r} is of type "
            f"{target.type_name}; use `null`, or a text column"
        )
    src_max = (
        source.type_modifier - 4
        if source.type_id in _CHAR_TYPE_OIDS and source.type_modifier > 4
        else None
    )
    out_max = spec.max_output_chars(src_max)
    if target.max_chars is not None and out_max is not None and out_max > target.max_chars:
        raise MaskingError(
            f"{where}: mask {spec} writes up to {out_max} characters, but target column "
            f"{dest!r} holds {target.max_chars}"
        )


def _key_from_target(
    target: TargetTable, table: TableConfig, by_source: Mapping[str, int]
) -> list[str]:
    """With REPLICA IDENTITY FULL every column is flagged; use the target's primary key
    (or a unique key) when all of its columns come from the source."""
    reverse = {table.target_column(s): s for s in by_source}
    candidates = []
    if target.primary_key:
        candidates.append(target.primary_key)
    candidates.extend(tuple(sorted(k)) for k in target.unique_keys)
    for cand in candidates:
        if all(c in reverse for c in cand):
            return [reverse[c] for c in cand]
    return []
