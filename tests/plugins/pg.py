"""pytest plugin: real PostgreSQL clusters, a fresh database pair per test, the daemon.

Clusters are started once per session and PostgreSQL version (every version
``localpg.discover()`` finds: Debian's 15 and the embedded wheel's 18 here), as
a source and a target with ``wal_level=logical``, each on its own port with its
unix socket in a temporary directory, run by the ``postgres`` OS user.

Tests that take ``dbs`` run once per version, each in new databases that are
dropped afterwards (with their slots and origins). ``REPLICATOR_REQUIRE_PG``
(e.g. ``15,18``) makes a missing version fail the session instead of shrinking
the matrix: CI sets it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from replicator import localpg
from tests.support import toml_dumps, wait_until

INSTALLS = localpg.discover()


def pytest_sessionstart(session: pytest.Session) -> None:
    required = os.environ.get("REPLICATOR_REQUIRE_PG", "")
    have = {i.major for i in INSTALLS}
    missing = [v for v in required.split(",") if v.strip() and int(v) not in have]
    if missing:
        pytest.exit(
            f"PostgreSQL {', '.join(missing)} required (REPLICATOR_REQUIRE_PG) but not found; "
            f"found: {sorted(have) or 'none'}",
            returncode=1,
        )


def pytest_report_header(config: pytest.Config) -> str:
    found = ", ".join(f"{i.major} ({i.origin}: {i.bindir})" for i in INSTALLS) or "none"
    return f"postgresql: {found}"


@dataclass
class ClusterPair:
    major: int
    src: localpg.LocalCluster
    dst: localpg.LocalCluster


@dataclass
class DbPair:
    """A fresh source and target database on one version's clusters."""

    name: str
    pair: ClusterPair
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def major(self) -> int:
        return self.pair.major

    @property
    def src(self) -> str:
        return self.pair.src.conninfo(self.name)

    @property
    def dst(self) -> str:
        return self.pair.dst.conninfo(self.name)

    @property
    def pipeline(self) -> str:
        return f"p_{self.name}"

    def config(
        self,
        tables: list[dict[str, Any]],
        *,
        pipeline: dict[str, Any] | None = None,
        masking: dict[str, Any] | None = None,
        service: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "service": {
                "health": None,
                "log_format": "json",
                "log_level": "info",
                **(service or {}),
            },
            "databases": {"src": {"dsn": self.src}, "dst": {"dsn": self.dst}},
            "pipeline": [
                {
                    "name": self.pipeline,
                    "from": "src",
                    "to": "dst",
                    **(pipeline or {}),
                    "table": tables,
                },
            ],
        }
        if cfg["service"]["health"] is None:
            cfg["service"]["health"] = ""  # off: test daemons must not share a port
        if masking:
            cfg["masking"] = masking
        return cfg


_pairs: dict[int, ClusterPair] = {}
_root: Path | None = None


def _cluster_root() -> Path:
    global _root  # noqa: PLW0603 - one directory for the whole session
    if _root is None:
        _root = localpg.make_root("rtest-")
    return _root


def get_pair(major: int) -> ClusterPair:
    """The session's source and target clusters of one version, started on first use."""
    if major not in _pairs:
        install = next(i for i in INSTALLS if i.major == major)
        root = _cluster_root()
        settings = {"max_prepared_transactions": "10", "wal_sender_timeout": "10s"}
        src = localpg.LocalCluster(install, root, f"src{major}", settings=settings).init().start()
        dst = localpg.LocalCluster(install, root, f"dst{major}", settings=settings).init().start()
        _pairs[major] = ClusterPair(major, src, dst)
    return _pairs[major]


@pytest.fixture(
    scope="session", params=[i.major for i in INSTALLS], ids=[f"pg{i.major}" for i in INSTALLS]
)
def pg_pair(request: pytest.FixtureRequest) -> ClusterPair:
    return get_pair(request.param)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for pair in _pairs.values():
        pair.src.destroy()
        pair.dst.destroy()
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)


def _drop_database(cluster: localpg.LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
        ).fetchall():
            with contextlib.suppress(psycopg.Error):
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND active_pid IS NOT NULL",
                    [slot],
                )
                wait_until(
                    lambda s=slot: (
                        conn.execute(
                            "SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", [s]
                        ).fetchone()
                        in (None, (True,))
                    ),
                    timeout=10,
                    reason=f"slot {slot} released",
                )
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        for (origin,) in conn.execute(
            "SELECT roname FROM pg_replication_origin WHERE roname LIKE %s", [f"%{name}%"]
        ).fetchall():
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_replication_origin_drop(%s)", [origin])


