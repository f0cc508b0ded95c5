"""Catalog reads: the facts about target tables that table plans are built from.

I/O, read-only. Queries take names as parameters; no SQL is built from them here.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection

from replicator.config import QualifiedName
from replicator.errors import SchemaError
from replicator.mapping import ForeignKeyRef, TargetColumn, TargetTable, TruncateFacts
from replicator.protocol.messages import (
    REPLICA_IDENTITIES,
    REPLICA_IDENTITY_KEY_FLAG,
    Column,
    Relation,
)

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
       bn.nspname, bt.typname, bt.typcategory, bt.oid,
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

# Which of these types compare with ``=`` (and so IS [NOT] DISTINCT FROM): those with a
# default btree or hash operator class, as PostgreSQL's type cache finds it (the type's
# own, that of a type it is implicitly binary-coercible to, or the polymorphic one of an
# enum, range or multirange). An array compares through its element type, a composite
# through its fields' types, a domain through its base type: all must have one.
_EQUALITY_SQL = """
WITH RECURSIVE tree(root, typ) AS (
    SELECT t, t FROM unnest(%(types)s::oid[]) AS t
  UNION
    SELECT tree.root, sub.typ
      FROM tree
      JOIN pg_catalog.pg_type ty ON ty.oid = tree.typ
     CROSS JOIN LATERAL (
            SELECT ty.typbasetype WHERE ty.typtype = 'd'
          UNION ALL
            SELECT ty.typelem
             WHERE ty.typsubscript = 'pg_catalog.array_subscript_handler'::regproc
          UNION ALL
            SELECT a.atttypid FROM pg_catalog.pg_attribute a
             WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0
               AND NOT a.attisdropped
         ) AS sub(typ)
)
SELECT tree.root,
       bool_and(
           ty.typtype IN ('d', 'c')
           OR ty.typsubscript = 'pg_catalog.array_subscript_handler'::regproc
           OR EXISTS (
               SELECT 1 FROM pg_catalog.pg_opclass oc
                 JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
                WHERE oc.opcdefault AND am.amname IN ('btree', 'hash')
                  AND (oc.opcintype = ty.oid
                       OR oc.opcintype = CASE ty.typtype
                              WHEN 'e' THEN 'pg_catalog.anyenum'::regtype
                              WHEN 'r' THEN 'pg_catalog.anyrange'::regtype
                              WHEN 'm' THEN 'pg_catalog.anymultirange'::regtype END
                       OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast c
                                   WHERE c.castsource = ty.oid AND c.casttarget = oc.opcintype
                                     AND c.castmethod = 'b' AND c.castcontext = 'i'))))
  FROM tree JOIN pg_catalog.pg_type ty ON ty.oid = tree.typ
 GROUP BY tree.root
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
    found = await cur.fetchall()
    cur = await conn.execute(_EQUALITY_SQL, {"types": list({r[4] for r in found})})
    equality: dict[int, bool | None] = dict(await cur.fetchall())  # type oid -> comparable
    columns = {
        r[0]: TargetColumn(
            name=r[0],
            type_schema=r[1],
            type_name=r[2],
            type_category=r[3],
            has_equality=bool(equality.get(r[4])),
            not_null=r[5],
            generated=r[6],
            max_chars=r[7],
        )
        for r in found
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
    identity = REPLICA_IDENTITIES[rows[0][1]] if rows else "d"
    columns = tuple(
        Column(REPLICA_IDENTITY_KEY_FLAG if is_key else 0, attname, typid, typmod)
        for _, _, attname, typid, typmod, is_key in rows
    )
    return Relation(None, oid, name.schema, name.name, identity, columns)


# --- what a TRUNCATE of some target tables runs into ---------------------------------------

# Every foreign key that references one of the tables or, for a partitioned one, one of
# its partitions (TRUNCATE of a partitioned table takes them all): the constraint's name as
# declared (a partition's copy named after its root constraint), the referencing table
# (the listed table it belongs to, if it is one of them or one of their partitions) and
# the listed table referenced.
_TRUNCATE_SQL = """
WITH RECURSIVE listed(top, rel) AS (
    SELECT c.oid, c.oid
      FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS q(nsp, rel)
      JOIN pg_catalog.pg_namespace n ON n.nspname = q.nsp
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = q.rel
  UNION
    SELECT listed.top, i.inhrelid
      FROM listed
      JOIN pg_catalog.pg_class p ON p.oid = listed.rel AND p.relkind = 'p'
      JOIN pg_catalog.pg_inherits i ON i.inhparent = listed.rel
), fk(conname, parent, conrelid, confrelid) AS (
    SELECT c.conname, c.conparentid, c.conrelid, c.confrelid
      FROM pg_catalog.pg_constraint c
     WHERE c.contype = 'f' AND c.confrelid IN (SELECT rel FROM listed)
  UNION ALL
    SELECT p.conname, p.conparentid, fk.conrelid, fk.confrelid
      FROM fk JOIN pg_catalog.pg_constraint p ON p.oid = fk.parent
)
SELECT DISTINCT fk.conname, an.nspname, ac.relname, bn.nspname, bc.relname
  FROM fk
  JOIN listed b ON b.rel = fk.confrelid
  LEFT JOIN listed a ON a.rel = fk.conrelid
  JOIN pg_catalog.pg_class ac ON ac.oid = coalesce(a.top, fk.conrelid)
  JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
  JOIN pg_catalog.pg_class bc ON bc.oid = b.top
  JOIN pg_catalog.pg_namespace bn ON bn.oid = bc.relnamespace
 WHERE fk.parent = 0
 ORDER BY 1, 2, 3, 4, 5
"""

_PARTITIONED_SQL = """
SELECT n.nspname, c.relname
  FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS q(nsp, rel)
  JOIN pg_catalog.pg_namespace n ON n.nspname = q.nsp
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = q.rel
 WHERE c.relkind = 'p'
"""

# sequences a TRUNCATE ... RESTART IDENTITY of the table would restart (serial, identity)
_OWNED_SEQUENCES_SQL = """
SELECT sn.nspname, s.relname
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
 WHERE d.classid = 'pg_catalog.pg_class'::regclass
   AND d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = %(oid)s AND d.deptype IN ('a', 'i')
 ORDER BY 1, 2
"""


def _names(tables: Sequence[QualifiedName]) -> dict[str, list[str]]:
    return {"schemas": [t.schema for t in tables], "names": [t.name for t in tables]}


async def truncate_facts(conn: AsyncConnection, tables: Sequence[QualifiedName]) -> TruncateFacts:
    cur = await conn.execute(_PARTITIONED_SQL, _names(tables))
    partitioned = frozenset(QualifiedName(s, n) for s, n in await cur.fetchall())
    cur = await conn.execute(_TRUNCATE_SQL, _names(tables))
    refs = tuple(
        ForeignKeyRef(con, QualifiedName(a_s, a_n), QualifiedName(b_s, b_n))
        for con, a_s, a_n, b_s, b_n in await cur.fetchall()
    )
    return TruncateFacts(partitioned, refs)


async def owned_sequences(conn: AsyncConnection, name: QualifiedName) -> list[QualifiedName]:
    oid = await table_oid(conn, name)
    if oid is None:
        return []
    cur = await conn.execute(_OWNED_SEQUENCES_SQL, {"oid": oid})
    return [QualifiedName(s, n) for s, n in await cur.fetchall()]
