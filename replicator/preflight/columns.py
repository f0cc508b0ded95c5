"""Column and type compatibility, source -> target.

Values travel as text (pgoutput and COPY text), and the target parses them with its
column type's input function; so the rules reason about text forms, with the target's
pg_cast as the fallback for pairs they do not know. The rules are pure; the two readers at
the end query the catalogs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from psycopg import AsyncConnection, sql

from replicator.config import TableConfig
from replicator.masking import MaskSpec
from replicator.preflight.findings import Finding, Severity, show_ident
from replicator.query import fetch_one

# --- pure rules: column types ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's type as both sides' catalogs describe it (domains resolved)."""

    name: str
    type_schema: str  # base type
    type_name: str  # base type, pg_type.typname: int8, varchar, _int4, ...
    category: str  # pg_type.typcategory of the base type
    typmod: int  # of the base type (a domain's own typmod when the column has none)
    display: str  # format_type of the declared type, as a DBA wrote it
    not_null: bool = False
    has_default: bool = False
    generated: bool = False
    identity: bool = False
    sequence: str | None = None  # pg_get_serial_sequence: serial or identity
    enum_labels: tuple[str, ...] | None = None

    @property
    def max_chars(self) -> int | None:
        if self.type_name in ("varchar", "bpchar") and self.typmod > 4:
            return self.typmod - 4
        return None

    @property
    def qualified_type(self) -> str:
        return f"{self.type_schema}.{self.type_name}"


_INT_BYTES: Final = {"int2": 2, "int4": 4, "int8": 8}
_INT_RANGE: Final = {"int2": "±32767", "int4": "±2147483647", "int8": "±9.2e18"}
_INT_DIGITS: Final = {"int2": 5, "int4": 10, "int8": 19}
_FLOAT_BYTES: Final = {"float4": 4, "float8": 8}
_FRACTIONAL: Final = frozenset({"numeric", "float4", "float8", "money"})
# the longest text form of some fixed types, for bounded text targets
_TEXT_WIDTH: Final = {"bool": 1, "int2": 6, "int4": 11, "int8": 20, "uuid": 36, "date": 13}

# (severity, message, fix) of one source -> target column pair
TypeProblem = tuple[Severity, str, str]


def _numeric_precision(typmod: int) -> tuple[int, int] | None:
    if typmod < 4:
        return None
    v = typmod - 4
    return (v >> 16) & 0xFFFF, v & 0xFFFF


def compare_types(
    src: ColumnType, dst: ColumnType, cast_context: str | None, *, table: str = "<table>"
) -> TypeProblem | None:
    """Can every value of ``src`` land in ``dst``? Values travel as text and are parsed by
    the target type's input function, so what matters is the text forms, not binary casts.

    ``cast_context``: pg_cast.castcontext on the target from the source type to the target
    type ('i' implicit, 'a' assignment, 'e' explicit), None when there is no cast, or
    "missing" when the source type does not exist on the target.
    """
    s, d = src.type_name, dst.type_name
    alter = f"ALTER TABLE {table} ALTER COLUMN {show_ident(dst.name)} TYPE {src.display}"
    if src.qualified_type == dst.qualified_type:
        return _same_type(src, dst, alter)
    if d in _INT_BYTES:
        if s in _INT_BYTES and _INT_BYTES[s] > _INT_BYTES[d]:
            return (
                "error",
                f"{src.display} on the source, {dst.display} on the target: values outside "
                f"{_INT_RANGE[d]} fail on the target",
                alter,
            )
        if s in _FRACTIONAL:
            return (
                "error",
                f"{src.display} on the source, {dst.display} on the target: fractional values "
                "are not valid integers",
                alter,
            )
        if s in _INT_BYTES:
            return None  # widening
    if d in _FLOAT_BYTES:
        if s in _FLOAT_BYTES and _FLOAT_BYTES[s] > _FLOAT_BYTES[d]:
            return ("warning", f"{src.display} -> {dst.display}: precision is lost", alter)
        if s in {"numeric", "int8"}:
            return ("warning", f"{src.display} -> {dst.display}: large values lose digits", alter)
        if s in _INT_BYTES or s in _FLOAT_BYTES:
            return None
    if d == "numeric" and (s in _INT_BYTES or s in _FLOAT_BYTES):
        prec = _numeric_precision(dst.typmod)
        if prec is not None:
            digits = prec[0] - prec[1]
            if s in _FLOAT_BYTES or digits < _INT_DIGITS[s]:
                return (
                    "warning",
                    f"{src.display} -> {dst.display}: values with more than {digits} integer "
                    "digits fail on the target"
                    + (", and fractions are rounded" if s in _FLOAT_BYTES else ""),
                    alter,
                )
        return None
    if dst.category == "S":
        return _text_fits(src, dst, alter)
    if src.category == "S":
        return (
            "warning",
            f"{src.display} -> {dst.display}: every value must be valid {dst.display} input; "
            "the ones that are not become dead letters",
            alter,
        )
    pair = {s, d}
    if pair == {"json", "jsonb"}:
        return None
    if pair == {"timestamp", "timestamptz"}:
        return (
            "warning",
            f"{src.display} -> {dst.display}: the time zone is "
            + (
                "dropped (the offset in the text is ignored)"
                if d == "timestamp"
                else "taken from the target session's TimeZone"
            ),
            alter,
        )
    if s in ("timestamp", "timestamptz") and d == "date":
        return ("warning", f"{src.display} -> {dst.display}: the time of day is dropped", alter)
    if cast_context == "missing":
        return (
            "error",
            f"type {src.display} does not exist on the target (target column is {dst.display})",
            f"create the type on the target, or {alter}",
        )
    if cast_context == "i":
        return None
    if cast_context == "a":
        return (
            "warning",
            f"{src.display} -> {dst.display}: only an assignment cast exists; some values may "
            "not convert",
            alter,
        )
    return (
        "error",
        f"{src.display} on the source, {dst.display} on the target: no implicit or assignment "
        "cast between them, so source values are not valid target input",
        alter,
    )


