"""Prometheus metrics, read from :class:`~replicator.stats.PipelineStats` at scrape time.

Owns the ``replicator_*`` metric names and their labels. The pipelines never touch a
metric object: a custom collector turns their plain counters into metric families
when Prometheus scrapes, so the hot path pays nothing. Labels come from a closed set
(``pipeline``, ``table``, ``operation``, ``state``) whose values are config names and
fixed words: never a row value, a DSN or an error text.

A dedicated registry, not prometheus_client's global one, so tests and any embedding
program see only these metrics (plus the standard ``process_*`` ones).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from replicator.stats import Observed, PipelineStats, State

# seconds from the source commit to the target commit: sub-second apply up to "stuck"
APPLY_DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class _DelayHistogram:
    """Cumulative buckets built from the stats' window of recent apply delays.

    ``apply_delays`` gets one sample per target commit (``commits`` counts them), so
    the samples new since the last scrape are the last ``commits - seen`` of the window.
    More commits than the window holds between two scrapes: the excess is counted in
    neither buckets nor count (a sampled histogram, never an inconsistent one).
    """

    seen: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(APPLY_DELAY_BUCKETS) + 1))
    total: float = 0.0

    def absorb(self, stats: PipelineStats) -> None:
        new = stats.commits - self.seen
        if new <= 0:
            return
        self.seen = stats.commits
        window = stats.apply_delays
        take = min(new, len(window))
        for delay in itertools.islice(window, len(window) - take, None):
            self.buckets[bisect.bisect_left(APPLY_DELAY_BUCKETS, delay)] += 1
            self.total += delay

    def family_buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*APPLY_DELAY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class StatsCollector(Collector):
    """Turns every pipeline's stats into metric families, once per scrape."""

    def __init__(self, pipelines: Sequence[Observed], *, clock: Callable[[], float]) -> None:
        self._pipelines = pipelines
        self._clock = clock  # Unix time, for lag in seconds
        self._delays: dict[str, _DelayHistogram] = {}

    def describe(self) -> Iterable[Metric]:
        # names are fixed; describing nothing keeps register() from running a collect()
        return []

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        p_ = ["pipeline"]

        def gauge(name: str, doc: str, labels: Sequence[str] = p_) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: Sequence[str] = p_) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=list(labels))

        state = gauge(
            "replicator_state",
            "1 for the pipeline's current state, 0 for the others",
            ["pipeline", "state"],
        )
        received = gauge(
            "replicator_received_lsn_bytes", "Highest source WAL position received (LSN)"
        )
        applied = gauge(
            "replicator_applied_lsn_bytes", "Source WAL position committed on the target (LSN)"
        )
        confirmed = gauge(
            "replicator_confirmed_lsn_bytes", "Source WAL position confirmed to the slot (LSN)"
        )
        lag_bytes = gauge(
            "replicator_lag_bytes", "WAL received from the slot and not yet applied, in bytes"
        )
        lag_seconds = gauge(
            "replicator_lag_seconds",
            "Source commit time of the oldest unapplied change to now; 0 when caught up",
        )
        last_commit = gauge(
            "replicator_last_commit_timestamp_seconds",
            "Source commit time of the last transaction applied (Unix seconds)",
        )
        queue = gauge("replicator_queue_bytes", "Decoded data waiting for the applier, in bytes")
        txns = counter("replicator_transactions", "Source transactions applied")
        skipped = counter(
            "replicator_skipped_transactions",
            "Source transactions skipped (echoes of our own writes, already copied)",
        )
        changes = counter("replicator_changes", "Change messages received from the source")
        commits = counter("replicator_commits", "Target transactions committed")
        rows = counter(
            "replicator_rows_applied", "Rows applied to the target", ["pipeline", "operation"]
        )
        missing = counter(
            "replicator_rows_missing",
            "Updates and deletes whose target row was not there",
            ["pipeline", "operation"],
        )
        table_rows = counter(
            "replicator_table_rows_applied",
            "Rows applied to the target, per target table",
            ["pipeline", "table", "operation"],
        )
        dead = counter("replicator_dead_letters", "Rows written to the dead-letter table")
        conflicts = counter(
            "replicator_conflicts", "Rows where the conflict rule kept the target's version"
        )
        delay = HistogramMetricFamily(
            "replicator_apply_delay_seconds",
            "Source commit to target commit, per target transaction",
            labels=p_,
        )
        pt = ["pipeline", "table"]
        copy_rows = counter("replicator_copy_rows", "Rows copied by the initial copy", pt)
        copy_bytes = counter("replicator_copy_bytes", "Bytes copied by the initial copy", pt)
        copy_ranges = gauge(
            "replicator_copy_ranges", "Key ranges the table's copy is split into", pt
        )
        copy_done = gauge("replicator_copy_ranges_done", "Key ranges copied", pt)
        copy_eta = gauge("replicator_copy_eta_seconds", "Estimated time left for the copy", pt)

        for p in self._pipelines:
            s, name = p.stats, p.pipe.name
            current = s.phase()
            for st in State:
                state.add_metric([name, st.value], 1.0 if st is current else 0.0)
            received.add_metric([name], float(s.received_lsn))
            applied.add_metric([name], float(s.applied_lsn))
            confirmed.add_metric([name], float(s.confirmed_lsn))
            lag_bytes.add_metric([name], float(s.lag_bytes()))
            lag = s.lag_seconds(now)
            if lag is not None:
                lag_seconds.add_metric([name], lag)
            if s.last_commit_time is not None:
                last_commit.add_metric([name], s.last_commit_time)
            queue.add_metric([name], float(s.queue_bytes))
            txns.add_metric([name], s.transactions)
            skipped.add_metric([name], s.skipped_transactions)
            changes.add_metric([name], s.changes)
            commits.add_metric([name], s.commits)
            for op, n in (("insert", s.inserted), ("update", s.updated), ("delete", s.deleted)):
                rows.add_metric([name, op], n)
            missing.add_metric([name, "update"], s.update_missing)
            missing.add_metric([name, "delete"], s.delete_missing)
            for table, tc in s.table_rows.items():
                for op, n in (
                    ("insert", tc.inserted),
                    ("update", tc.updated),
                    ("delete", tc.deleted),
                ):
                    table_rows.add_metric([name, str(table), op], n)
            dead.add_metric([name], s.dead_letters)
            conflicts.add_metric([name], s.conflicts)
            hist = self._delays.setdefault(name, _DelayHistogram())
            hist.absorb(s)
            delay.add_metric([name], hist.family_buckets(), hist.total)
            for table, prog in s.copy.items():
                labels = [name, str(table)]
                copy_rows.add_metric(labels, prog.rows)
                copy_bytes.add_metric(labels, prog.bytes)
                copy_ranges.add_metric(labels, prog.ranges_total)
                copy_done.add_metric(labels, prog.ranges_done)
                eta = prog.eta_seconds()
                if eta is not None:
                    copy_eta.add_metric(labels, eta)

        return [
            state,
            received,
            applied,
            confirmed,
            lag_bytes,
            lag_seconds,
            last_commit,
            queue,
            txns,
            skipped,
            changes,
            commits,
            rows,
            missing,
            table_rows,
            dead,
            conflicts,
            delay,
            copy_rows,
            copy_bytes,
            copy_ranges,
            copy_done,
            copy_eta,
        ]


def make_registry(
    pipelines: Sequence[Observed], *, clock: Callable[[], float], process: bool = True
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(pipelines, clock=clock))
    if process:  # process_cpu_seconds_total, process_resident_memory_bytes, open fds...
        ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type, negotiated from the Accept header
    (Prometheus text format, or OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
