"""Config: TOML in, frozen models out; every problem listed with its key path; no password shown."""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from replicator.config import (
    CONFIG_ENV,
    BatchConfig,
    Conflict,
    Dsn,
    QualifiedName,
    config_from_dict,
    load_config,
)
from replicator.errors import ConfigError

SECRET = "s3cr3t-Pa55"

DOCUMENTED = """
[service]
health = "127.0.0.1:9187"
log_format = "json"

[masking]
unclassified = "allow"
[masking.columns]
"*.mobile" = "partial:4"

[databases.smart_warehouse]
dsn = "host=/var/run/postgresql dbname=smart_warehouse user=replicator"

[databases.smart_citizen]
dsn = "host=/var/run/postgresql dbname=smart_citizen user=replicator"

[[pipeline]]
name = "warehouse_to_citizen"
from = "smart_warehouse"
to = "smart_citizen"

[[pipeline.table]]
source = "eligibility.scheme_master"
target = "public.schemes"
columns = { scheme_code = "code" }
exclude = ["internal_notes"]
conflict = "source_wins"
mask = { income_band = "redact:CONFIDENTIAL", jan_aadhaar = "partial:4", email = "email" }

[[pipeline.table]]
source = 'audit."Log.Entries"'
conflict = "newer_wins:updated_at"

[[pipeline]]
name = "citizen_to_warehouse"
from = "smart_citizen"
to = "smart_warehouse"
publication = "c2w"
slot = "c2w_slot"
snapshot = "skip"
proto_version = 2

[[pipeline.table]]
source = "requests"
key = ["request_id"]
conflict = "target_wins"
"""


PUB_RULE = (
    "must be 1-63 characters of a-z, 0-9, _ and $, not starting with a digit or $ (pgoutput "
    "reads a comma-separated, case-folded list: anything else names another publication, "
    "or several)"
)


def write(tmp_path: Path, text: str, name: str = "replicator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal() -> dict[str, Any]:
    """A valid config as a dict: two databases, one pipeline with three tables."""
    return {
        "databases": {"a": {"dsn": "dbname=a"}, "b": {"dsn": "dbname=b"}},
        "pipeline": [
            {
                "name": "p",
                "from": "a",
                "to": "b",
                "table": [{"source": "s.t0"}, {"source": "s.t1"}, {"source": "s.t2"}],
            }
        ],
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value.problems


# --- valid files ------------------------------------------------------------------------------


def test_documented_example_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DOCUMENTED))
    assert (cfg.service.health, cfg.service.log_format, cfg.service.log_level) == (
        "127.0.0.1:9187",
        "json",
        "info",
    )
    assert (cfg.masking.key_file, cfg.masking.unclassified) == (None, "allow")
    assert str(cfg.masking.columns["*.mobile"]) == "partial:4"
    w2c = cfg.pipeline("warehouse_to_citizen")
    assert (w2c.from_, w2c.to, w2c.snapshot, w2c.proto_version) == (
        "smart_warehouse",
        "smart_citizen",
        "truncate",
        1,
    )
    assert w2c.batch == BatchConfig()
    schemes, log = w2c.tables
    assert schemes.source == QualifiedName("eligibility", "scheme_master")
    assert schemes.target_name == QualifiedName("public", "schemes")
    assert {k: str(v) for k, v in schemes.mask.items()} == {
        "income_band": "redact:CONFIDENTIAL",
        "jan_aadhaar": "partial:4",
        "email": "email",
    }
    assert log.source == QualifiedName("audit", "Log.Entries")
    assert log.target_name == log.source  # default: same schema and name
    assert log.conflict == Conflict("newer_wins", "updated_at")
    assert w2c.table_for("audit", "Log.Entries") is log
    assert w2c.table_for("audit", "log.entries") is None


@pytest.mark.parametrize(
    ("pipeline", "slot", "publication", "origin"),
    [
        (
            "warehouse_to_citizen",
            "replicator_warehouse_to_citizen",
            "replicator_warehouse_to_citizen",
            "replicator_warehouse_to_citizen",
        ),
        ("citizen_to_warehouse", "c2w_slot", "c2w", "replicator_citizen_to_warehouse"),
    ],
    ids=["derived-from-name", "given-explicitly"],
)
def test_slot_publication_and_origin_names(
    tmp_path: Path, pipeline: str, slot: str, publication: str, origin: str
) -> None:
    p = load_config(write(tmp_path, DOCUMENTED)).pipeline(pipeline)
    assert (p.slot_name, p.publication_name, p.origin_name) == (slot, publication, origin)


