"""Seeded transaction histories for the randomized differential test (pure: no I/O).

``generate(seed, features)`` returns a ``History``: the DDL of a small schema and a list of
source transactions over it. The same seed and features give the same history. Every
history is valid on the source: it is generated against a model of the current rows (keys,
unique values, parent/child references, partitions), so it runs there without an error.

The schema has what real schemas have and what folding, ordering and TOAST handling get
wrong: a primary key with a non-key UNIQUE column (``u``), a parent/child pair under a
foreign key, a partitioned table whose key includes the partition key (``part``, rows move
between partitions), and a table with an out-of-line text column (``doc``, updates that do
not touch it arrive as unchanged-TOAST).

Each operation kind is a feature that can be switched off (``FEATURES``), so a run can leave
out what a known bug breaks and still test the rest.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

FEATURES: tuple[str, ...] = (
    "insert",  # new rows in every table
    "update",  # non-key columns
    "delete",
    "pk_move",  # UPDATE of the primary key
    "unique_swap_tx",  # two rows swap UNIQUE values through a temporary value, one tx
    "unique_swap_across",  # the same over three transactions (a freed value reused later)
    "fk",  # parent/child rows under a foreign key (inserts, reparenting, deletes)
    "partition_move",  # UPDATE of the partition key: the row moves to another partition
    "toast_unchanged",  # UPDATE of a table with an out-of-line column, leaving it alone
    "truncate",  # TRUNCATE of a plain table
    "truncate_fk",  # TRUNCATE of the FK pair (parent and child together, or child alone)
    "truncate_partitioned",  # TRUNCATE of the partitioned table
    "savepoint",  # work inside a savepoint that is rolled back (or released)
    "rollback",  # a whole transaction rolled back
    "multi_statement",  # transactions of several statements (off: one statement each)
    "initial_copy",  # rows written before the daemon starts, so they arrive by the copy
)

TABLES: tuple[str, ...] = ("u", "parent", "child", "part", "doc")
KEYS: Mapping[str, tuple[str, ...]] = {
    "u": ("id",),
    "parent": ("id",),
    "child": ("id",),
    "part": ("id", "region"),
    "doc": ("id",),
}
REGIONS = (0, 1, 2)
TOAST_CHARS = 3000  # over the 2 kB TOAST threshold; STORAGE EXTERNAL keeps it out of line

DDL: tuple[str, ...] = (
    "CREATE TABLE {s}.u (id int PRIMARY KEY, email text NOT NULL UNIQUE, n int NOT NULL)",
    "CREATE TABLE {s}.parent (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE {s}.child (id int PRIMARY KEY,"
    " parent_id int NOT NULL REFERENCES {s}.parent (id), v text NOT NULL)",
    "CREATE TABLE {s}.part (id int NOT NULL, region int NOT NULL, v text NOT NULL,"
    " PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
    *(f"CREATE TABLE {{s}}.part_r{r} PARTITION OF {{s}}.part FOR VALUES IN ({r})" for r in REGIONS),
    "CREATE TABLE {s}.doc (id int PRIMARY KEY, body text NOT NULL, n int NOT NULL)",
    "ALTER TABLE {s}.doc ALTER COLUMN body SET STORAGE EXTERNAL",
)


def ddl(schema: str) -> list[sql.Composed]:
    """The schema's statements, for the source and (the same) for the target."""
    ident = sql.Identifier(schema)
    out = [sql.SQL("CREATE SCHEMA {}").format(ident)]
    out += [sql.SQL(stmt).format(s=ident) for stmt in DDL]
    return out


