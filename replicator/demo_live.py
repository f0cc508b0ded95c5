"""What the demo shows while it runs, and the verification table at the end.

The daemon is observed from outside, as an operator would: its HTTP ``/status``
(:mod:`replicator.health`), or, when the endpoint does not answer, the control tables
on the targets (``replicator.pipelines``, ``tables``, ``dead_letters``, ``conflicts``).
Two views: :class:`LiveView` (rich, redrawn in place) and :class:`PlainView` (one log
line every few seconds, for CI and pipes). Rendering is pure over
:class:`PipelineView` snapshots; only :class:`StatusReader` does I/O.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from replicator.config import Config
from replicator.demo_verify import LATENCY_TARGET_SECONDS, Verdict
from replicator.demo_workload import Stream


@dataclass(frozen=True, slots=True)
class PipelineView:
    """One pipeline as the demo shows it; None where the source cannot tell."""

    name: str
    state: str
    changes: int = 0
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    dead_letters: int = 0
    conflicts: int = 0
    apply_p50: float | None = None
    apply_p99: float | None = None
    copy_rows: Mapping[str, int] = field(default_factory=dict)  # source table -> rows
    copy_done: bool = False
    error: str | None = None


def from_status(doc: Mapping[str, Any]) -> list[PipelineView]:
    """Pipelines from the health endpoint's ``/status`` document."""
    out = []
    for p in doc.get("pipelines", []):
        delays = p.get("apply_delay_seconds") or {}
        copy = p.get("copy") or []
        out.append(
            PipelineView(
                name=p["pipeline"],
                state=p.get("state", "?"),
                changes=int(p.get("changes") or 0),
                lag_seconds=p.get("lag_seconds"),
                lag_bytes=p.get("lag_bytes"),
                dead_letters=int(p.get("dead_letters") or 0),
                conflicts=int(p.get("conflicts") or 0),
                apply_p50=delays.get("p50"),
                apply_p99=delays.get("p99"),
                copy_rows={c["table"]: int(c.get("rows") or 0) for c in copy},
                copy_done=bool(copy) and all(c.get("done") for c in copy),
                error=p.get("last_error"),
            )
        )
    return out


class StatusReader:
    """The daemon's ``/status``; the targets' control tables when it does not answer."""

    def __init__(self, address: str | None, config: Config, dsns: Mapping[str, str]) -> None:
        self.url = f"http://{address}/status" if address else None
        self.config = config
        self.dsns = dsns
        self.source = "starting"

    def read(self) -> list[PipelineView]:
        if self.url:
            try:
                with urllib.request.urlopen(self.url, timeout=1.0) as resp:  # noqa: S310 - our own loopback endpoint
                    doc = json.load(resp)
                self.source = "endpoint"
                return from_status(doc)
            except (OSError, urllib.error.URLError, ValueError):
                pass  # not listening yet, or no endpoint: read the databases instead
        self.source = "databases"
        return [self._from_tables(p.name, p.to) for p in self.config.pipelines]

    def _from_tables(self, name: str, target_db: str) -> PipelineView:
        try:
            with psycopg.connect(self.dsns[target_db], connect_timeout=2) as conn:
                if conn.execute("SELECT to_regclass('replicator.pipelines')").fetchone() == (None,):
                    return PipelineView(name, "starting")
                row = conn.execute(
                    "SELECT state, paused FROM replicator.pipelines WHERE pipeline = %s", [name]
                ).fetchone()
                copy = conn.execute(
                    "SELECT source_schema || '.' || source_table, rows_copied, state"
                    " FROM replicator.tables WHERE pipeline = %s",
                    [name],
                ).fetchall()
                dead = conn.execute(
                    "SELECT count(*) FROM replicator.dead_letters"
                    " WHERE pipeline = %s AND resolved IS NULL",
                    [name],
                ).fetchone()
                conflicts = conn.execute(
                    "SELECT count(*) FROM replicator.conflicts WHERE pipeline = %s", [name]
                ).fetchone()
        except psycopg.Error:
            return PipelineView(name, "unknown")
        state = "starting" if row is None else ("paused" if row[1] else row[0])
        return PipelineView(
            name,
            state,
            dead_letters=int(dead[0]) if dead else 0,
            conflicts=int(conflicts[0]) if conflicts else 0,
            copy_rows={t: int(n) for t, n, _ in copy},
            copy_done=bool(copy) and all(s == "ready" for _, _, s in copy),
        )


class Rates:
    """Changes per second per pipeline over the last few seconds (pure: times passed in)."""

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, now: float, pipelines: Sequence[PipelineView]) -> None:
        for p in pipelines:
            q = self._samples.setdefault(p.name, deque())
            q.append((now, p.changes))
            while len(q) > 2 and now - q[0][0] > self.window:
                q.popleft()

    def rate(self, name: str) -> float | None:
        q = self._samples.get(name)
        if not q or len(q) < 2 or q[-1][0] <= q[0][0]:
            return None
        return max(0.0, (q[-1][1] - q[0][1]) / (q[-1][0] - q[0][0]))


