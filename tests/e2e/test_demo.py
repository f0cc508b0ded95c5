"""``replicator demo`` end to end, small: two clusters, both pipelines, a short day of
traffic, and a verification table that must say every table equal, every masked column
masked and the delay within the seed's 5 seconds (exit code 0)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from replicator.config import load_config
from tests.plugins.pg import INSTALLS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smart.toml"
# a table row of the verification table starts with its pipeline's name in the first cell
_ROW = re.compile(r"^│ (?P<pipeline>[a-z_]+) +│ (?P<tables>\S+ -> \S+)")
# a row of the delay table: pipeline (flow) │ heartbeats │ p50 │ p99 │ max │ dead │ conflicts
_DELAY = re.compile(
    r"^│ (?P<pipeline>[a-z_]+) \(.*?\) +│ +(?P<heartbeats>\d+) │.*│ +(?P<dead>\d+) │ +\d+ │"
    r" (?P<result>within target|measured|MISSED)"
)


@pytest.mark.parametrize("major", [i.major for i in INSTALLS], ids=lambda m: f"pg{m}")
def test_demo_verifies_every_table_equal_and_every_masked_column_masked(major: int) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "replicator",
            "demo",
            "--pg-version",
            str(major),
            # small and quick: 2,000 profiles (scale 0.02: ~13K changes), a 5-second day
            *("--rows", "2000", "--seconds", "5", "--max-delay", "0", "--no-live"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    out = proc.stdout
    context = (
        f"exit {proc.returncode}\n--- stdout ---\n{out[-6000:]}\n"
        f"--- stderr ---\n{proc.stderr[-3000:]}"
    )
    config = load_config(EXAMPLE)
    expected = {
        (p.name, f"{t.source} -> {t.target_name}"): bool(t.mask)
        for p in config.pipelines
        for t in p.tables
    }
    rows = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:
            rows[(m["pipeline"], m["tables"])] = line
    assert set(rows) == set(expected), context
    for key, line in rows.items():
        assert "│ equal │" in line, f"{key}: {line}"
        if expected[key]:
            assert "│ masked: " in line, f"{key}: {line}"
    assert "DIFFER" not in out
    assert "NOT MASKED" not in out
    # the delay is measured and shown (--max-delay 0), not judged: a test asserts no
    # wall-clock time; the demo's own default judges it against the seed's 5 s
    delays = {m["pipeline"]: m for m in map(_DELAY.match, out.splitlines()) if m}
    assert set(delays) == {p.name for p in config.pipelines}, context
    for m in delays.values():
        assert int(m["heartbeats"]) > 0, context
        assert m["dead"] == "0", context
    assert re.search(r"^daemon: exit code 0, 0 error line\(s\)", out, re.M), context
    assert "RESULT: PASS" in out, context
    assert proc.returncode == 0, context
