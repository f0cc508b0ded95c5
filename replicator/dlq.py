"""Dead letters: list, retry and discard rows the target rejected.

A retry re-applies the letter's (masked) values with the table's rules: an insert
upserts by key per the table's conflict rule, an update sets the columns it carries
on the row found by its old key, a delete deletes by key. The letter is marked
``applied`` in the same transaction, so retrying twice changes nothing. Retries run
under their own replication origin so a reverse pipeline does not echo them.

I/O. Identifiers through psycopg.sql; values as JSON parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from replicator.catalog import read_target_table
from replicator.config import Config, PipelineConfig, QualifiedName, TableConfig
from replicator.connect import target_conninfo
from replicator.errors import describe_error


@dataclass(frozen=True, slots=True)
class Letter:
    id: int
    pipeline: str
    source_table: str
    target_table: str
    operation: str
    key: dict[str, Any] | None
    row: dict[str, Any] | None
    old_key: dict[str, Any] | None
    error_class: str
    error_message: str
    source_lsn: str
    created_at: Any
    retry_count: int
    resolved: str | None


_COLUMNS = (
    "id, pipeline, source_table, target_table, operation, key, row_data, old_key,"
    " error_class, error_message, source_lsn::text, created_at, retry_count, resolved"
)


async def list_letters(
    conn: AsyncConnection,
    *,
    pipelines: Sequence[str],
    ids: Sequence[int] = (),
    include_resolved: bool = False,
) -> list[Letter]:
    query = sql.SQL("SELECT {} FROM replicator.dead_letters WHERE pipeline = ANY(%s)").format(
        sql.SQL(_COLUMNS)
    )
    params: list[Any] = [list(pipelines)]
    if ids:
        query += sql.SQL(" AND id = ANY(%s)")
        params.append(list(ids))
    if not include_resolved:
        query += sql.SQL(" AND resolved IS NULL")
    query += sql.SQL(" ORDER BY id")
    cur = await conn.execute(query, params)
    return [Letter(*r) for r in await cur.fetchall()]


def _table_config(pipe: PipelineConfig, source_table: str) -> TableConfig | None:
    return next((t for t in pipe.tables if str(t.source) == source_table), None)


def _qualified(text: str) -> QualifiedName:
    return QualifiedName.parse(text)


async def _apply(conn: AsyncConnection, letter: Letter, table: TableConfig) -> int:
    target = _qualified(letter.target_table)
    facts = await read_target_table(conn, target)
    ident = sql.Identifier(target.schema, target.name)
    rec = sql.SQL("jsonb_populate_record(NULL::{}, %s)").format(ident)
    if letter.operation == "delete":
        key = letter.key or {}
        where = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in key
        )
        cur = await conn.execute(
            sql.SQL("DELETE FROM {t} AS t USING {r} AS r WHERE {w}").format(
                t=ident, r=rec, w=where
            ),
            [Jsonb(key)],
        )
        return cur.rowcount
    row = letter.row or {}
    cols = [c for c in row if c in facts.columns and not facts.columns[c].generated]
    if letter.operation == "update":
        old = letter.old_key or letter.key or {}
        sets = sql.SQL(", ").join(sql.SQL("{c} = r.{c}").format(c=sql.Identifier(c)) for c in cols)
        where = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = o.{c}").format(c=sql.Identifier(c)) for c in old
        )
        cur = await conn.execute(
            sql.SQL("UPDATE {t} AS t SET {s} FROM {r} AS r, {o} AS o WHERE {w}").format(
                t=ident,
                s=sets,
                r=rec,
                o=sql.SQL("jsonb_populate_record(NULL::{}, %s)").format(ident),
                w=where,
            ),
            [Jsonb(row), Jsonb(old)],
        )
        return cur.rowcount
    key_cols = list((letter.key or {}).keys())
    names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    values = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols)
    conflict: sql.Composable = sql.SQL("")
    if key_cols and frozenset(key_cols) in facts.unique_keys:
        others = [c for c in cols if c not in key_cols]
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in key_cols)
        if table.conflict.rule == "target_wins" or not others:
            conflict = sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(keys)
        else:
            conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                keys,
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others
                ),
            )
            if table.conflict.rule == "newer_wins" and table.conflict.column:
                col = sql.Identifier(table.conflict.column)
                conflict += sql.SQL(" WHERE t.{c} IS NULL OR t.{c} <= EXCLUDED.{c}").format(c=col)
    cur = await conn.execute(
        sql.SQL("INSERT INTO {t} AS t ({n}) SELECT {v} FROM {r} AS r{c}").format(
            t=ident, n=names, v=values, r=rec, c=conflict
        ),
        [Jsonb(row)],
    )
    return max(cur.rowcount, 1) if conflict else cur.rowcount


@dataclass(frozen=True, slots=True)
class RetryResult:
    id: int
    outcome: str  # "applied", "failed", "not found", "unknown table"
    detail: str = ""


async def retry(config: Config, pipe: PipelineConfig, ids: Sequence[int] = ()) -> list[RetryResult]:
    dsn = config.databases[pipe.to].dsn.secret_value
    origin = f"{pipe.origin_name}__dlq"
    results: list[RetryResult] = []
    async with await AsyncConnection.connect(
        target_conninfo(dsn, f"replicator:{pipe.name}:dlq"), autocommit=True
    ) as conn:
        await conn.execute(
            "SELECT pg_catalog.pg_replication_origin_create(%s)"
            " WHERE pg_catalog.pg_replication_origin_oid(%s) IS NULL",
            [origin, origin],
        )
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SELECT pg_catalog.pg_replication_origin_session_setup(%s)", [origin])
        for letter in await list_letters(conn, pipelines=[pipe.name], ids=ids):
            table = _table_config(pipe, letter.source_table)
            if table is None:
                results.append(RetryResult(letter.id, "unknown table", letter.source_table))
                continue
            try:
                async with conn.transaction():
                    n = await _apply(conn, letter, table)
                    if n == 0:
                        raise _NotFoundError  # noqa: TRY301 - rolls the transaction back
                    await conn.execute(
                        "UPDATE replicator.dead_letters SET resolved = 'applied',"
                        " retried_at = now(), retry_count = retry_count + 1 WHERE id = %s",
                        [letter.id],
                    )
                results.append(RetryResult(letter.id, "applied"))
            except _NotFoundError:
                await _note_failure(conn, letter.id, "target row not found")
                results.append(RetryResult(letter.id, "not found", "target row not found"))
            except psycopg.Error as exc:
                detail = describe_error(exc)
                await _note_failure(conn, letter.id, detail)
                results.append(RetryResult(letter.id, "failed", detail))
    return results


class _NotFoundError(Exception):
    pass


async def _note_failure(conn: AsyncConnection, letter_id: int, detail: str) -> None:
    await conn.execute(
        "UPDATE replicator.dead_letters SET retried_at = now(), retry_count = retry_count + 1,"
        " error_message = %s WHERE id = %s",
        [detail, letter_id],
    )


async def discard(config: Config, pipe: PipelineConfig, ids: Sequence[int]) -> int:
    dsn = config.databases[pipe.to].dsn.secret_value
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        query = (
            "UPDATE replicator.dead_letters SET resolved = 'discarded', retried_at = now()"
            " WHERE pipeline = %s AND resolved IS NULL"
        )
        params: list[Any] = [pipe.name]
        if ids:
            query += " AND id = ANY(%s)"
            params.append(list(ids))
        cur = await conn.execute(query, params)
        return cur.rowcount