# --- formatting (pure) -----------------------------------------------------------------------


def fmt_seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size: float = n
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:,.0f}/s"


def status_lines(pipelines: Sequence[PipelineView], rates: Rates) -> list[str]:
    """The plain view's lines, one per pipeline: state, rate, lag and counters."""
    width = max((len(p.name) for p in pipelines), default=0)
    lines = []
    for p in pipelines:
        bit = f"{p.name:<{width}}  {p.state:<9}"
        if p.state == "copying":
            bit += f"  copied {sum(p.copy_rows.values()):,} rows"
        else:
            bit += (
                f"  {fmt_rate(rates.rate(p.name)):>9}  applied {p.changes:>9,}"
                f"  lag {fmt_seconds(p.lag_seconds):>8}"
            )
        bit += f"  dead letters {p.dead_letters}  conflicts {p.conflicts}"
        if p.error:
            bit += f"  error: {p.error}"
        lines.append(bit)
    return lines


def pipelines_table(pipelines: Sequence[PipelineView], rates: Rates) -> Table:
    table = Table(title="pipelines", title_justify="left", expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("pipeline", "left"),
        ("state", "left"),
        ("changes/s", "right"),
        ("applied", "right"),
        ("lag", "right"),
        ("lag bytes", "right"),
        ("apply p50 / p99", "right"),
        ("dead letters", "right"),
        ("conflicts", "right"),
    )
    for col, just in columns:
        table.add_column(col, justify=just)
    for p in pipelines:
        state = Text(p.state, style="green" if p.state == "streaming" else "yellow")
        if p.error:
            state = Text(f"{p.state}: {p.error}"[:60], style="red")
        table.add_row(
            p.name,
            state,
            fmt_rate(rates.rate(p.name)),
            f"{p.changes:,}",
            fmt_seconds(p.lag_seconds),
            fmt_bytes(p.lag_bytes),
            f"{fmt_seconds(p.apply_p50)} / {fmt_seconds(p.apply_p99)}",
            Text(str(p.dead_letters), style="red" if p.dead_letters else ""),
            str(p.conflicts),
        )
    return table


# --- the two views ------------------------------------------------------------------------------


