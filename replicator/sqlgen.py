"""SQL for the apply, composed with :mod:`psycopg.sql` only, and the COPY text encoder.

Staging layout: one temporary table per target table, with positional column
names so no user column can clash with ours::

    _op "char"   'D' delete, 'U' update, 'I' insert
    _g  int4     update group: which columns an UPDATE leaves alone (unchanged TOAST)
    _lsn pg_lsn  commit LSN of the source transaction the change comes from
    _ts int8     its commit time (microseconds since 2000-01-01), for the conflict log
    k0 .. kN     the old key (DELETE and UPDATE find their row by it)
    c0 .. cM     the target columns, in plan order

Staging columns use the base types of the target columns (domains resolved, no
typmod), so COPY parses each value once and the final INSERT/UPDATE applies the
target's own typmod and domain checks, exactly as an INSERT would.

Pure: builds statements and bytes, never executes anything.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Final

from psycopg import sql

from replicator.config import QualifiedName
from replicator.mapping import TablePlan
from replicator.protocol.messages import UNCHANGED_TOAST, Begin, Datum

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
    if _SPECIAL.search(v) is None:
        return v
    return _SPECIAL.sub(_escape_match, v)


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
            line = join(r)  # type: ignore[arg-type]  # a None or marker raises TypeError
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


def _distinct(
    plan: TablePlan, pos: int, left: sql.Composable, right: sql.Composable
) -> sql.Composable:
    """``left IS DISTINCT FROM right`` for column ``pos``; on the text of a type without a
    default equality operator (json, jsonpath, ...), which has no ``=`` to call."""
    if plan.equality[pos]:
        return sql.SQL("{} IS DISTINCT FROM {}").format(left, right)
    return sql.SQL("{}::text IS DISTINCT FROM {}::text").format(left, right)


def _type(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


# --- staging ----------------------------------------------------------------------------


_PG_EPOCH: Final = sql.SQL("timestamptz '2000-01-01 00:00:00+00'")


def _stage_time(alias: str) -> sql.Composable:
    """A staged row's source commit time (``_ts``, microseconds since 2000) as timestamptz."""
    return sql.SQL("{e} + {a}._ts * interval '1 microsecond'").format(
        e=_PG_EPOCH, a=sql.Identifier(alias)
    )


def create_stage(plan: TablePlan) -> sql.Composed:
    cols: list[sql.Composable] = [
        sql.SQL('"_op" "char"'),
        sql.SQL('"_g" int4'),
        sql.SQL('"_lsn" pg_lsn'),
        sql.SQL('"_ts" int8'),
    ]
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


TxnInfo = Begin | None  # the source transaction a staged row comes from


def stage_lines(
    plan: TablePlan,
    deleted: Iterable[tuple[Sequence[Datum], TxnInfo]],
    update_groups: Iterable[tuple[int, Iterable[tuple[Sequence[Datum], Sequence[Datum], TxnInfo]]]],
    inserts: Iterable[tuple[Sequence[Datum], TxnInfo]],
) -> bytes:
    """Staging rows: deletes (old key), updates (group, old key, values), inserts; each
    with the commit LSN and time of its source transaction."""
    nkey = len(plan.key)
    ncol = len(plan.columns)
    del_tail = b"\t" + b"\t".join([NULL] * ncol) if ncol else b""
    no_key = b"\t\\N" * nkey
    origin: dict[int, bytes] = {}

    def txn(begin: TxnInfo) -> bytes:
        if begin is None:
            return b"\\N\t\\N"
        cached = origin.get(id(begin))
        if cached is None:
            cached = f"{begin.final_lsn}\t{begin.commit_time}".encode()
            origin[id(begin)] = cached
        return cached

    out: list[bytes] = []
    for key, begin in deleted:
        out.append(b"D\t\\N\t" + txn(begin) + b"\t" + copy_line(key) + del_tail)
    for group, rows in update_groups:
        head = b"U\t" + str(group).encode() + b"\t"
        for old_key, values, begin in rows:
            out.append(head + txn(begin) + b"\t" + copy_line(old_key) + b"\t" + copy_line(values))
    for values, begin in inserts:
        line = b"I\t\\N\t" + txn(begin) + no_key
        out.append(line + b"\t" + copy_line(values) if ncol else line)
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
    return sql.SQL(
        "DELETE FROM {t} AS t USING {stage} AS s WHERE s._op = 'D' AND {match}{guard}"
    ).format(
        t=table_ident(plan.target.name),
        stage=stage_name(plan),
        match=_match(plan, "t", "s"),
        guard=_local_not_newer(plan, "s"),
    )


