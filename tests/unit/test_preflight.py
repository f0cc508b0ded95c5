"""The preflight's pure rules and its output, without a database."""

from __future__ import annotations

import orjson
import pytest

from replicator.config import QualifiedName, TableConfig, config_from_dict
from replicator.masking import parse_mask
from replicator.preflight import Finding, Report, format_report, report_json
from replicator.preflight.columns import ColumnType, column_findings, compare_types
from replicator.preflight.rules import (
    identity_findings,
    keep_size_finding,
    sequence_finding,
    slot_findings,
    slot_headroom_findings,
    two_way_pairs,
    wal_level_finding,
    wal_sender_findings,
)

TYPES = {
    # name: (schema, typname, category, typmod, display)
    "int2": ("pg_catalog", "int2", "N", -1, "smallint"),
    "int4": ("pg_catalog", "int4", "N", -1, "integer"),
    "int8": ("pg_catalog", "int8", "N", -1, "bigint"),
    "float4": ("pg_catalog", "float4", "N", -1, "real"),
    "float8": ("pg_catalog", "float8", "N", -1, "double precision"),
    "numeric": ("pg_catalog", "numeric", "N", -1, "numeric"),
    "numeric(10,2)": ("pg_catalog", "numeric", "N", (10 << 16 | 2) + 4, "numeric(10,2)"),
    "numeric(5,1)": ("pg_catalog", "numeric", "N", (5 << 16 | 1) + 4, "numeric(5,1)"),
    "numeric(12,2)": ("pg_catalog", "numeric", "N", (12 << 16 | 2) + 4, "numeric(12,2)"),
    "numeric(10,4)": ("pg_catalog", "numeric", "N", (10 << 16 | 4) + 4, "numeric(10,4)"),
    "text": ("pg_catalog", "text", "S", -1, "text"),
    "varchar": ("pg_catalog", "varchar", "S", -1, "character varying"),
    "varchar(10)": ("pg_catalog", "varchar", "S", 14, "character varying(10)"),
    "varchar(20)": ("pg_catalog", "varchar", "S", 24, "character varying(20)"),
    "varchar(36)": ("pg_catalog", "varchar", "S", 40, "character varying(36)"),
    "uuid": ("pg_catalog", "uuid", "U", -1, "uuid"),
    "bool": ("pg_catalog", "bool", "B", -1, "boolean"),
    "json": ("pg_catalog", "json", "U", -1, "json"),
    "jsonb": ("pg_catalog", "jsonb", "U", -1, "jsonb"),
    "date": ("pg_catalog", "date", "D", -1, "date"),
    "timestamp": ("pg_catalog", "timestamp", "D", -1, "timestamp without time zone"),
    "timestamptz": ("pg_catalog", "timestamptz", "D", -1, "timestamp with time zone"),
    "timestamptz(0)": ("pg_catalog", "timestamptz", "D", 0, "timestamp(0) with time zone"),
    "mood": ("public", "mood", "E", -1, "mood"),
}