@pytest.fixture
def dbs(pg_pair: ClusterPair) -> Iterator[DbPair]:
    name = "t_" + uuid.uuid4().hex[:12]
    for cluster in (pg_pair.src, pg_pair.dst):
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield DbPair(name, pg_pair)
    for cluster in (pg_pair.src, pg_pair.dst):
        _drop_database(cluster, name)


# --- the daemon as a subprocess ----------------------------------------------------------


class DaemonProcess:
    """``replicator run`` in a subprocess, its log kept in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        assert self.proc is None or self.proc.poll() is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replicator", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def setup(self) -> subprocess.CompletedProcess[str]:
        return run_cli("setup", "-c", str(self.config_path))


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replicator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    """``daemon(config_dict)`` writes the config, runs setup and starts the daemon."""
    started: list[DaemonProcess] = []

    def make(
        config: dict[str, Any],
        *,
        setup: bool = True,
        start: bool = True,
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        path = tmp_path / f"replicator{len(started)}.toml"
        path.write_text(toml_dumps(config))
        d = DaemonProcess(path, tmp_path / f"daemon{len(started)}.log", env)
        started.append(d)
        if setup:
            res = d.setup()
            assert res.returncode == 0, f"setup failed:\n{res.stdout}\n{res.stderr}"
        if start:
            d.start()
        return d

    make.started = started  # type: ignore[attr-defined]  # read by the report hook below
    yield make
    for d in started:
        if d.alive():
            d.kill()


_LOG_TAIL_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran daemons shows the end of their logs: a CI failure can then be
    read from its output alone. The logs hold no unmasked values (see test_leaks)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    make = getattr(item, "funcargs", {}).get("daemon")
    for d in getattr(make, "started", ()):
        lines = d.log_text().splitlines()[-_LOG_TAIL_LINES:]
        report.sections.append((f"{d.log_path.name} (last {len(lines)} lines)", "\n".join(lines)))


def wait_for_equal(
    src: str,
    dst: str,
    tables: list[str],
    *,
    timeout: float = 60,
    target_tables: list[str] | None = None,
) -> None:
    from tests.support import snapshot  # noqa: PLC0415

    targets = target_tables or tables

    def same() -> bool:
        return all(
            snapshot(src, s) == snapshot(dst, t) for s, t in zip(tables, targets, strict=True)
        )

    wait_until(same, timeout=timeout, reason=f"target equals source for {tables}")


@pytest.fixture
def deadline() -> float:
    return time.monotonic() + 120


# --- two databases replicating both ways ---------------------------------------------------

_MAJORS = [i.major for i in INSTALLS]
TWO_WAY = [(m, m) for m in _MAJORS] + ([(_MAJORS[0], _MAJORS[-1])] if len(_MAJORS) > 1 else [])


@dataclass
class TwoWay:
    """Database ``a`` (warehouse side) and ``b`` (portal side), each on its own cluster."""

    name: str
    a_cluster: localpg.LocalCluster
    b_cluster: localpg.LocalCluster

    @property
    def a(self) -> str:
        return self.a_cluster.conninfo(self.name)

    @property
    def b(self) -> str:
        return self.b_cluster.conninfo(self.name)

    def config(
        self,
        a_to_b: list[dict[str, Any]],
        b_to_a: list[dict[str, Any]],
        *,
        a_to_b_options: dict[str, Any] | None = None,
        b_to_a_options: dict[str, Any] | None = None,
        masking: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "service": {"log_format": "json", "health": ""},
            "databases": {"a": {"dsn": self.a}, "b": {"dsn": self.b}},
            "pipeline": [
                {
                    "name": f"ab_{self.name}",
                    "from": "a",
                    "to": "b",
                    # merge: a two-way table's first copy must not truncate the other side
                    "snapshot": "merge",
                    **(a_to_b_options or {}),
                    "table": a_to_b,
                },
                {
                    "name": f"ba_{self.name}",
                    "from": "b",
                    "to": "a",
                    # merge: a two-way table's first copy must not truncate the other side
                    "snapshot": "merge",
                    **(b_to_a_options or {}),
                    "table": b_to_a,
                },
            ],
        }
        if masking:
            cfg["masking"] = masking
        return cfg


@pytest.fixture(params=TWO_WAY, ids=[f"pg{x}" if x == y else f"pg{x}-pg{y}" for x, y in TWO_WAY])
def two_way(request: pytest.FixtureRequest) -> Iterator[TwoWay]:
    x, y = request.param
    a_cluster, b_cluster = get_pair(x).src, get_pair(y).dst
    name = "w_" + uuid.uuid4().hex[:12]
    for cluster in (a_cluster, b_cluster):
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield TwoWay(name, a_cluster, b_cluster)
    for cluster in (a_cluster, b_cluster):
        _drop_database(cluster, name)