def _local_not_newer(plan: TablePlan, stage_alias: str) -> sql.Composable:
    """target_wins: leave a row that was changed here after the incoming change committed.
    Rows this pipeline wrote carry their source's commit time (origin xact setup), so
    the comparison is between the two original writes: last writer wins."""
    if plan.conflict.rule != "target_wins" or not plan.commit_timestamps:
        return sql.SQL("")
    return sql.SQL(
        " AND (pg_catalog.pg_xact_commit_timestamp(t.xmin) IS NULL"
        " OR pg_catalog.pg_xact_commit_timestamp(t.xmin) <= {ts})"
    ).format(ts=_stage_time(stage_alias))


def update_from_stage(
    plan: TablePlan, group: int, skip: Sequence[int], pipeline: str
) -> sql.Composed:
    """One update group and its conflicts, in one statement returning one row: (rows
    updated, staged updates whose row is missing, conflicts logged).

    The conflicts are the staged rows the UPDATE left alone: their target row is missing,
    or it wins under the table's rule. Both sides of that are read in the statement's one
    snapshot, so a row the UPDATE applied is never logged as lost. On a two-way table a
    losing row still brings the columns only this pipeline carries (``plan.one_way``)."""
    skipped = set(skip)
    t = table_ident(plan.target.name)
    stage = stage_name(plan)
    match = _match(plan, "t", "s")
    sets = [
        sql.SQL("{} = s.{}").format(sql.Identifier(col), _c(i))
        for i, col in enumerate(plan.columns)
        if i not in skipped
    ]
    newer: sql.Composable = sql.SQL("")
    if plan.conflict.rule == "newer_wins" and plan.conflict.column is not None:
        col = sql.Identifier(plan.conflict.column)
        staged = _c(plan.columns.index(plan.conflict.column))
        newer = sql.SQL(" AND (t.{c} IS NULL OR t.{c} {op} s.{s})").format(
            c=col, op=_newer_op(plan), s=staged
        )
    newer = newer + _local_not_newer(plan, "s")
    group_rows = sql.SQL("s._op = 'U' AND s._g = {}").format(sql.Literal(group))
    parts = [
        sql.SQL(
            "WITH u AS (UPDATE {t} AS t SET {sets} FROM {stage} AS s"
            " WHERE {rows} AND {match}{newer} RETURNING s.ctid AS sid)"
        ).format(
            t=t,
            sets=sql.SQL(", ").join(sets),
            stage=stage,
            rows=group_rows,
            match=match,
            newer=newer,
        )
    ]
    one_way = [i for i in plan.one_way if i not in skipped]
    if one_way:
        parts.append(
            sql.SQL(
                ", o AS (UPDATE {t} AS t SET {sets} FROM {stage} AS s WHERE {rows} AND {match}"
                " AND s.ctid NOT IN (SELECT sid FROM u) AND ({differ}))"
            ).format(
                t=t,
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = s.{}").format(sql.Identifier(plan.columns[i]), _c(i))
                    for i in one_way
                ),
                stage=stage,
                rows=group_rows,
                match=match,
                differ=sql.SQL(" OR ").join(
                    _distinct(
                        plan,
                        i,
                        sql.SQL("t.{}").format(sql.Identifier(plan.columns[i])),
                        sql.SQL("s.{}").format(_c(i)),
                    )
                    for i in one_way
                ),
            )
        )
    exists = sql.SQL("EXISTS (SELECT 1 FROM {t} AS t WHERE {m})").format(t=t, m=match)
    parts.append(
        sql.SQL(", c AS (")
        + _conflict_insert(plan, pipeline)
        + sql.SQL(
            "{key}, CASE WHEN {exists} THEN 'update_older' ELSE 'update_missing' END,"
            " 'target', s._lsn, {ts} FROM {stage} AS s"
            " WHERE {rows} AND s.ctid NOT IN (SELECT sid FROM u) RETURNING kind)"
            " SELECT (SELECT count(*) FROM u),"
            " count(*) FILTER (WHERE kind = 'update_missing'), count(*) FROM c"
        ).format(
            key=_key_json(plan, "s", "k"),
            exists=exists,
            ts=_stage_time("s"),
            stage=stage,
            rows=group_rows,
        )
    )
    return sql.Composed(parts)


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
    if not others or (plan.conflict.rule == "target_wins" and not plan.commit_timestamps):
        return sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(keys)
    sets = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others
    )
    clause = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(keys, sets)
    if plan.conflict.rule == "target_wins":
        # the incoming row's source commit time, found back in the stage by its key
        incoming = sql.SQL(
            "(SELECT {ts} FROM {stage} AS s WHERE s._op = 'I' AND {m} LIMIT 1)"
        ).format(
            ts=_stage_time("s"),
            stage=stage_name(plan),
            m=sql.SQL(" AND ").join(
                sql.SQL("s.{} = EXCLUDED.{}").format(_c(pos), sql.Identifier(plan.columns[pos]))
                for pos in plan.key
            ),
        )
        clause = sql.SQL(
            "{} WHERE pg_catalog.pg_xact_commit_timestamp(t.xmin) IS NULL"
            " OR pg_catalog.pg_xact_commit_timestamp(t.xmin) <= {}"
        ).format(clause, incoming)
    if plan.conflict.rule == "newer_wins":
        col = sql.Identifier(plan.conflict.column or "")
        wins = sql.SQL("t.{c} IS NULL OR t.{c} {op} EXCLUDED.{c}").format(c=col, op=_newer_op(plan))
        if not plan.one_way:
            return sql.SQL("{} WHERE {}").format(clause, wins)
        # a losing row still brings the columns only this pipeline carries
        one_way = {plan.columns[i] for i in plan.one_way}
        sets = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            if c in one_way
            else sql.SQL("{0} = CASE WHEN {1} THEN EXCLUDED.{0} ELSE t.{0} END").format(
                sql.Identifier(c), wins
            )
            for c in others
        )
        differ = sql.SQL(" OR ").join(
            _distinct(
                plan,
                plan.columns.index(c),
                sql.SQL("t.{}").format(sql.Identifier(c)),
                sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)),
            )
            for c in sorted(one_way)
        )
        return sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {} WHERE {} OR {}").format(
            keys, sets, wins, differ
        )
    return clause