def _same_type(src: ColumnType, dst: ColumnType, alter: str) -> TypeProblem | None:
    if src.typmod == dst.typmod:
        if src.category == "E" and src.enum_labels is not None and dst.enum_labels is not None:
            missing = [v for v in src.enum_labels if v not in dst.enum_labels]
            if missing:
                shown = ", ".join(repr(v) for v in missing[:5])
                return (
                    "error",
                    f"enum {src.display}: label(s) {shown} missing on the target",
                    f"ALTER TYPE {dst.display} ADD VALUE ... on the target for each",
                )
        return None
    if src.type_name in ("varchar", "bpchar"):
        return _text_fits(src, dst, alter)
    if src.type_name == "numeric":
        sp, dp = _numeric_precision(src.typmod), _numeric_precision(dst.typmod)
        if dp is None:
            return None  # unconstrained target takes anything
        if sp is None or sp[0] - sp[1] > dp[0] - dp[1]:
            return ("warning", f"{src.display} -> {dst.display}: large values fail", alter)
        if sp[1] > dp[1]:
            return ("warning", f"{src.display} -> {dst.display}: fractions are rounded", alter)
        return None
    if dst.typmod >= 0 and (src.typmod < 0 or dst.typmod < src.typmod):
        return ("warning", f"{src.display} -> {dst.display}: precision or length shrinks", alter)
    return None


def _text_fits(src: ColumnType, dst: ColumnType, alter: str) -> TypeProblem | None:
    limit = dst.max_chars
    if limit is None:
        return None
    longest = src.max_chars if src.category == "S" else _TEXT_WIDTH.get(src.type_name)
    if longest is not None and longest <= limit:
        return None
    return (
        "warning",
        f"{src.display} -> {dst.display}: values longer than {limit} characters fail on the "
        "target (they become dead letters)",
        f"widen the target column ({alter}), or mask/exclude the column",
    )


def _mask_fits(mask: MaskSpec, src: ColumnType, dst: ColumnType) -> TypeProblem | None:
    """What the table plan cannot refuse outright: a mask whose output has no bound (its
    input has none) going into a bounded column. A bound that is too small is the plan's
    error (``_check_fits`` in :mod:`replicator.mapping`)."""
    limit = dst.max_chars
    if limit is None or mask.kind == "null" or dst.category != "S":
        return None
    if mask.max_output_chars(src.max_chars if src.category == "S" else None) is not None:
        return None
    return (
        "warning",
        f"mask {mask} on {src.display} into {dst.display}: masked values longer than {limit} "
        "characters fail on the target (they become dead letters)",
        "widen the target column, or bound the source column",
    )


