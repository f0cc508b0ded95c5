"""SQL for the apply, composed with :mod:`psycopg.sql` only, and the COPY text encoder.

Staging layout: one temporary table per target table, with positional column
names so no user column can clash with ours::

    _op "char"   'D' delete, 'U' update, 'I' insert
    _g  int4     update group: which columns an UPDATE leaves alone (unchanged TOAST)
    k0 .. kN     the old key (DELETE and UPDATE find their row by it)
    c0 .. cM     the target columns, in plan order

Staging columns use the base types of the target columns (domains resolved, no
typmod), so COPY parses each value once and the final INSERT/UPDATE applies the
target's own typmod and domain checks, exactly as an INSERT would.

Pure: builds statements and bytes, never executes anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from psycopg import sql

from replicator.config import QualifiedName
from replicator.mapping import TablePlan
from replicator.protocol.messages import UNCHANGED_TOAST, Datum

# --- COPY text format ---------------------------------------------------------------

NULL: Final = b"\\N"
_SPECIAL: Final = re.compile(rb"[\\\t\n\r]")
_ESCAPES: Final = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def _escape_match(m: re.Match[bytes]) -> bytes:
    return _ESCAPES[m.group()]


def copy_value(v: Datum) -> bytes:
    """One value in COPY text format. Unchanged TOAST is never written (callers leave
    those columns out); encoding it as NULL here only fills the staging slot."""
    if v is None or v is UNCHANGED_TOAST:
        return NULL
    if v.__class__ is not bytes:
        raise TypeError(f"cannot COPY a {type(v).__name__} value")
    if _SPECIAL.search(v) is None:  # type: ignore[arg-type]
        return v  # type: ignore[return-value]
    return _SPECIAL.sub(_escape_match, v)  # type: ignore[arg-type]


def copy_line(values: Iterable[Datum]) -> bytes:
    return b"\t".join(map(copy_value, values))


_NEEDS_ESCAPE: Final = re.compile(rb"[\\\n\r]").search


def copy_rows(rows: Iterable[Sequence[Datum]]) -> bytes:
    """Rows as one COPY text buffer.

    Most rows hold only plain text values: one C-level join, then one search for a
    backslash or line break and a tab count prove nothing needed escaping. Rows with
    NULLs (the join refuses None) or special characters take the per-value path."""
    out: list[bytes] = []
    append = out.append
    join = b"\t".join
    needs_escape = _NEEDS_ESCAPE
    for r in rows:
        try:
            line = join(r)  # type: ignore[arg-type]
        except TypeError:
            append(copy_line(r))
            continue
        if needs_escape(line) is not None or line.count(b"\t") != len(r) - 1:
            line = copy_line(r)
        append(line)
    if not out:
        return b""
    append(b"")
    return b"\n".join(out)


# --- identifiers ----------------------------------------------------------------------


def table_ident(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(name.schema, name.name)


def stage_name(plan: TablePlan) -> sql.Identifier:
    return sql.Identifier("pg_temp", f"replicator_stage_{plan.target.oid}")


def _k(i: int) -> sql.Identifier:
    return sql.Identifier(f"k{i}")


def _c(i: int) -> sql.Identifier:
    return sql.Identifier(f"c{i}")


def _type(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


# --- staging ----------------------------------------------------------------------------


def create_stage(plan: TablePlan) -> sql.Composed:
    cols = [sql.SQL('"_op" "char"'), sql.SQL('"_g" int4')]
    cols += [
        sql.SQL("{} {}").format(_k(n), _type(*plan.stage_types[pos]))
        for n, pos in enumerate(plan.key)
    ]
    cols += [sql.SQL("{} {}").format(_c(n), _type(*t)) for n, t in enumerate(plan.stage_types)]
    return sql.SQL(
        "DROP TABLE IF EXISTS {stage}; CREATE TEMP TABLE {stage} ({cols}) ON COMMIT DELETE ROWS"
    ).format(stage=stage_name(plan), cols=sql.SQL(", ").join(cols))


def copy_into_stage(plan: TablePlan) -> sql.Composed:
    return sql.SQL("COPY {} FROM STDIN").format(stage_name(plan))


def stage_lines(
    plan: TablePlan,
    deleted: Iterable[Sequence[Datum]],
    update_groups: Iterable[tuple[int, Iterable[tuple[Sequence[Datum], Sequence[Datum]]]]],
    inserts: Iterable[Sequence[Datum]],
) -> bytes:
    """Staging rows: deletes (old key), updates (group, old key, values), inserts."""
    nkey = len(plan.key)
    ncol = len(plan.columns)
    del_tail = b"\t" + b"\t".join([NULL] * ncol) if ncol else b""
    ins_head = b"I\t\\N" + b"\t\\N" * nkey
    out: list[bytes] = []
    for key in deleted:
        out.append(b"D\t\\N\t" + copy_line(key) + del_tail)
    for group, rows in update_groups:
        head = b"U\t" + str(group).encode() + b"\t"
        for old_key, values in rows:
            out.append(head + copy_line(old_key) + b"\t" + copy_line(values))
    for values in inserts:
        out.append(ins_head + b"\t" + copy_line(values) if ncol else ins_head)
    if not out:
        return b""
    out.append(b"")
    return b"\n".join(out)


def _match(plan: TablePlan, target_alias: str, stage_alias: str) -> sql.Composable:
    """``t.key = s.k<n>`` for every key column (text comparison where no equality exists)."""
    parts = []
    for n, pos in enumerate(plan.key):
        left = sql.SQL("{}.{}").format(
            sql.Identifier(target_alias), sql.Identifier(plan.columns[pos])
        )
        right = sql.SQL("{}.{}").format(sql.Identifier(stage_alias), _k(n))
        if plan.equality[pos]:
            parts.append(sql.SQL("{} = {}").format(left, right))
        else:
            parts.append(sql.SQL("{}::text = {}::text").format(left, right))
    return sql.SQL(" AND ").join(parts)


def delete_from_stage(plan: TablePlan) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} AS t USING {stage} AS s WHERE s._op = 'D' AND {match}").format(
        t=table_ident(plan.target.name), stage=stage_name(plan), match=_match(plan, "t", "s")
    )


def update_from_stage(plan: TablePlan, group: int, skip: Sequence[int]) -> sql.Composed:
    skipped = set(skip)
    sets = [
        sql.SQL("{} = s.{}").format(sql.Identifier(col), _c(i))
        for i, col in enumerate(plan.columns)
        if i not in skipped
    ]
    newer = sql.SQL("")
    if plan.conflict.rule == "newer_wins" and plan.conflict.column is not None:
        col = sql.Identifier(plan.conflict.column)
        staged = _c(plan.columns.index(plan.conflict.column))
        newer = sql.SQL(" AND (t.{c} IS NULL OR t.{c} <= s.{s})").format(c=col, s=staged)
    return sql.SQL(
        "UPDATE {t} AS t SET {sets} FROM {stage} AS s "
        "WHERE s._op = 'U' AND s._g = {g} AND {match}{newer}"
    ).format(
        t=table_ident(plan.target.name),
        sets=sql.SQL(", ").join(sets),
        stage=stage_name(plan),
        g=sql.Literal(group),
        match=_match(plan, "t", "s"),
        newer=newer,
    )


def insert_from_stage(plan: TablePlan) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    vals = sql.SQL(", ").join(sql.SQL("s.{}").format(_c(i)) for i in range(len(plan.columns)))
    return sql.SQL(
        "INSERT INTO {t} AS t ({cols}) SELECT {vals} FROM {stage} AS s WHERE s._op = 'I'{tail}"
    ).format(
        t=table_ident(plan.target.name),
        cols=cols,
        vals=vals,
        stage=stage_name(plan),
        tail=on_conflict(plan),
    )


def on_conflict(plan: TablePlan) -> sql.Composable:
    """The conflict clause of an insert, per the table's conflict rule."""
    if not plan.conflict_index:
        return sql.SQL("")
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in plan.key_columns)
    key_set = set(plan.key)
    others = [c for i, c in enumerate(plan.columns) if i not in key_set]
    if plan.conflict.rule == "target_wins" or not others:
        return sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(keys)
    sets = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others
    )
    clause = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(keys, sets)
    if plan.conflict.rule == "newer_wins":
        col = sql.Identifier(plan.conflict.column or "")
        clause = sql.SQL("{} WHERE t.{} IS NULL OR t.{} <= EXCLUDED.{}").format(
            clause, col, col, col
        )
    return clause


