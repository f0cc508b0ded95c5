"""The DBA scripts as files: one source of truth for the control schema, and the
conventions every script follows (usage at the top, stop on the first error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.control import control_ddl

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "sql").glob("*/*.sql"))


def test_target_control_sql_is_the_packaged_file():
    """replicator/sql/control.sql is the source of truth (the daemon runs it at start);
    sql/target/control.sql is its copy for DBAs. After editing the packaged file:
    cp replicator/sql/control.sql sql/target/control.sql"""
    assert (ROOT / "sql" / "target" / "control.sql").read_text() == control_ddl()


def test_there_are_scripts():
    names = {str(p.relative_to(ROOT / "sql")) for p in SCRIPTS}
    assert {
        "source/roles.sql",
        "source/publication.sql",
        "source/slot_health.sql",
        "target/roles.sql",
        "target/control.sql",
        "target/pause.sql",
    } <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_starts_with_a_comment_saying_what_it_does(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("-- replicator"), first


@pytest.mark.parametrize(
    "path",
    [p for p in SCRIPTS if p.name != "control.sql"],  # control.sql also runs through psycopg
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_psql_script_stops_on_the_first_error(path: Path):
    text = path.read_text()
    assert "\\set ON_ERROR_STOP on" in text
    assert "Usage" in text