def _newer_op(plan: TablePlan) -> sql.SQL:
    """newer_wins: the incoming row wins if strictly newer, or on a tie when this pipeline
    has the priority (so the two directions of a two-way table pick the same row)."""
    return sql.SQL("<=" if plan.tie_source_wins else "<")


def _conflict_insert(plan: TablePlan, pipeline: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO replicator.conflicts (pipeline, target_table, key, kind, winner,"
        " source_lsn, source_commit_time) "
    ).format() + sql.SQL("SELECT {p}, {t}, ").format(
        p=sql.Literal(pipeline), t=sql.Literal(str(plan.target.name))
    )


def _key_json(plan: TablePlan, alias: str, prefix: str) -> sql.Composable:
    """jsonb of the (masked) key values as staged: {column: value::text}."""
    parts = []
    for n, pos in enumerate(plan.key):
        col = f"k{n}" if prefix == "k" else f"c{pos}"
        parts.append(
            sql.SQL("{}, {}.{}::text").format(
                sql.Literal(plan.columns[pos]), sql.Identifier(alias), sql.Identifier(col)
            )
        )
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(parts))


def log_insert_conflicts(plan: TablePlan, pipeline: str) -> sql.Composed | None:
    """Before the upsert: staged inserts whose key the target holds, with the winner the
    table's rule decides. None when the target has no unique key (nothing conflicts)."""
    if not plan.conflict_index:
        return None
    rule = plan.conflict.rule
    winner: sql.Composable
    if rule == "source_wins":
        winner = sql.SQL("'source'")
    elif rule == "target_wins" and plan.commit_timestamps:
        winner = sql.SQL(
            "CASE WHEN pg_catalog.pg_xact_commit_timestamp(t.xmin) IS NULL"
            " OR pg_catalog.pg_xact_commit_timestamp(t.xmin) <= {ts}"
            " THEN 'source' ELSE 'target' END"
        ).format(ts=_stage_time("s"))
    elif rule == "target_wins":
        winner = sql.SQL("'target'")
    else:
        col = sql.Identifier(plan.conflict.column or "")
        staged = _c(plan.columns.index(plan.conflict.column or ""))
        winner = sql.SQL(
            "CASE WHEN t.{c} IS NULL OR t.{c} {op} s.{s} THEN 'source' ELSE 'target' END"
        ).format(c=col, op=_newer_op(plan), s=staged)
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{} = s.{}").format(sql.Identifier(plan.columns[pos]), _c(pos))
        if plan.equality[pos]
        else sql.SQL("t.{}::text = s.{}::text").format(sql.Identifier(plan.columns[pos]), _c(pos))
        for pos in plan.key
    )
    return _conflict_insert(plan, pipeline) + sql.SQL(
        "{key}, 'insert_exists', {winner}, s._lsn, {ts} FROM {stage} AS s JOIN {t} AS t ON {m}"
        " WHERE s._op = 'I'"
    ).format(
        key=_key_json(plan, "s", "c"),
        winner=winner,
        ts=_stage_time("s"),
        stage=stage_name(plan),
        t=table_ident(plan.target.name),
        m=match,
    )