def truncate_stage(plan: TablePlan) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(stage_name(plan))


def copy_direct(plan: TablePlan) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        table_ident(plan.target.name), sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    )


def truncate(tables: Sequence[QualifiedName], *, restart_identity: bool) -> sql.Composed:
    return sql.SQL("TRUNCATE ONLY {}{}").format(
        sql.SQL(", ").join(table_ident(t) for t in tables),
        sql.SQL(" RESTART IDENTITY" if restart_identity else ""),
    )


# --- single rows (REPLICA IDENTITY FULL without a key, key moves with unknown TOAST) ----
# Values go in as literals, not %s parameters: a parameter marker would also be read out
# of an identifier such as "pct%", and these statements run one row at a time anyway.


def _text_literal(v: Datum) -> sql.Composable:
    if v is None:
        return sql.NULL
    return sql.Literal(v.decode())  # type: ignore[union-attr]


def _typed(plan: TablePlan, i: int, v: Datum) -> sql.Composable:
    return sql.SQL("CAST({} AS {})").format(_text_literal(v), _type(*plan.stage_types[i]))


def _row_match(plan: TablePlan, old: Sequence[Datum]) -> sql.Composable:
    parts = []
    for i, col in enumerate(plan.columns):
        v = old[i]
        if v is UNCHANGED_TOAST:
            continue
        ident = sql.Identifier(col)
        if plan.equality[i]:
            parts.append(sql.SQL("{} IS NOT DISTINCT FROM {}").format(ident, _typed(plan, i, v)))
        else:
            parts.append(
                sql.SQL("{}::text IS NOT DISTINCT FROM {}::text").format(ident, _text_literal(v))
            )
    return sql.SQL(" AND ").join(parts)


