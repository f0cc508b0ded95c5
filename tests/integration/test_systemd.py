"""systemd: the daemon's sd_notify datagrams on a fake NOTIFY_SOCKET, and the unit files
checked by ``systemd-analyze verify`` and ``security`` (skipped only without the tool)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.pg import wait_for_equal
from tests.support import execute, wait_until

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BINARY = "/opt/replicator/venv/bin/replicator"
MAX_EXPOSURE = 2.5  # systemd-analyze rates <= 2.9 "OK"; we hold a margin below it


# --- sd_notify ----------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    # a short directory: AF_UNIX paths stop at 108 bytes, pytest's tmp_path can be longer
    directory = tempfile.mkdtemp(prefix="rn-")
    path = str(Path(directory) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.extend(sock.recv(65536).decode().split("\n"))
        except BlockingIOError:
            return into


def test_daemon_tells_systemd_ready_status_watchdog_and_stopping(dbs, daemon, notify_socket):
    path, sock = notify_socket
    execute(dbs.src, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(dbs.dst, "CREATE TABLE t (id int PRIMARY KEY)")
    d = daemon(
        dbs.config([{"source": "t"}]),
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"},
    )
    got: list[str] = []
    wait_until(lambda: "READY=1" in drain(sock, got), timeout=60, reason="READY=1 once streaming")
    execute(dbs.src, "INSERT INTO t SELECT generate_series(1, 100)")
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    wait_until(
        lambda: drain(sock, got).count("WATCHDOG=1") >= 2,
        timeout=30,
        reason="WATCHDOG=1, repeatedly, while streaming",
    )
    statuses = [f for f in got if f.startswith("STATUS=")]
    assert statuses[0].startswith("STATUS=1 starting")
    assert any(f.startswith("STATUS=1 streaming") for f in statuses), statuses
    assert "STOPPING=1" not in got
    assert d.stop() == 0
    drain(sock, got)
    assert got.count("STOPPING=1") == 1
    assert got.index("READY=1") < got.index("STOPPING=1")
    assert all(re.fullmatch(r"[A-Z_]+=.*", f) for f in got), got


# --- unit files ---------------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)
UNIT_FILES = pytest.mark.parametrize(
    ("unit", "instance"),
    [
        ("replicator.service", "replicator.service"),
        ("replicator@.service", "replicator@test.service"),
    ],
    ids=["service", "template"],
)


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--no-pager", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def runnable_copy(unit: str, directory: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's ``replicator`` entry point:
    verify checks that the binary exists, and /opt is not installed on a test machine."""
    entry = Path(sys.executable).with_name("replicator")
    assert entry.exists(), entry
    text = (UNITS / unit).read_text()
    assert INSTALLED_BINARY in text
    copy = directory / unit
    copy.write_text(text.replace(INSTALLED_BINARY, str(entry)))
    return copy


@needs_systemd_analyze
@UNIT_FILES
def test_unit_file_verifies_without_unknown_or_bad_directives(unit, instance, tmp_path):
    # as shipped: the only complaint allowed is the binary not installed on this machine
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copy(UNITS / unit, shipped / unit)
    res = analyze("verify", f"./{instance}", cwd=shipped)
    complaints = [line for line in res.stderr.splitlines() if line and INSTALLED_BINARY not in line]
    assert complaints == [], res.stderr
    # with a binary that exists: nothing at all to say
    runnable_copy(unit, tmp_path)
    res = analyze("verify", f"./{instance}", cwd=tmp_path)
    assert (res.returncode, res.stderr.strip()) == (0, ""), res.stderr


@needs_systemd_analyze
@UNIT_FILES
def test_unit_file_rates_well_in_systemd_analyze_security(unit, instance, tmp_path):
    runnable_copy(unit, tmp_path)
    res = analyze("security", "--offline=true", f"./{instance}", cwd=tmp_path)
    if res.returncode != 0 and "offline" in res.stderr:
        pytest.skip(f"systemd-analyze security --offline unsupported: {res.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", res.stdout)
    assert m, res.stdout + res.stderr
    score = float(m[1])
    print(f"{instance}: exposure {score} {m[2]}")
    failing = [line for line in res.stdout.splitlines() if line.startswith("✗")]
    assert score <= MAX_EXPOSURE, "\n".join(failing)