@pytest.mark.parametrize(
    ("source_column", "target_column"),
    [("scheme_code", "code"), ("internal_notes", None), ("title", "title")],
    ids=["renamed", "excluded", "same-name"],
)
def test_table_maps_source_columns_to_target_columns(
    tmp_path: Path, source_column: str, target_column: str | None
) -> None:
    table = load_config(write(tmp_path, DOCUMENTED)).pipelines[0].tables[0]
    assert table.target_column(source_column) == target_column


def test_config_round_trips_through_its_own_dump(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DOCUMENTED))
    again = config_from_dict(cfg.model_dump(by_alias=True))
    # a dumped DSN is the redacted one, rebuilt by libpq: same settings, maybe reordered
    for name, db in cfg.databases.items():
        assert conninfo_to_dict(again.databases[name].dsn.secret_value) == conninfo_to_dict(
            db.dsn.secret_value
        )
    assert again.model_copy(update={"databases": cfg.databases}) == cfg


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DOCUMENTED))
    with pytest.raises(ValueError, match="frozen"):
        cfg.pipelines[0].name = "other"  # type: ignore[misc]


def test_config_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, DOCUMENTED, "from-env.toml")))
    assert load_config().pipelines[0].name == "warehouse_to_citizen"


def test_hash_mask_with_an_existing_key_file_is_accepted(tmp_path: Path) -> None:
    key = tmp_path / "mask.key"
    key.write_bytes(bytes(32))
    data = minimal()
    data["masking"] = {"key_file": str(key)}
    data["pipeline"][0]["table"][0]["mask"] = {"aadhaar": "hash"}
    assert config_from_dict(data).masking.key_file == str(key)


# --- bad files ----------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _table(i: int, **fields: Any) -> Mutation:
    return lambda d: d["pipeline"][0]["table"][i].update(fields)


def _pipeline(**fields: Any) -> Mutation:
    return lambda d: d["pipeline"][0].update(fields)


def _duplicate_pipeline(d: dict[str, Any]) -> None:
    d["pipeline"].append(copy.deepcopy(d["pipeline"][0]))