def col(name: str, typ: str, **kw: object) -> ColumnType:
    schema, typname, category, typmod, display = TYPES[typ]
    return ColumnType(name, schema, typname, category, typmod, display, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("src", "dst", "cast", "severity", "words"),
    [
        ("int8", "int4", None, "error", "outside ±2147483647"),
        ("int4", "int2", None, "error", "outside ±32767"),
        ("numeric", "int8", None, "error", "fractional"),
        ("int4", "int8", "i", None, ""),
        ("int2", "numeric", "i", None, ""),
        ("int8", "numeric(10,2)", "i", "warning", "more than 8 integer digits"),
        ("float8", "float4", "a", "warning", "precision"),
        ("text", "varchar(10)", None, "warning", "longer than 10"),
        ("varchar(20)", "varchar(10)", None, "warning", "longer than 10"),
        ("varchar(10)", "varchar(20)", None, None, ""),
        ("varchar(10)", "text", "i", None, ""),
        ("uuid", "varchar(36)", None, None, ""),
        ("uuid", "varchar(10)", None, "warning", "longer than 10"),
        ("int8", "text", None, None, ""),
        ("text", "int4", None, "warning", "valid integer input"),
        ("numeric(10,2)", "numeric(5,1)", None, "warning", "large values fail"),
        ("numeric(10,2)", "numeric(12,2)", None, None, ""),
        ("numeric(10,2)", "numeric(10,4)", None, "warning", "large values fail"),
        ("numeric(12,2)", "numeric", None, None, ""),
        ("timestamptz", "timestamp", None, "warning", "time zone is dropped"),
        ("timestamp", "timestamptz", "i", "warning", "TimeZone"),
        ("timestamptz", "date", "a", "warning", "time of day"),
        ("timestamptz", "timestamptz(0)", None, "warning", "precision or length shrinks"),
        ("json", "jsonb", None, None, ""),
        ("bool", "int4", "e", "error", "no implicit or assignment cast"),
        ("mood", "uuid", "missing", "error", "does not exist on the target"),
        ("uuid", "bool", "a", "warning", "only an assignment cast"),
    ],
    ids=str,
)
def test_type_compatibility(src, dst, cast, severity, words):
    problem = compare_types(col("c", src), col("c", dst), cast, table="public.t")
    if severity is None:
        assert problem is None
        return
    assert problem is not None
    assert problem[0] == severity
    assert words in problem[1]
    assert problem[2]  # always a fix


def test_narrowing_fix_names_the_table_and_column():
    problem = compare_types(col("Big", "int8"), col("Big", "int4"), None, table="sales.orders")
    assert problem is not None
    assert problem[2] == 'ALTER TABLE sales.orders ALTER COLUMN "Big" TYPE bigint'


def test_enum_labels_missing_on_the_target_are_an_error():
    src = col("m", "mood", enum_labels=("sad", "ok", "happy"))
    assert (
        compare_types(src, col("m", "mood", enum_labels=("sad", "ok", "happy", "x")), None) is None
    )
    problem = compare_types(src, col("m", "mood", enum_labels=("sad", "ok")), None)
    assert problem is not None
    assert problem[0] == "error"
    assert "'happy'" in problem[1]


def _table(**kw: object) -> TableConfig:
    return TableConfig.model_validate({"source": "t", **kw})


def test_column_findings_list_every_column_problem():
    table = _table(exclude=["skip"], columns={"renamed": "new_name"})
    source = [
        col("id", "int8", not_null=True),
        col("gone", "text"),
        col("skip", "text"),
        col("renamed", "int8"),
        col("maybe", "text"),
        col("gen", "int4", generated=True),
    ]
    target = {
        "id": col("id", "int4", not_null=True),
        "new_name": col("new_name", "int8"),
        "maybe": col("maybe", "text", not_null=True),
        "required": col("required", "text", not_null=True),
        "defaulted": col("defaulted", "text", not_null=True, has_default=True),
        "ident": col("ident", "int8", not_null=True, identity=True),
    }
    found = column_findings("b", "p", table, source=source, target=target, casts={}, masks={})
    assert [(f.severity, f.check, f.obj) for f in found] == [
        ("error", "type", "b:public.t.id"),
        ("error", "column", "b:public.t"),  # gone: no target column
        ("warning", "nullability", "b:public.t.maybe"),
        ("error", "column", "b:public.t.required"),  # NOT NULL, no default, not written
    ]
    assert "source column public.t.gone has no target column 'gone'" in found[1].message