class View(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def say(self, message: str) -> None: ...
    def phase(self, name: str) -> None: ...
    def update(
        self,
        pipelines: Sequence[PipelineView],
        copy_totals: Mapping[tuple[str, str], int],
        streams: Sequence[Stream],
        now: float,
    ) -> None: ...


class PlainView:
    """A log line at every phase and every ``every`` seconds (CI, pipes, ``--no-live``)."""

    def __init__(self, console: Console, every: float = 5.0) -> None:
        self.console = console
        self.every = every
        self.rates = Rates()
        self._last = 0.0
        self._phase = ""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def phase(self, name: str) -> None:
        self._phase = name
        self._last = 0.0

    def update(
        self,
        pipelines: Sequence[PipelineView],
        copy_totals: Mapping[tuple[str, str], int],
        streams: Sequence[Stream],
        now: float,
    ) -> None:
        del copy_totals  # no progress bars here: the status line says how much was copied
        self.rates.add(now, pipelines)
        if now - self._last < self.every:
            return
        self._last = now
        head = f"  [{self._phase}]"
        if streams:
            done = sum(s.done for s in streams)
            total = sum(s.total for s in streams)
            head += f" traffic {done:,}/{total:,} rows written"
        self.say(head)
        for line in status_lines(pipelines, self.rates):
            self.say(f"    {line}")


class LiveView:
    """Redrawn in place: pipelines, the initial copy's progress, the traffic's progress."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.rates = Rates()
        self._phase = "starting"
        self._pipelines: Sequence[PipelineView] = ()
        self.copy = Progress(
            TextColumn("{task.description}", style="cyan"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("rows"),
            console=console,
            expand=False,
        )
        self.traffic = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            console=console,
            expand=False,
        )
        self._copy_tasks: dict[str, TaskID] = {}
        self._traffic_tasks: dict[str, TaskID] = {}
        self._live = Live(self._render(), console=console, refresh_per_second=2, transient=False)

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.update(self._render(), refresh=True)
        self._live.stop()

    def say(self, message: str) -> None:
        self._live.console.print(message, markup=False, highlight=False)

    def phase(self, name: str) -> None:
        self._phase = name
        self._live.update(self._render())

    def update(
        self,
        pipelines: Sequence[PipelineView],
        copy_totals: Mapping[tuple[str, str], int],
        streams: Sequence[Stream],
        now: float,
    ) -> None:
        self.rates.add(now, pipelines)
        self._pipelines = pipelines
        for p in pipelines:
            for table, rows in p.copy_rows.items():
                key = f"{p.name}: {table}"
                total = max(copy_totals.get((p.name, table), 0), rows)
                if total == 0:
                    continue  # an empty table: nothing to show a bar for
                if key not in self._copy_tasks:
                    self._copy_tasks[key] = self.copy.add_task(key, total=total)
                # a finished pipeline's tables are complete even when a count lagged
                done = total if p.copy_done else rows
                self.copy.update(self._copy_tasks[key], completed=done, total=total)
        for s in streams:
            if s.spec.name not in self._traffic_tasks:
                label = f"{s.spec.side:<9} {s.spec.label or s.spec.name}"
                self._traffic_tasks[s.spec.name] = self.traffic.add_task(label, total=s.total)
            self.traffic.update(self._traffic_tasks[s.spec.name], completed=s.done)
        self._live.update(self._render())

    def _render(self) -> Group:
        parts: list[Any] = [
            Text.assemble((self.title, "bold"), "  ", (self._phase, "yellow")),
            pipelines_table(self._pipelines, self.rates),
        ]
        if self._copy_tasks and self._traffic_tasks:
            # copied before the traffic began: one line instead of a bar per table
            rows = sum(int(t.completed) for t in self.copy.tasks)
            parts.append(Text(f"initial copy: {rows:,} rows, done", style="bold"))
        elif self._copy_tasks:
            parts += [Text("initial copy", style="bold"), self.copy]
        if self._traffic_tasks:
            parts += [Text("a day of traffic", style="bold"), self.traffic]
        return Group(*parts)


# --- the verdict ------------------------------------------------------------------------------


def _short(pipeline: str, config: Config) -> str:
    p = config.pipeline(pipeline)
    return f"{p.from_} -> {p.to}"


def verification_tables(verdict: Verdict, config: Config) -> list[Table]:
    """The verification table (per replicated table) and the delay table."""
    tables = Table(title="verification: tables", title_justify="left")
    # names and verdicts never wrap (scripts read these lines); the mask list may
    table_columns: tuple[tuple[str, JustifyMethod, bool], ...] = (
        ("pipeline", "left", False),
        ("source -> target", "left", False),
        ("source rows", "right", False),
        ("target rows", "right", False),
        ("rows", "left", False),
        ("masked columns", "left", True),
    )
    for col, just, wrap in table_columns:
        tables.add_column(col, justify=just, no_wrap=not wrap)
    for t in verdict.tables:
        if t.equal:
            rows = Text("equal", style="green")
        else:
            rows = Text(
                f"DIFFER: {t.missing} missing, {t.extra} extra, {t.different} changed", style="red"
            )
        if not t.masks:
            masked = Text("-")
        elif t.masked_ok:
            masked = Text(
                "masked: " + ", ".join(f"{m.column} ({m.spec})" for m in t.masks), style="green"
            )
        else:
            masked = Text(
                "NOT MASKED: "
                + ", ".join(
                    f"{m.column}: {m.leaked} leaked, {m.malformed} malformed, {m.wrong} wrong"
                    for m in t.masks
                    if not m.ok
                ),
                style="red",
            )
        tables.add_row(
            t.pipeline,
            f"{t.source} -> {t.target}",
            f"{t.source_rows:,}",
            f"{t.target_rows:,}",
            rows,
            masked,
        )
    targets = {lat.target for lat in verdict.latencies}
    target = next(iter(targets)) if len(targets) == 1 else LATENCY_TARGET_SECONDS
    judged = f"target p99 <= {target:g} s" if target is not None else "not judged"
    delays = Table(
        title=f"verification: commit-to-apply delay (heartbeats; {judged})",
        title_justify="left",
    )
    delay_columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("pipeline", "left"),
        ("heartbeats", "right"),
        ("p50", "right"),
        ("p99", "right"),
        ("max", "right"),
        ("dead letters", "right"),
        ("conflicts", "right"),
        ("result", "left"),
    )
    for col, just in delay_columns:
        delays.add_column(col, justify=just)
    health = {h.pipeline: h for h in verdict.health}
    for lat in verdict.latencies:
        h = health.get(lat.pipeline)
        ok = lat.ok and (h is None or h.dead_letters == 0)
        delays.add_row(
            f"{lat.pipeline} ({_short(lat.pipeline, config)})",
            str(lat.count),
            fmt_seconds(lat.p50),
            fmt_seconds(lat.p99),
            fmt_seconds(lat.max),
            "-" if h is None else str(h.dead_letters),
            "-" if h is None else str(h.conflicts),
            Text("within target" if lat.target is not None else "measured", style="green")
            if ok
            else Text("MISSED", style="red"),
        )
    return [tables, delays]
