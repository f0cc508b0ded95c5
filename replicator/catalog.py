"""Catalog reads: the facts about target tables that table plans are built from.

I/O, read-only. Queries take names as parameters; no SQL is built from them here.
"""

from __future__ import annotations

from psycopg import AsyncConnection

from replicator.config import QualifiedName
from replicator.errors import SchemaError
from replicator.mapping import TargetColumn, TargetTable
from replicator.protocol.messages import REPLICA_IDENTITY_KEY_FLAG, Column, Relation

# Columns of one table with their base types (domains resolved, recursively), and
# the char limit of varchar(n)/char(n) columns for mask fit checks.
_COLUMNS_SQL = """
WITH RECURSIVE base(col, typ, depth) AS (
    SELECT a.attnum, a.atttypid, 0
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT b.col, t.typbasetype, b.depth + 1
      FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.typ
     WHERE t.typtype = 'd'
)
SELECT a.attname,
       bn.nspname, bt.typname, bt.typcategory,
       a.attnotnull, a.attgenerated <> '',
       CASE WHEN a.atttypid IN ('pg_catalog.varchar'::regtype, 'pg_catalog.bpchar'::regtype)
             AND a.atttypmod > 4 THEN a.atttypmod - 4 END
  FROM pg_catalog.pg_attribute a
  JOIN LATERAL (SELECT typ FROM base WHERE base.col = a.attnum ORDER BY depth DESC LIMIT 1) b
       ON true
  JOIN pg_catalog.pg_type bt ON bt.oid = b.typ
  JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
 WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

# Unique indexes that ON CONFLICT can infer: valid, immediate, not partial, plain columns.
_UNIQUE_SQL = """
SELECT i.indisprimary,
       array(SELECT a.attname
               FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              ORDER BY k.ord)
  FROM pg_catalog.pg_index i
 WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indisvalid AND i.indimmediate
   AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT (0 = ANY (i.indkey::int2[]))
 ORDER BY i.indisprimary DESC, i.indexrelid
"""


async def table_oid(conn: AsyncConnection, name: QualifiedName) -> int | None:
    cur = await conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (name.schema, name.name),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def read_target_table(conn: AsyncConnection, name: QualifiedName) -> TargetTable:
    oid = await table_oid(conn, name)
    if oid is None:
        raise SchemaError(f"target table {name} does not exist")
    cur = await conn.execute(_COLUMNS_SQL, {"oid": oid})
    columns = {
        r[0]: TargetColumn(
            name=r[0],
            type_schema=r[1],
            type_name=r[2],
            type_category=r[3],
            not_null=r[4],
            generated=r[5],
            max_chars=r[6],
        )
        for r in await cur.fetchall()
    }
    cur = await conn.execute(_UNIQUE_SQL, {"oid": oid})
    uniques = await cur.fetchall()
    primary = next((tuple(cols) for is_pk, cols in uniques if is_pk), None)
    return TargetTable(
        name=name,
        oid=oid,
        columns=columns,
        unique_keys=tuple(frozenset(cols) for _, cols in uniques),
        primary_key=primary,
    )


# A source table as pgoutput would describe it: published columns (generated ones are
# not), with the replica identity flag on key columns (all columns under FULL).
_SOURCE_SQL = """
SELECT c.oid, c.relreplident, a.attname, a.atttypid, a.atttypmod,
       c.relreplident = 'f' OR coalesce(a.attnum = ANY (ri.indkey::int2[]), false)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_index ri
         ON ri.indrelid = c.oid
        AND ((c.relreplident = 'd' AND ri.indisprimary)
             OR (c.relreplident = 'i' AND ri.indisreplident))
 WHERE c.oid = %(oid)s AND a.attgenerated = ''
 ORDER BY a.attnum
"""


async def relation_name(conn: AsyncConnection, oid: int) -> QualifiedName | None:
    """The current name of the table with this OID, if it still exists."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = %s AND c.relkind IN ('r', 'p')",
        [oid],
    )
    row = await cur.fetchone()
    return QualifiedName(row[0], row[1]) if row else None


async def read_source_relation(
    conn: AsyncConnection, name: QualifiedName, *, oid: int | None = None
) -> Relation:
    """What the Relation message for ``name`` will say, read ahead from the catalog.

    ``oid``: the table's OID as last seen, for a table renamed since (no table has
    ``name`` now, the one with ``oid`` still exists). The relation is then still
    described under ``name``, the name the config and the control tables know it by."""
    found = await table_oid(conn, name)
    if found is None and oid is not None and await relation_name(conn, oid) is not None:
        found = oid
    if found is None:
        raise SchemaError(f"source table {name} does not exist")
    oid = found
    cur = await conn.execute(_SOURCE_SQL, {"oid": oid})
    rows = await cur.fetchall()
    identity = rows[0][1] if rows else "d"
    columns = tuple(
        Column(REPLICA_IDENTITY_KEY_FLAG if is_key else 0, attname, typid, typmod)
        for _, _, attname, typid, typmod, is_key in rows
    )
    return Relation(None, oid, name.schema, name.name, identity, columns)