BAD = [
    (
        "unknown-mask",
        _table(2, mask={"mobile": "parital"}),
        ["pipeline[0].table[2].mask.mobile: unknown mask 'parital' (expected one of: "
         "redact[:TEXT], partial[:N], email, hash, null, plain)"],
    ),
    (
        "unknown-database",
        _pipeline(**{"from": "nope"}),
        ["pipeline[0].from: unknown database 'nope' (defined: a, b)"],
    ),
    ("unknown-key", _pipeline(tabel=[]), ["pipeline[0].tabel: unknown key"]),
    ("unknown-top-level-key", lambda d: d.update(servce={}), ["servce: unknown key"]),
    (
        "bad-conflict-rule",
        _table(0, conflict="newest"),
        ["pipeline[0].table[0].conflict: unknown conflict rule 'newest' (expected "
         "source_wins, target_wins or newer_wins:<timestamp column>)"],
    ),
    (
        "newer-wins-without-column",
        _table(0, conflict="newer_wins:"),
        ["pipeline[0].table[0].conflict: unknown conflict rule 'newer_wins:' (expected "
         "source_wins, target_wins or newer_wins:<timestamp column>)"],
    ),
    (
        "renamed-and-excluded",
        _table(0, columns={"a": "b"}, exclude=["a"]),
        ["pipeline[0].table[0].columns.a: column is both renamed and excluded"],
    ),
    (
        "two-columns-renamed-to-one",
        _table(1, columns={"a": "z", "b": "z"}),
        ["pipeline[0].table[1].columns.b: also renamed to 'z' from 'a'"],
    ),
    (
        "duplicate-pipeline-names",
        _duplicate_pipeline,
        ["pipeline[1].name: duplicate pipeline name (also pipeline[0])",
         "pipeline[1].slot: slot 'replicator_p' on 'a' is also used by pipeline[0]"],
    ),
    (
        "hash-mask-without-key-file",
        _table(1, mask={"x": "hash"}),
        ["masking.key_file: required: a `hash` mask is configured"],
    ),
    (
        "hash-mask-with-missing-key-file",
        lambda d: d.update(masking={"columns": {"*.x": "hash"}, "key_file": "/nonexistent/k"}),
        ["masking.key_file: /nonexistent/k: no such file (needed by `hash` masks)"],
    ),
    (
        "bad-pipeline-name",
        _pipeline(name="Bad-Name"),
        ["pipeline[0].name: pipeline name 'Bad-Name' must be 1-40 characters of a-z, 0-9 "
         "and _ (it names the slot, publication and origin)"],
    ),
    (
        "into-itself",
        _pipeline(to="a"),
        ["pipeline[0].to: a pipeline cannot replicate a database into itself"],
    ),
    (
        "same-source-twice",
        _table(1, source="s.t0"),
        ["pipeline[0].table[1].source: s.t0 is listed twice (also table[0])",
         "pipeline[0].table[1].target: s.t0 is the target of table[0] too"],
    ),
    (
        "mask-on-excluded-column",
        _table(1, mask={"a": "redact"}, exclude=["a"]),
        ["pipeline[0].table[1].mask.a: mask on an excluded column (it is never sent)"],
    ),
    ("empty-key", _table(1, key=[]), ["pipeline[0].table[1].key: must name at least one column"]),
    (
        "excluded-key-column",
        _table(1, key=["a"], exclude=["a"]),
        ["pipeline[0].table[1].key: key column 'a' is excluded"],
    ),
    (
        "excluded-newer-wins-column",
        _table(1, conflict="newer_wins:ts", exclude=["ts"]),
        ["pipeline[0].table[1].conflict: newer_wins column 'ts' is excluded"],
    ),
    (
        "no-tables",
        _pipeline(table=[]),
        ["pipeline[0].table: a pipeline needs at least one [[pipeline.table]]"],
    ),
    (
        "no-pipelines",
        lambda d: d.update(pipeline=[]),
        ["pipeline: define at least one [[pipeline]]"],
    ),
    (
        "bad-slot-name",
        _pipeline(slot="Bad Slot"),
        ["pipeline[0].slot: slot name 'Bad Slot' must be 1-63 characters of a-z0-9_"],
    ),
    (
        "publication-with-a-comma",
        _pipeline(publication="pub_a,pub_b"),
        ["pipeline[0].publication: publication name 'pub_a,pub_b' " + PUB_RULE],
    ),
    (
        "publication-with-upper-case",
        _pipeline(publication="MyPub"),
        ["pipeline[0].publication: publication name 'MyPub' " + PUB_RULE],
    ),
    (
        "publication-with-a-space",
        _pipeline(publication="pub a"),
        ["pipeline[0].publication: publication name 'pub a' " + PUB_RULE],
    ),
    (
        "publication-quoted",
        _pipeline(publication='"pub"'),
        ["pipeline[0].publication: publication name '\"pub\"' " + PUB_RULE],
    ),
    (
        "bad-proto-version",
        _pipeline(proto_version=5),
        ["pipeline[0].proto_version: input should be 1, 2, 3 or 4"],
    ),
    ("no-databases", lambda d: d.pop("databases"), ["databases: required"]),
    (
        "health-max-connections-zero",
        lambda d: d.setdefault("service", {}).update(health_max_connections=0),
        ["service.health_max_connections: input should be greater than or equal to 1"],
    ),
    (
        "unterminated-quoted-table-name",
        _table(0, source='s."open'),
        ["pipeline[0].table[0].source: expected 'schema.table' or 'table', got 's.\"open'"],
    ),
    (
        "batch-out-of-range",
        _pipeline(batch={"max_changes": 0}),
        ["pipeline[0].batch.max_changes: input should be greater than or equal to 1"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_problem_is_reported_with_its_key_path(mutate: Mutation, expected: list[str]) -> None:
    data = minimal()
    mutate(data)
    assert problems_of(data) == expected


def test_a_bad_file_lists_every_problem_at_once(tmp_path: Path) -> None:
    text = """
    [databases.a]
    dsn = "dbname=a"
    [databases.b]
    dsn = "dbname=b"

    [[pipeline]]
    name = "p"
    from = "a"
    to = "c"
    snapshott = "skip"
    [[pipeline.table]]
    source = "s.t0"
    conflict = "newest"
    [[pipeline.table]]
    source = "s.t1"
    [[pipeline.table]]
    source = "s.t2"
    mask = { mobile = "parital", email = "email:x" }
    """
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == sorted(
        [
            "pipeline[0].to: unknown database 'c' (defined: a, b)",
            "pipeline[0].snapshott: unknown key",
            "pipeline[0].table[0].conflict: unknown conflict rule 'newest' (expected "
            "source_wins, target_wins or newer_wins:<timestamp column>)",
            "pipeline[0].table[2].mask.mobile: unknown mask 'parital' (expected one of: "
            "redact[:TEXT], partial[:N], email, hash, null, plain)",
            "pipeline[0].table[2].mask.email: email takes no argument, got 'email:x'",
        ]
    )
    assert str(info.value).startswith(f"{path}: 5 problem(s)\n")


def test_field_problems_and_cross_checks_are_reported_together() -> None:
    data = minimal()
    _table(2, mask={"mobile": "parital"})(data)
    _table(0, columns={"a": "b"}, exclude=["a"])(data)
    problems = problems_of(data)
    assert "pipeline[0].table[0].columns.a: column is both renamed and excluded" in problems
    assert any(p.startswith("pipeline[0].table[2].mask.mobile: ") for p in problems)


def test_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[databases.a]\ndsn = "dbname=a\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    (problem,) = info.value.problems
    assert problem.startswith("not valid TOML: ")
    assert "line 2" in problem
    assert str(info.value).startswith(str(path))


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["cannot read: No such file or directory"]


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=/tmp dbname=a user=u password={SECRET}",
        f"host=/tmp password='{SECRET} with spaces' dbname=a",
        f"postgresql://u:{SECRET}@db.example:5432/a?sslmode=require",
    ],
    ids=["key-value", "quoted-key-value", "uri"],
)
def test_dsn_password_never_appears_in_str_repr_or_dumps(dsn: str) -> None:
    data = minimal()
    data["databases"]["a"]["dsn"] = dsn
    cfg = config_from_dict(data)
    d = cfg.databases["a"].dsn
    assert SECRET in d.secret_value  # what libpq gets
    shown = [
        str(d),
        repr(d),
        f"{d}",
        d.redacted(),
        str(d.with_options(application_name="x")),
        repr(cfg),
        str(cfg),
        cfg.model_dump_json(),
        str(cfg.model_dump()),
    ]
    for text in shown:
        assert SECRET not in text
    assert "password=********" in str(d)


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=/tmp password='{SECRET}",
        f"host=/tmp password={SECRET} nonsense",
        f"host=/tmp password={SECRET} bogus_option=1",
        f"postgresql://u:{SECRET}@[::1/a",
        f"postgresql://u:{SECRET}@h/a?bogus_option=1",
    ],
    ids=[
        "unterminated-quote",
        "missing-equals",
        "unknown-option",
        "bad-uri-host",
        "uri-unknown-option",
    ],
)
def test_unparsable_dsn_error_never_shows_the_password(dsn: str) -> None:
    data = minimal()
    data["databases"]["a"]["dsn"] = dsn
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    err = info.value
    assert err.problems == [
        "databases.a.dsn: not a valid libpq connection string "
        "(key=value pairs or a postgresql:// URI)"
    ]
    rendered = "".join(traceback.format_exception(err))
    for text in (str(err), repr(err), rendered, *err.problems):
        assert SECRET not in text


def test_dsn_compares_by_full_value_but_shows_only_the_redacted_one() -> None:
    a = Dsn(f"dbname=a password={SECRET}")
    b = Dsn("dbname=a password=other")
    assert a != b
    assert str(a) == str(b)
    assert a == Dsn(f"dbname=a password={SECRET}")
    assert len({a, Dsn(a.secret_value)}) == 1