# --- statements ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stmt:
    """One source statement. ``kind``: insert, update, delete, truncate, savepoint,
    rollback_to, release. ``row`` holds inserted values or the SET of an update, ``key``
    the WHERE of an update or delete."""

    kind: str
    table: str = ""
    row: tuple[tuple[str, Any], ...] = ()
    key: tuple[tuple[str, Any], ...] = ()
    tables: tuple[str, ...] = ()  # truncate
    cascade: bool = False  # TRUNCATE ... CASCADE (the parent alone takes its children along)
    name: str = ""  # savepoints

    def render(self, schema: str) -> sql.Composed:
        def t(name: str) -> sql.Composed:
            return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))

        def pairs(items: Iterable[tuple[str, Any]], sep: str) -> sql.Composed:
            return sql.SQL(sep).join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(v)) for c, v in items
            )

        match self.kind:
            case "insert":
                return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    t(self.table),
                    sql.SQL(", ").join(sql.Identifier(c) for c, _ in self.row),
                    sql.SQL(", ").join(sql.Literal(v) for _, v in self.row),
                )
            case "update":
                return sql.SQL("UPDATE {} SET {} WHERE {}").format(
                    t(self.table), pairs(self.row, ", "), pairs(self.key, " AND ")
                )
            case "delete":
                return sql.SQL("DELETE FROM {} WHERE {}").format(
                    t(self.table), pairs(self.key, " AND ")
                )
            case "truncate":
                return sql.SQL("TRUNCATE {}{}").format(
                    sql.SQL(", ").join(t(name) for name in self.tables),
                    sql.SQL(" CASCADE" if self.cascade else ""),
                )
            case "savepoint":
                return sql.SQL("SAVEPOINT {}").format(sql.Identifier(self.name))
            case "rollback_to":
                return sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(self.name))
            case "release":
                return sql.SQL("RELEASE SAVEPOINT {}").format(sql.Identifier(self.name))
        raise ValueError(f"unknown statement kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Transaction:
    stmts: tuple[Stmt, ...]
    ops: frozenset[str]  # the features this transaction exercises
    commit: bool = True


@dataclass(frozen=True, slots=True)
class History:
    seed: int
    features: frozenset[str]
    initial: tuple[Transaction, ...]  # before the daemon starts (arrive by the copy)
    transactions: tuple[Transaction, ...]  # while it streams

    @property
    def ops(self) -> frozenset[str]:
        out: set[str] = {"initial_copy"} if self.initial else set()
        for tx in (*self.initial, *self.transactions):
            out |= tx.ops
        return frozenset(out)


# --- the model and the generator -----------------------------------------------------------

Row = dict[str, Any]


@dataclass
class _Model:
    rows: dict[str, dict[tuple[Any, ...], Row]] = field(
        default_factory=lambda: {t: {} for t in TABLES}
    )

    def copy(self) -> _Model:
        return _Model({t: {k: dict(r) for k, r in rs.items()} for t, rs in self.rows.items()})

    def key_of(self, table: str, row: Row) -> tuple[Any, ...]:
        return tuple(row[c] for c in KEYS[table])

    def emails(self) -> set[str]:
        return {r["email"] for r in self.rows["u"].values()}

    def children_of(self, parent_id: int) -> list[Row]:
        return [r for r in self.rows["child"].values() if r["parent_id"] == parent_id]


def _key_items(table: str, key: tuple[Any, ...]) -> tuple[tuple[str, Any], ...]:
    return tuple(zip(KEYS[table], key, strict=True))


class _Gen:
    def __init__(self, seed: int, features: frozenset[str]) -> None:
        self.rng = random.Random(seed)
        self.features = features
        self.model = _Model()
        self.next_id = 1
        self.next_email = 1
        self.stmts: list[Stmt] = []
        self.ops: set[str] = set()

    # -- helpers

    def fresh_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def fresh_email(self) -> str:
        self.next_email += 1
        return f"e{self.next_email}@x"

    def body(self) -> str:
        # hex of random bits: incompressible enough, and out of line (STORAGE EXTERNAL)
        return f"{self.rng.getrandbits(TOAST_CHARS * 4):0{TOAST_CHARS}x}"

    def pick(self, table: str) -> tuple[tuple[Any, ...], Row] | None:
        rows = self.model.rows[table]
        if not rows:
            return None
        key = self.rng.choice(sorted(rows))
        return key, rows[key]

    def emit(self, stmt: Stmt, op: str) -> None:
        self.stmts.append(stmt)
        self.ops.add(op)
        m = self.model.rows
        match stmt.kind:
            case "insert":
                row = dict(stmt.row)
                m[stmt.table][self.model.key_of(stmt.table, row)] = row
            case "update":
                old = tuple(v for _, v in stmt.key)
                row = m[stmt.table].pop(old)
                row.update(dict(stmt.row))
                m[stmt.table][self.model.key_of(stmt.table, row)] = row
            case "delete":
                del m[stmt.table][tuple(v for _, v in stmt.key)]
            case "truncate":
                for t in stmt.tables:
                    m[t].clear()
                if stmt.cascade and "parent" in stmt.tables:
                    m["child"].clear()

    def insert(self, table: str, row: Row, op: str = "insert") -> None:
        self.emit(Stmt("insert", table, row=tuple(row.items())), op)

    def update(self, table: str, key: tuple[Any, ...], changes: Row, op: str) -> None:
        self.emit(Stmt("update", table, row=tuple(changes.items()), key=_key_items(table, key)), op)

    def delete(self, table: str, key: tuple[Any, ...]) -> None:
        self.emit(Stmt("delete", table, key=_key_items(table, key)), "delete")

    # -- one operation each; False when the model offers nothing to do it on

    def op_insert(self) -> bool:
        table = self.rng.choice(("u", "parent", "child", "part", "doc"))
        i = self.fresh_id()
        if table == "u":
            self.insert("u", {"id": i, "email": self.fresh_email(), "n": self.rng.randrange(100)})
        elif table == "parent":
            if "fk" not in self.features:
                return False
            self.insert("parent", {"id": i, "name": f"p{i}"})
        elif table == "child":
            if "fk" not in self.features:
                return False
            parent = self.pick("parent")
            if parent is None:
                self.insert("parent", {"id": i, "name": f"p{i}"}, "fk")
                parent_id, i = i, self.fresh_id()
            else:
                parent_id = parent[1]["id"]
            self.insert("child", {"id": i, "parent_id": parent_id, "v": f"c{i}"}, "fk")
        elif table == "part":
            self.insert("part", {"id": i, "region": self.rng.choice(REGIONS), "v": f"v{i}"})
        else:
            self.insert("doc", {"id": i, "body": self.body(), "n": 0})
        return True

    def op_update(self) -> bool:
        table = self.rng.choice(("u", "child", "part", "doc", "parent"))
        if table in ("parent", "child") and "fk" not in self.features:
            return False
        got = self.pick(table)
        if got is None:
            return False
        key, row = got
        if table == "u":
            changes: Row = {"n": row["n"] + 1}
            if self.rng.random() < 0.3:
                changes["email"] = self.fresh_email()
            self.update("u", key, changes, "update")
        elif table == "parent":
            self.update("parent", key, {"name": row["name"] + "'"}, "update")
        elif table == "child":
            parent = self.pick("parent")
            assert parent is not None  # a child always has its parent
            self.update("child", key, {"parent_id": parent[1]["id"], "v": row["v"] + "+"}, "fk")
        elif table == "part":
            self.update("part", key, {"v": row["v"] + "+"}, "update")
        else:
            self.update("doc", key, {"body": self.body(), "n": row["n"] + 1}, "update")
        return True

    def op_toast_unchanged(self) -> bool:
        got = self.pick("doc")
        if got is None:
            return False
        key, row = got
        self.update("doc", key, {"n": row["n"] + 1}, "toast_unchanged")
        return True

    def op_delete(self) -> bool:
        table = self.rng.choice(("u", "child", "part", "doc", "parent"))
        if table in ("parent", "child") and "fk" not in self.features:
            return False
        got = self.pick(table)
        if got is None:
            return False
        key, row = got
        if table == "parent":
            # its children go first, in the same transaction, or the FK refuses
            for child in self.model.children_of(row["id"]):
                self.delete("child", (child["id"],))
            self.ops.add("fk")
        self.delete(table, key)
        return True

    def op_pk_move(self) -> bool:
        table = self.rng.choice(("u", "doc", "parent"))
        got = self.pick(table)
        if got is None:
            return False
        key, row = got
        if table == "parent" and ("fk" not in self.features or self.model.children_of(row["id"])):
            return False  # a referenced key cannot move (NO ACTION)
        self.update(table, key, {"id": self.fresh_id()}, "pk_move")
        return True

    def op_partition_move(self) -> bool:
        got = self.pick("part")
        if got is None:
            return False
        key, row = got
        region = self.rng.choice([r for r in REGIONS if r != row["region"]])
        changes: Row = {"region": region}
        if self.rng.random() < 0.5:
            changes["v"] = row["v"] + ">"
        self.update("part", key, changes, "partition_move")
        return True

    def _swap_pair(self) -> tuple[Row, Row] | None:
        rows = sorted(self.model.rows["u"])
        if len(rows) < 2:
            return None
        a, b = self.rng.sample(rows, 2)
        return self.model.rows["u"][a], self.model.rows["u"][b]

    def op_unique_swap_tx(self) -> bool:
        pair = self._swap_pair()
        if pair is None:
            return False
        a, b = pair
        ea, eb, tmp = a["email"], b["email"], self.fresh_email()
        self.update("u", (a["id"],), {"email": tmp}, "unique_swap_tx")
        self.update("u", (b["id"],), {"email": ea}, "unique_swap_tx")
        self.update("u", (a["id"],), {"email": eb}, "unique_swap_tx")
        return True

    def truncate(self, tables: tuple[str, ...], op: str, *, cascade: bool = False) -> None:
        self.emit(Stmt("truncate", tables=tables, cascade=cascade), op)

    def op_truncate(self) -> bool:
        self.truncate((self.rng.choice(("u", "doc")),), "truncate")
        return True

    def op_truncate_fk(self) -> bool:
        if "fk" not in self.features:
            return False
        r = self.rng.random()
        if r < 0.4:
            self.truncate(("parent",), "truncate_fk", cascade=True)
        else:
            self.truncate(("parent", "child") if r < 0.7 else ("child",), "truncate_fk")
        return True

    def op_truncate_partitioned(self) -> bool:
        self.truncate(("part",), "truncate_partitioned")
        return True

    # -- transactions

    OPS: tuple[tuple[str, str, float], ...] = (
        ("insert", "op_insert", 5.0),
        ("update", "op_update", 4.0),
        ("toast_unchanged", "op_toast_unchanged", 2.0),
        ("delete", "op_delete", 1.5),
        ("pk_move", "op_pk_move", 1.0),
        ("partition_move", "op_partition_move", 1.5),
        ("unique_swap_tx", "op_unique_swap_tx", 1.0),
        ("truncate", "op_truncate", 0.15),
        ("truncate_fk", "op_truncate_fk", 0.15),
        ("truncate_partitioned", "op_truncate_partitioned", 0.15),
    )

    def one_op(self) -> None:
        enabled = [(m, w) for f, m, w in self.OPS if f in self.features]
        if not enabled:
            raise ValueError("no operation feature enabled")
        for _ in range(20):
            (method,) = self.rng.choices([m for m, _ in enabled], [w for _, w in enabled])
            if getattr(self, method)():
                return
        # nothing to act on yet: an insert always works
        if "insert" in self.features:
            self.op_insert()

    def statements(self) -> int:
        if "multi_statement" not in self.features:
            return 1
        return self.rng.choice((1, 1, 2, 3, 4, 6, 10))

    def transaction(self) -> Transaction:
        self.stmts, self.ops = [], set()
        before = self.model.copy()
        r = self.rng.random()
        if "unique_swap_across" in self.features and r < 0.06 and not self.pending:
            return self.swap_across() or self.transaction()
        n = self.statements()
        for _ in range(n):
            self.one_op()
        if "savepoint" in self.features and self.rng.random() < 0.15:
            self.savepoint()
            if self.rng.random() < 0.5:
                self.one_op()
        if n > 1:
            self.ops.add("multi_statement")
        commit = not ("rollback" in self.features and self.rng.random() < 0.04)
        if not commit:
            self.model = before
            self.ops.add("rollback")
        return Transaction(tuple(self.stmts), frozenset(self.ops), commit)

    def savepoint(self) -> None:
        name = f"sp{len(self.stmts)}"
        self.emit(Stmt("savepoint", name=name), "savepoint")
        saved = self.model.copy()
        for _ in range(self.rng.randint(1, 3)):
            self.one_op()
        if self.rng.random() < 0.75:
            self.emit(Stmt("rollback_to", name=name), "savepoint")
            self.model = saved
        else:
            self.emit(Stmt("release", name=name), "savepoint")

    def swap_across(self) -> Transaction | None:
        """The first of three transactions; the other two wait in ``pending`` and are
        written later, with other work in between (a freed unique value reused)."""
        pair = self._swap_pair()
        if pair is None:
            return None
        a, b = pair
        ea, eb, tmp = a["email"], b["email"], self.fresh_email()
        self.stmts, self.ops = [], set()
        self.update("u", (a["id"],), {"email": tmp}, "unique_swap_across")
        self.pending.extend([(b["id"], ea), (a["id"], eb)])
        return Transaction(tuple(self.stmts), frozenset(self.ops))

    def pending_step(self) -> Transaction | None:
        """The next step of a swap across transactions, if its row is still there (a
        delete, key move or truncate in between may have taken it) and its value free."""
        row_id, email = self.pending.pop(0)
        if (row_id,) not in self.model.rows["u"] or email in self.model.emails():
            return None
        self.stmts, self.ops = [], set()
        self.update("u", (row_id,), {"email": email}, "unique_swap_across")
        return Transaction(tuple(self.stmts), frozenset(self.ops))

    pending: list[tuple[int, str]]

    def run(self, count: int) -> list[Transaction]:
        self.pending = []
        out: list[Transaction] = []
        while len(out) < count or self.pending:
            if self.pending and (self.rng.random() < 0.5 or len(out) >= count):
                step = self.pending_step()
                if step is not None:
                    out.append(step)
                continue
            out.append(self.transaction())
        return out


def generate(
    seed: int,
    features: Iterable[str] = FEATURES,
    *,
    transactions: int = 30,
    initial: int = 6,
) -> History:
    """A valid history of ``transactions`` (plus up to ``initial`` before the daemon starts,
    when ``initial_copy`` is on) drawn from ``seed``."""
    chosen = frozenset(features)
    unknown = chosen - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features: {sorted(unknown)} (known: {', '.join(FEATURES)})")
    gen = _Gen(seed, chosen)
    first = gen.run(initial) if "initial_copy" in chosen and initial else []
    rest = gen.run(transactions)
    return History(seed, chosen, tuple(first), tuple(rest))


def parse_features(spec: str) -> frozenset[str]:
    """``all``, ``all,-unique_swap_tx,-truncate_fk`` or a plain list ``insert,update``."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    out: set[str] = set()
    for item in items:
        if item == "all":
            out |= set(FEATURES)
        elif item.startswith("-"):
            out.discard(item[1:])
            if item[1:] not in FEATURES:
                raise ValueError(f"unknown feature {item[1:]!r} (known: {', '.join(FEATURES)})")
        elif item in FEATURES:
            out.add(item)
        else:
            raise ValueError(f"unknown feature {item!r} (known: {', '.join(FEATURES)})")
    return frozenset(out)
