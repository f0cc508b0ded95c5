"""SQL for the apply: identifiers always quoted by psycopg.sql, COPY text encoding, staging rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from psycopg import sql

from replicator import sqlgen
from replicator.config import QualifiedName
from replicator.lsn import Lsn
from replicator.mapping import TablePlan, TargetColumn
from replicator.protocol.messages import UNCHANGED_TOAST, Begin, BinaryDatum, Datum

from .conftest import PlanFactory, text_column

U = UNCHANGED_TOAST
SCHEMA = 'My "Sch"ema'
TABLE = "order"
COLUMNS = ["Id", 'we"ird', "select", "or der", "naïve 名", "updated_at"]
Q_TABLE = '"My ""Sch""ema"."order"'
Q_COLUMNS = ['"Id"', '"we""ird"', '"select"', '"or der"', '"naïve 名"', '"updated_at"']
STAGE = '"pg_temp"."replicator_stage_4242"'


def text(q: sql.Composable) -> str:
    return q.as_string(None)


@pytest.fixture
def hostile(make_plan: PlanFactory) -> Callable[..., TablePlan]:
    """A plan whose schema, table and every column need quoting; key "Id"."""

    def make(conflict: str = "source_wins", **kw: object) -> TablePlan:
        return make_plan(COLUMNS, ["Id"], schema=SCHEMA, table=TABLE, conflict=conflict, **kw)

    return make


# --- identifiers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("plain", '"plain"'),
        ("MixedCase", '"MixedCase"'),
        ('we"ird', '"we""ird"'),
        ('""', '""""""'),
        ("with space", '"with space"'),
        ("select", '"select"'),
        ("order", '"order"'),
        ("naïve 名前", '"naïve 名前"'),
        ("semi;colon--", '"semi;colon--"'),
        ("dot.ted", '"dot.ted"'),
    ],
    ids=[
        "plain",
        "mixed-case",
        "double-quote",
        "only-quotes",
        "space",
        "reserved-select",
        "reserved-order",
        "unicode",
        "sql-punctuation",
        "dot",
    ],
)
def test_every_identifier_is_quoted_wherever_it_appears(
    make_plan: PlanFactory, name: str, quoted: str
) -> None:
    plan = make_plan(["k", name], ["k"], schema=name, table=name)
    qualified = f"{quoted}.{quoted}"
    statements = [
        sqlgen.delete_from_stage(plan),
        sqlgen.update_from_stage(plan, 0, (), "p"),
        sqlgen.insert_from_stage(plan),
        sqlgen.copy_direct(plan),
        sqlgen.truncate([plan.target.name], restart_identity=False),
        sqlgen.delete_one_row(plan, [b"1", b"2"]),
        sqlgen.update_one_row(plan, [b"1", b"2"], [b"1", b"3"]),
        sqlgen.update_by_key(plan, [b"1"], [b"2", b"3"]),
    ]
    for q in statements:
        rendered = text(q)
        assert qualified in rendered, rendered
    assert f'{quoted} = s."c1"' in text(sqlgen.update_from_stage(plan, 0, (), "p"))
    assert f"{quoted} = EXCLUDED.{quoted}" in text(sqlgen.insert_from_stage(plan))


def test_insert_from_stage_renders_exactly(hostile: Callable[..., TablePlan]) -> None:
    plan = hostile()
    cols = ", ".join(Q_COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in Q_COLUMNS[1:])
    assert text(sqlgen.insert_from_stage(plan)) == (
        f"INSERT INTO {Q_TABLE} AS t ({cols}) "
        f'SELECT s."c0", s."c1", s."c2", s."c3", s."c4", s."c5" FROM {STAGE} AS s '
        f"WHERE s._op = 'I' ON CONFLICT (\"Id\") DO UPDATE SET {sets}"
    )


def test_staging_statements_render_exactly(hostile: Callable[..., TablePlan]) -> None:
    plan = hostile()
    stage_cols = ", ".join(f'"c{i}" "pg_catalog"."text"' for i in range(6))
    assert text(sqlgen.create_stage(plan)) == (
        f"DROP TABLE IF EXISTS {STAGE}; CREATE TEMP TABLE {STAGE} "
        f'("_op" "char", "_g" int4, "_lsn" pg_lsn, "_ts" int8, "k0" "pg_catalog"."text", '
        f"{stage_cols}) "
        "ON COMMIT DELETE ROWS"
    )
    assert text(sqlgen.copy_into_stage(plan)) == f"COPY {STAGE} FROM STDIN"
    assert text(sqlgen.truncate_stage(plan)) == f"TRUNCATE {STAGE}"
    assert text(sqlgen.delete_from_stage(plan)) == (
        f'DELETE FROM {Q_TABLE} AS t USING {STAGE} AS s WHERE s._op = \'D\' AND "t"."Id" = "s"."k0"'
    )
    assert text(sqlgen.copy_direct(plan)) == f"COPY {Q_TABLE} ({', '.join(Q_COLUMNS)}) FROM STDIN"


def test_update_from_stage_leaves_unchanged_toast_columns_alone(
    hostile: Callable[..., TablePlan],
) -> None:
    plan = hostile()
    rendered = text(sqlgen.update_from_stage(plan, 7, (1, 4), "p"))
    kept = [f'{c} = s."c{i}"' for i, c in enumerate(Q_COLUMNS) if i not in (1, 4)]
    assert rendered.startswith(
        f"WITH u AS (UPDATE {Q_TABLE} AS t SET {', '.join(kept)} FROM {STAGE} AS s "
        'WHERE s._op = \'U\' AND s._g = 7 AND "t"."Id" = "s"."k0" RETURNING s.ctid AS sid)'
    )
    assert '"we""ird" =' not in rendered
    assert '"naïve 名" =' not in rendered


def test_columns_without_equality_are_matched_as_text(make_plan: PlanFactory) -> None:
    json_col = TargetColumn("doc", "pg_catalog", "json", False, False, None, "U", False)
    plan = make_plan(["doc", "v"], ["doc"], types={"doc": json_col})
    assert text(sqlgen.delete_from_stage(plan)).endswith('AND "t"."doc"::text = "s"."k0"::text')
    q = text(sqlgen.delete_one_row(plan, [b"{}", b"x"]))
    assert "\"doc\"::text IS NOT DISTINCT FROM '{}'::text" in q
    assert '"v" IS NOT DISTINCT FROM CAST(\'x\' AS "pg_catalog"."text")' in q


@pytest.mark.parametrize(
    ("restart", "partitioned", "expected"),
    [
        (False, (), 'TRUNCATE ONLY "a"."b", ONLY "My ""Sch""ema"."order"'),
        (True, (), 'TRUNCATE ONLY "a"."b", ONLY "My ""Sch""ema"."order" RESTART IDENTITY'),
        # ONLY on a partitioned table is an error; without it, its partitions go too
        (False, (QualifiedName(SCHEMA, TABLE),), 'TRUNCATE ONLY "a"."b", "My ""Sch""ema"."order"'),
    ],
    ids=["plain", "restart-identity", "partitioned"],
)
def test_truncate_names_every_table_once(
    restart: bool, partitioned: tuple[QualifiedName, ...], expected: str
) -> None:
    tables = [QualifiedName("a", "b"), QualifiedName(SCHEMA, TABLE)]
    got = sqlgen.truncate(tables, restart_identity=restart, partitioned=partitioned)
    assert text(got) == expected


def test_one_way_columns_without_equality_are_compared_as_text(make_plan: PlanFactory) -> None:
    json_col = TargetColumn("doc", "pg_catalog", "json", False, False, None, "U", False)
    plan = dataclasses.replace(
        make_plan(["id", "doc", "v"], ["id"], types={"doc": json_col}), one_way=(1, 2)
    )
    q = text(sqlgen.update_from_stage(plan, 0, [], "p"))
    assert 't."doc"::text IS DISTINCT FROM s."c1"::text' in q
    assert 't."v" IS DISTINCT FROM s."c2")' in q


# --- conflict rules ---------------------------------------------------------------------------

_SETS = ", ".join(f"{c} = EXCLUDED.{c}" for c in Q_COLUMNS[1:])


@pytest.mark.parametrize(
    ("conflict", "unique", "expected"),
    [
        ("source_wins", True, f' ON CONFLICT ("Id") DO UPDATE SET {_SETS}'),
        ("target_wins", True, ' ON CONFLICT ("Id") DO NOTHING'),
        (
            "newer_wins:updated_at",
            True,
            f' ON CONFLICT ("Id") DO UPDATE SET {_SETS} WHERE t."updated_at" IS NULL '
            'OR t."updated_at" <= EXCLUDED."updated_at"',
        ),
        ("source_wins", False, ""),
        ("newer_wins:updated_at", False, ""),
    ],
    ids=[
        "source-wins-overwrites",
        "target-wins-keeps-target-row",
        "newer-wins-compares-timestamps",
        "no-conflict-index-no-clause",
        "no-conflict-index-newer-wins-no-clause",
    ],
)
def test_on_conflict_follows_the_table_conflict_rule(
    hostile: Callable[..., TablePlan], conflict: str, unique: bool, expected: str
) -> None:
    plan = hostile(conflict, unique=unique)
    assert plan.conflict_index is unique
    assert text(sqlgen.on_conflict(plan)) == expected


@pytest.mark.parametrize(
    ("conflict", "tracked", "refused"),
    [("target_wins", True, True), ("target_wins", False, False), ("source_wins", True, False)],
    ids=["target-wins-tracked", "target-wins-untracked", "source-wins"],
)
def test_delete_conflicts_log_the_deletes_target_wins_refuses(
    hostile: Callable[..., TablePlan], conflict: str, tracked: bool, refused: bool
) -> None:
    plan = dataclasses.replace(hostile(conflict), commit_timestamps=tracked)
    rendered = text(sqlgen.log_delete_conflicts(plan, "p"))
    assert "'delete_missing'" in rendered
    assert "'delete_older'" in rendered
    # the guard of delete_from_stage, negated: exactly the deletes it leaves alone
    assert ("pg_xact_commit_timestamp" in rendered) is refused
    assert ("pg_xact_commit_timestamp" in text(sqlgen.delete_from_stage(plan))) is refused


def test_on_conflict_of_a_key_only_table_does_nothing(make_plan: PlanFactory) -> None:
    plan = make_plan(["a", "b"], ["a", "b"])
    assert text(sqlgen.on_conflict(plan)) == ' ON CONFLICT ("a", "b") DO NOTHING'


def test_update_from_stage_under_newer_wins_only_touches_rows_not_newer_on_target(
    hostile: Callable[..., TablePlan],
) -> None:
    rendered = text(sqlgen.update_from_stage(hostile("newer_wins:updated_at"), 0, (), "p"))
    where = rendered.split(" WHERE ", 1)[1]
    assert 't."updated_at"' in where or '"t"."updated_at"' in where


# --- rows matched on their old values -----------------------------------------------------------


def test_update_one_row_sets_changed_columns_and_matches_the_old_row_as_literals(
    make_plan: PlanFactory,
) -> None:
    plan = make_plan(["a", "b", "c"], identity="f")
    rendered = text(sqlgen.update_one_row(plan, [b"1", None, U], [b"2", U, b"\t"]))
    assert rendered == (
        'UPDATE "public"."t" SET "a" = CAST(\'2\' AS "pg_catalog"."text"), '
        '"c" = CAST(\'\t\' AS "pg_catalog"."text") WHERE ctid = '
        '(SELECT ctid FROM "public"."t" WHERE "a" IS NOT DISTINCT FROM '
        'CAST(\'1\' AS "pg_catalog"."text") AND "b" IS NOT DISTINCT FROM '
        'CAST(NULL AS "pg_catalog"."text") LIMIT 1)'
    )


def test_delete_one_row_deletes_a_single_matching_row(make_plan: PlanFactory) -> None:
    plan = make_plan(["a", "b"], identity="f")
    rendered = text(sqlgen.delete_one_row(plan, [b"x", None]))
    assert rendered.startswith(
        'DELETE FROM "public"."t" WHERE ctid = (SELECT ctid FROM "public"."t" WHERE '
    )
    assert rendered.endswith(" LIMIT 1)")
    assert "'x'" in rendered


@pytest.mark.parametrize("name", ["pct%", "50%s"], ids=["percent", "percent-s"])
def test_single_row_statements_carry_no_placeholders_even_with_percent_in_names(
    make_plan: PlanFactory, name: str
) -> None:
    plan = make_plan(["a", name], identity="f")
    for q in (
        sqlgen.update_one_row(plan, [b"1", b"2"], [b"1", b"3"]),
        sqlgen.delete_one_row(plan, [b"1", b"2"]),
    ):
        rendered = text(q)
        # executed without parameters: a '%' in a name is just a character
        assert f'"{name}"' in rendered


# --- COPY text format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (b"plain", b"plain"),
        (b"", b""),
        (None, b"\\N"),
        (U, b"\\N"),
        (b"\\N", b"\\\\N"),
        (b"a\tb", b"a\\tb"),
        (b"a\nb", b"a\\nb"),
        (b"a\rb", b"a\\rb"),
        (b"back\\slash", b"back\\\\slash"),
        (b"\\.", b"\\\\."),
        (b"\t\n\r\\", b"\\t\\n\\r\\\\"),
        ("emoji \N{GRINNING FACE}".encode(), "emoji \N{GRINNING FACE}".encode()),
        (b"'quotes' \"and\" ,commas;", b"'quotes' \"and\" ,commas;"),
    ],
    ids=[
        "plain",
        "empty-string-is-not-null",
        "null",
        "unchanged-toast-fills-the-slot-as-null",
        "literal-backslash-n-is-not-null",
        "tab",
        "newline",
        "carriage-return",
        "backslash",
        "end-of-data-marker",
        "all-specials",
        "utf8",
        "quotes-and-commas-untouched",
    ],
)
def test_copy_value_escapes_what_copy_text_format_needs(value: Datum, encoded: bytes) -> None:
    assert sqlgen.copy_value(value) == encoded


def test_copy_value_refuses_binary_values() -> None:
    with pytest.raises(TypeError, match="BinaryDatum"):
        sqlgen.copy_value(BinaryDatum(b"\x00"))


@pytest.mark.parametrize(
    ("rows", "encoded"),
    [
        ([], b""),
        ([[b"1", b"plain"]], b"1\tplain\n"),
        ([[b"1", None, b""]], b"1\t\\N\t\n"),
        ([[b"1", U]], b"1\t\\N\n"),
        ([[b"a\tb", b"x"]], b"a\\tb\tx\n"),
        ([[b"\\N", b"x"]], b"\\\\N\tx\n"),
        ([[b"line\nbreak"], [b"cr\r"]], b"line\\nbreak\ncr\\r\n"),
        ([[b""]], b"\n"),
        ([[b"1", b"2"], [b"3", None], [b"4", b"t\tb"]], b"1\t2\n3\t\\N\n4\tt\\tb\n"),
    ],
    ids=[
        "no-rows",
        "plain",
        "null-and-empty-string",
        "unchanged-toast-slot",
        "tab-in-value",
        "literal-backslash-n",
        "newline-and-carriage-return",
        "one-empty-value",
        "mixed-rows",
    ],
)
def test_copy_rows_are_escaped_tab_separated_lines_each_ending_in_newline(
    rows: list[list[Datum]], encoded: bytes
) -> None:
    assert sqlgen.copy_rows(rows) == encoded
    assert sqlgen.copy_rows(tuple(tuple(r) for r in rows)) == encoded


def test_stage_lines_put_deletes_then_update_groups_then_inserts(
    make_plan: PlanFactory,
) -> None:
    plan = make_plan(["id", "v", "big"], ["id"])
    t1 = Begin(Lsn("0/10"), 7, 100)
    data = sqlgen.stage_lines(
        plan,
        deleted=[((b"1",), t1), ((b"2",), None)],
        update_groups=[
            (0, [((b"3",), [b"3", b"a\tb", b"big"], t1)]),
            (1, [((b"4",), [b"40", b"", U], t1), ((b"5",), [b"5", None, U], None)]),
        ],
        inserts=[([b"6", b"\\N", b"x"], t1)],
    )
    assert data.split(b"\n") == [
        # _op, _g, _lsn, _ts, k0, c0, c1, c2
        b"D\t\\N\t0/10\t7\t1\t\\N\t\\N\t\\N",
        b"D\t\\N\t\\N\t\\N\t2\t\\N\t\\N\t\\N",
        b"U\t0\t0/10\t7\t3\t3\ta\\tb\tbig",
        b"U\t1\t0/10\t7\t4\t40\t\t\\N",
        b"U\t1\t\\N\t\\N\t5\t5\t\\N\t\\N",
        b"I\t\\N\t0/10\t7\t\\N\t6\t\\\\N\tx",
        b"",
    ]
    stage_columns = 4 + len(plan.key) + len(plan.columns)
    assert all(line.count(b"\t") == stage_columns - 1 for line in data.split(b"\n")[:-1])


def test_stage_lines_of_nothing_is_empty(make_plan: PlanFactory) -> None:
    assert sqlgen.stage_lines(make_plan(["id"], ["id"]), [], [], []) == b""


def test_stage_types_use_each_columns_base_type(make_plan: PlanFactory) -> None:
    domain_base = TargetColumn("n", "pg_catalog", "int4", False, False, None, "N", True)
    custom = TargetColumn("m", "My Types", "Mood", False, False, None, "E", True)
    plan = make_plan(
        ["id", "n", "m"], ["id"], types={"id": text_column("id"), "n": domain_base, "m": custom}
    )
    assert '"c1" "pg_catalog"."int4", "c2" "My Types"."Mood"' in text(sqlgen.create_stage(plan))