def column_findings(
    db: str,
    pipe: str,
    table: TableConfig,
    *,
    source: Sequence[ColumnType],
    target: Mapping[str, ColumnType],
    casts: Mapping[tuple[str, str], str | None],
    masks: Mapping[str, MaskSpec],
) -> list[Finding]:
    """Column by column: present on the target, types compatible, NOT NULL satisfiable.
    ``casts``: (source qualified type, target qualified type) -> cast context (see
    :func:`compare_types`). Masked columns are left to the table plan's fit checks."""
    out: list[Finding] = []
    tname = table.target_name
    written: set[str] = set()
    for col in source:
        if col.generated:
            continue  # pgoutput does not publish generated columns
        dest = table.target_column(col.name)
        if dest is None:
            continue
        tcol = target.get(dest)
        if tcol is None:
            out.append(
                Finding(
                    "error",
                    "column",
                    f"{db}:{tname}",
                    f"source column {table.source}.{col.name} has no target column {dest!r}",
                    f"ALTER TABLE {tname} ADD COLUMN {dest} {col.display}; or rename it with "
                    "`columns`, or `exclude` it",
                    pipe,
                )
            )
            continue
        written.add(dest)
        if tcol.generated:
            continue
        mask = masks.get(col.name)
        if mask is None or mask.kind == "plain":
            problem = compare_types(
                col, tcol, casts.get((col.qualified_type, tcol.qualified_type)), table=str(tname)
            )
        else:
            problem = _mask_fits(mask, col, tcol)
        if problem is not None:
            sev, msg, fix = problem
            out.append(Finding(sev, "type", f"{db}:{tname}.{dest}", msg, fix, pipe))
        if tcol.not_null and not col.not_null and (mask is None or mask.kind != "null"):
            out.append(
                Finding(
                    "warning",
                    "nullability",
                    f"{db}:{tname}.{dest}",
                    f"NOT NULL on the target, nullable on the source ({table.source}."
                    f"{col.name}): rows with NULL there fail (dead letters)",
                    f"ALTER TABLE {tname} ALTER COLUMN {dest} DROP NOT NULL, or make the "
                    "source column NOT NULL",
                    pipe,
                )
            )
    for name, tcol in target.items():
        if name in written or not tcol.not_null:
            continue
        if tcol.has_default or tcol.generated or tcol.identity:
            continue
        out.append(
            Finding(
                "error",
                "column",
                f"{db}:{tname}.{name}",
                "NOT NULL without a default on the target, and nothing from the source "
                "fills it: every insert fails",
                f"ALTER TABLE {tname} ALTER COLUMN {name} SET DEFAULT ..., or DROP NOT NULL, "
                "or map a source column to it with `columns`",
                pipe,
            )
        )
    return out


# --- I/O: reading the catalogs

_TYPES_SQL = """
WITH RECURSIVE base(attnum, typ, typmod, depth) AS (
    SELECT a.attnum, a.atttypid, a.atttypmod, 0
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT b.attnum, t.typbasetype, CASE WHEN b.typmod >= 0 THEN b.typmod ELSE t.typtypmod END,
           b.depth + 1
      FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.typ
     WHERE t.typtype = 'd'
)
SELECT a.attname, bn.nspname, bt.typname, bt.typcategory, b.typmod,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.atthasdef, a.attgenerated <> '', a.attidentity <> '',
       -- the sequence of a serial or identity column (by oid: no privileges needed)
       (SELECT pg_catalog.format('%%I.%%I', sn.nspname, sc.relname)
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S'
          JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
         WHERE d.classid = 'pg_catalog.pg_class'::regclass
           AND d.refclassid = 'pg_catalog.pg_class'::regclass
           AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
           AND d.deptype IN ('a', 'i')
         LIMIT 1),
       CASE WHEN bt.typtype = 'e' THEN
            array(SELECT e.enumlabel FROM pg_catalog.pg_enum e
                   WHERE e.enumtypid = bt.oid ORDER BY e.enumsortorder) END
  FROM pg_catalog.pg_attribute a
  JOIN LATERAL (SELECT typ, typmod FROM base WHERE base.attnum = a.attnum
                 ORDER BY depth DESC LIMIT 1) b ON true
  JOIN pg_catalog.pg_type bt ON bt.oid = b.typ
  JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
 WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


async def read_column_types(conn: AsyncConnection, oid: int) -> dict[str, ColumnType]:
    cur = await conn.execute(_TYPES_SQL, {"oid": oid})
    return {
        r[0]: ColumnType(
            name=r[0],
            type_schema=r[1],
            type_name=r[2],
            category=r[3],
            typmod=r[4],
            display=r[5],
            not_null=r[6],
            has_default=r[7],
            generated=r[8],
            identity=r[9],
            sequence=r[10],
            enum_labels=tuple(r[11]) if r[11] is not None else None,
        )
        for r in await cur.fetchall()
    }


async def cast_contexts(
    conn: AsyncConnection,
    source: Iterable[ColumnType],
    target: Mapping[str, ColumnType],
    table: TableConfig,
) -> dict[tuple[str, str], str | None]:
    """pg_cast on the target for every (source type, target type) pair that differs."""
    pairs = set()
    for col in source:
        dest = table.target_column(col.name)
        tcol = target.get(dest) if dest else None
        if tcol is not None and col.qualified_type != tcol.qualified_type:
            pairs.add((col, tcol))
    out: dict[tuple[str, str], str | None] = {}
    for col, tcol in pairs:
        src_t = sql.Identifier(col.type_schema, col.type_name).as_string(conn)
        dst_t = sql.Identifier(tcol.type_schema, tcol.type_name).as_string(conn)
        cur = await conn.execute(
            "SELECT to_regtype(%(s)s) IS NULL,"
            " (SELECT c.castcontext::text FROM pg_catalog.pg_cast c"
            "   WHERE c.castsource = to_regtype(%(s)s) AND c.casttarget = to_regtype(%(d)s))",
            {"s": src_t, "d": dst_t},
        )
        absent, context = await fetch_one(cur)
        out[(col.qualified_type, tcol.qualified_type)] = "missing" if absent else context
    return out