def test_masked_columns_are_checked_by_what_the_mask_writes():
    table = _table(mask={"email": "email", "code": "hash", "gone": "null"})
    source = [col("email", "text"), col("code", "text"), col("gone", "text")]
    target = {
        "email": col("email", "varchar(10)"),
        "code": col("code", "varchar(10)"),  # hash: 64 chars, the table plan refuses it
        "gone": col("gone", "int4"),
    }
    masks = {"email": parse_mask("email"), "code": parse_mask("hash"), "gone": parse_mask("null")}
    found = column_findings("b", "p", table, source=source, target=target, casts={}, masks=masks)
    assert [(f.severity, f.obj) for f in found] == [("warning", "b:public.t.email")]
    assert "mask email" in found[0].message


def test_wal_level_must_be_logical():
    assert wal_level_finding("src", "logical") is None
    f = wal_level_finding("src", "replica")
    assert f is not None
    assert (f.severity, f.check, f.obj) == ("error", "wal_level", "src")


@pytest.mark.parametrize(
    ("used", "missing", "severity"),
    [(0, 1, None), (8, 1, "warning"), (9, 1, "warning"), (10, 1, "error")],
    ids=["room", "no-room-for-resync", "exactly-full", "over"],
)
def test_slot_headroom(used, missing, severity):
    found = slot_headroom_findings("src", max_slots=10, used=used, missing=missing, pipelines=2)
    assert [f.severity for f in found] == ([severity] if severity else [])


def test_wal_sender_headroom():
    assert wal_sender_findings("s", max_senders=10, in_use=0, needed=2, pipelines=2) == []
    over = wal_sender_findings("s", max_senders=2, in_use=1, needed=2, pipelines=2)
    assert [f.severity for f in over] == ["error"]
    assert "max_wal_senders = 5" in (over[0].fix or "")


def test_unlimited_slot_wal_keep_size_gets_advice():
    assert keep_size_finding("src", "50GB") is None
    f = keep_size_finding("src", "-1")
    assert f is not None
    assert f.severity == "warning"
    assert "max_slot_wal_keep_size" in (f.fix or "")


def _pipe():
    return config_from_dict(
        {
            "databases": {"a": {"dsn": "dbname=a"}, "b": {"dsn": "dbname=b"}},
            "pipeline": [{"name": "p", "from": "a", "to": "b", "table": [{"source": "t"}]}],
        }
    ).pipelines[0]


def _slot(**kw: object) -> dict[str, object]:
    return {
        "slot_type": "logical",
        "plugin": "pgoutput",
        "database": "a",
        "wal_status": "reserved",
        **kw,
    }


@pytest.mark.parametrize(
    ("slot", "has_run", "expected"),
    [
        (None, False, [("info", "not created yet")]),
        (None, True, [("error", "missing, but the pipeline has run")]),
        (_slot(), True, []),
        (_slot(wal_status="lost"), True, [("error", "invalidated")]),
        (
            _slot(wal_status="lost", invalidation_reason="wal_removed"),
            True,
            [("error", "invalidated (wal_removed)")],
        ),
        (_slot(wal_status="unreserved"), True, [("warning", "about to be invalidated")]),
        (_slot(plugin="test_decoding"), False, [("error", "not a pgoutput")]),
        (_slot(database="zz"), False, [("error", "belongs to database 'zz'")]),
        (_slot(active=True, active_pid=7), True, [("info", "pid 7")]),
    ],
    ids=[
        "missing-new",
        "missing-after-run",
        "fine",
        "lost",
        "lost-pg17",
        "unreserved",
        "plugin",
        "database",
        "active",
    ],
)
def test_slot_state(slot, has_run, expected):
    found = slot_findings("a", _pipe(), slot, has_run=has_run, dbname="a")
    assert len(found) == len(expected)
    for f, (severity, words) in zip(found, expected, strict=True):
        assert f.severity == severity
        assert words in f.message