def log_delete_conflicts(plan: TablePlan, pipeline: str) -> sql.Composed:
    """Before the DELETE, one statement returning one row (deletes whose row the target
    does not have, conflicts logged): the staged deletes that will not delete, because
    the row is missing or, under target_wins, was changed here after the delete."""
    t = table_ident(plan.target.name)
    exists = sql.SQL("EXISTS (SELECT 1 FROM {t} AS t WHERE {m})").format(
        t=t, m=_match(plan, "t", "s")
    )
    refused: sql.Composable = sql.SQL("")
    if plan.conflict.rule == "target_wins" and plan.commit_timestamps:
        # the row exists but delete_from_stage's guard keeps it: the later change here wins
        refused = sql.SQL(" OR NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {m}{g})").format(
            t=t, m=_match(plan, "t", "s"), g=_local_not_newer(plan, "s")
        )
    return (
        sql.SQL("WITH c AS (")
        + _conflict_insert(plan, pipeline)
        + sql.SQL(
            "{key}, CASE WHEN {exists} THEN 'delete_older' ELSE 'delete_missing' END,"
            " 'target', s._lsn, {ts} FROM {stage} AS s"
            " WHERE s._op = 'D' AND (NOT {exists}{refused}) RETURNING kind)"
            " SELECT count(*) FILTER (WHERE kind = 'delete_missing'), count(*) FROM c"
        ).format(
            key=_key_json(plan, "s", "k"),
            exists=exists,
            ts=_stage_time("s"),
            stage=stage_name(plan),
            refused=refused,
        )
    )


def truncate_stage(plan: TablePlan) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(stage_name(plan))


def copy_direct(plan: TablePlan) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        table_ident(plan.target.name), sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns)
    )


def _only(table: QualifiedName, partitioned: Collection[QualifiedName]) -> sql.Composable:
    """``ONLY t``, as PostgreSQL's apply names a table (never its inheritance children);
    a partitioned table by its name alone, which takes its partitions (``ONLY`` on it is an
    error), as the apply expands a partitioned table to its partitions."""
    if table in partitioned:
        return table_ident(table)
    return sql.SQL("ONLY {}").format(table_ident(table))


def truncate(
    tables: Sequence[QualifiedName],
    *,
    restart_identity: bool,
    partitioned: Collection[QualifiedName] = (),
) -> sql.Composed:
    """One statement for all ``tables``: foreign keys among them do not stop it."""
    return sql.SQL("TRUNCATE {}{}").format(
        sql.SQL(", ").join(_only(t, partitioned) for t in tables),
        sql.SQL(" RESTART IDENTITY" if restart_identity else ""),
    )


def delete_all(
    table: QualifiedName, *, partitioned: Collection[QualifiedName] = ()
) -> sql.Composed:
    """Every row of a table that a TRUNCATE cannot take (referenced from a table it does
    not truncate); run under ``session_replication_role = replica``, so no foreign key
    action fires, as none fires on the source's own truncate."""
    return sql.SQL("DELETE FROM {}").format(_only(table, partitioned))


def restart_sequence(seq: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER SEQUENCE {} RESTART").format(table_ident(seq))


# --- single rows (REPLICA IDENTITY FULL without a key, key moves with unknown TOAST) ----
# Values go in as literals, not %s parameters: a parameter marker would also be read out
# of an identifier such as "pct%", and these statements run one row at a time anyway.


def _text_literal(v: Datum) -> sql.Composable:
    if v is None:
        return sql.NULL
    if not isinstance(v, bytes):
        raise TypeError(f"cannot write a {type(v).__name__} value as a literal")
    return sql.Literal(v.decode())


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
    return sql.SQL(" AND (t.{c} IS NULL OR t.{c} {op} {v})").format(
        c=col, op=_newer_op(plan), v=_typed(plan, pos, new[pos])
    )