def _key_match(plan: TablePlan, key: Sequence[Datum]) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(plan.columns[pos]), _typed(plan, pos, v))
        if plan.equality[pos]
        else sql.SQL("{}::text = {}::text").format(
            sql.Identifier(plan.columns[pos]), _text_literal(v)
        )
        for pos, v in zip(plan.key, key, strict=True)
    )


def _sets(plan: TablePlan, new: Sequence[Datum]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(col), _typed(plan, i, new[i]))
        for i, col in enumerate(plan.columns)
        if new[i] is not UNCHANGED_TOAST
    )


def delete_one_row(plan: TablePlan, old: Sequence[Datum]) -> sql.Composed:
    """Delete exactly one row equal to ``old``, even among identical duplicates."""
    t = table_ident(plan.target.name)
    return sql.SQL("DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} WHERE {w} LIMIT 1)").format(
        t=t, w=_row_match(plan, old)
    )


def update_one_row(plan: TablePlan, old: Sequence[Datum], new: Sequence[Datum]) -> sql.Composed:
    t = table_ident(plan.target.name)
    return sql.SQL(
        "UPDATE {t} SET {s} WHERE ctid = (SELECT ctid FROM {t} WHERE {w} LIMIT 1)"
    ).format(t=t, s=_sets(plan, new), w=_row_match(plan, old))


def update_by_key(plan: TablePlan, old_key: Sequence[Datum], new: Sequence[Datum]) -> sql.Composed:
    """One keyed update, for a key move whose unchanged TOAST values we do not hold."""
    return sql.SQL("UPDATE {t} AS t SET {s} WHERE {w}{cond}").format(
        t=table_ident(plan.target.name),
        s=_sets(plan, new),
        w=_key_match(plan, old_key),
        cond=_newer_condition(plan, new),
    )


def _newer_condition(plan: TablePlan, new: Sequence[Datum]) -> sql.Composable:
    if plan.conflict.rule != "newer_wins" or plan.conflict.column is None:
        return sql.SQL("")
    pos = plan.columns.index(plan.conflict.column)
    col = sql.Identifier(plan.conflict.column)
    return sql.SQL(" AND (t.{c} IS NULL OR t.{c} <= {v})").format(
        c=col, v=_typed(plan, pos, new[pos])
    )