@pytest.mark.parametrize(
    ("identity", "has_key", "publishes", "severity"),
    [
        ("d", True, True, None),
        ("d", False, True, "error"),
        ("n", False, True, "error"),
        ("i", False, True, "error"),
        ("d", False, False, "info"),
        ("f", True, True, None),  # no plan given: nothing to say about its key
    ],
    ids=["pk", "no-pk", "nothing", "index-dropped", "insert-only-publication", "full"],
)
def test_replica_identity(identity, has_key, publishes, severity):
    found = identity_findings(
        "a",
        "p",
        QualifiedName("public", "t"),
        identity=identity,
        has_key_columns=has_key,
        publishes_changes=publishes,
        plan=None,
    )
    assert [f.severity for f in found] == ([severity] if severity else [])


def test_full_identity_without_any_key_is_a_warning(make_plan):
    plan = make_plan(["a", "b"], identity="f", target_pk=())
    assert plan.mode == "full_row"
    found = identity_findings(
        "a",
        "p",
        QualifiedName("public", "t"),
        identity="f",
        has_key_columns=True,
        publishes_changes=True,
        plan=plan,
    )
    assert [(f.severity, f.check) for f in found] == [("warning", "replica_identity")]
    keyed = make_plan(["a", "b"], identity="f", target_pk=["a"])
    assert (
        identity_findings(
            "a",
            "p",
            QualifiedName("public", "t"),
            identity="f",
            has_key_columns=True,
            publishes_changes=True,
            plan=keyed,
        )
        == []
    )


def test_two_way_pairs_and_their_sequences():
    cfg = config_from_dict(
        {
            "databases": {"a": {"dsn": "dbname=a"}, "b": {"dsn": "dbname=b"}},
            "pipeline": [
                {
                    "name": "ab",
                    "from": "a",
                    "to": "b",
                    "snapshot": "merge",
                    "table": [{"source": "s.x", "target": "t.x"}, {"source": "s.only"}],
                },
                {
                    "name": "ba",
                    "from": "b",
                    "to": "a",
                    "snapshot": "merge",
                    "table": [{"source": "t.x", "target": "s.x"}],
                },
            ],
        }
    )
    pairs = two_way_pairs(cfg)
    assert [(p.name, str(t.source), q.name) for p, t, q in pairs] == [("ab", "s.x", "ba")]
    p, t, q = pairs[0]
    assert sequence_finding(p, t, q, {}, {}) is None
    f = sequence_finding(p, t, q, {"id": "s.x_id_seq"}, {})
    assert f is not None
    assert f.severity == "warning"
    assert "on a: id (s.x_id_seq)" in f.message
    assert f.obj == "a:s.x <-> b:t.x"


def test_report_text_lists_errors_first_with_fixes_and_a_verdict():
    report = Report(
        [
            Finding("info", "slot", "a:slot s", "not created yet"),
            Finding("warning", "type", "b:public.t.c", "text -> varchar(5)", "widen it", "p"),
            Finding("error", "wal_level", "a", "wal_level is 'replica'", "set it to logical"),
        ]
    )
    text = format_report(report, source="x.toml")
    assert text.splitlines() == [
        "replicator check: x.toml",
        "ERROR   a: wal_level is 'replica' (wal_level)",
        "        fix: set it to logical",
        "WARNING [p] b:public.t.c: text -> varchar(5) (type)",
        "        fix: widen it",
        "note    a:slot s: not created yet (slot)",
        "FAILED: 1 error(s), 1 warning(s)",
    ]
    assert not report.ok
    doc = orjson.loads(report_json(report, source="x.toml"))
    assert (doc["ok"], doc["errors"], doc["warnings"]) == (False, 1, 1)
    assert doc["findings"][0] == {
        "severity": "error",
        "check": "wal_level",
        "obj": "a",
        "message": "wal_level is 'replica'",
        "fix": "set it to logical",
        "pipeline": None,
    }


def test_warnings_alone_do_not_fail():
    report = Report([Finding("warning", "x", "y", "z")])
    assert report.ok
    assert format_report(report, source="c").endswith("ok: 0 error(s), 1 warning(s)")
