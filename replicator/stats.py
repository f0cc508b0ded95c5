"""What a pipeline reports about itself: state, positions, counters.

Plain data written by the pipeline's own task and read by status, metrics and the
health endpoint on the same event loop; no locking needed, no I/O here.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from replicator.config import PipelineConfig, QualifiedName
from replicator.lsn import INVALID_LSN, Lsn


@dataclass(slots=True)
class TableProgress:
    table: QualifiedName
    ranges_total: int = 0
    ranges_done: int = 0
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        if self.ranges_done == 0 or self.finished:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.ranges_done * (self.ranges_total - self.ranges_done)


class State(enum.StrEnum):
    PAUSED = "paused"
    STARTING = "starting"
    COPYING = "copying"
    STREAMING = "streaming"
    RETRYING = "retrying"  # failed transiently; the daemon runs it again after a backoff
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(slots=True)
class PipelineStats:
    """Counters and positions, read by status, metrics and tests."""

    state: State = State.STARTING
    received_lsn: Lsn = INVALID_LSN
    applied_lsn: Lsn = INVALID_LSN  # committed on the target
    confirmed_lsn: Lsn = INVALID_LSN  # reported to the slot as flushed
    last_commit_time: float | None = None  # source commit time of the last applied txn
    transactions: int = 0
    skipped_transactions: int = 0
    changes: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    update_missing: int = 0
    delete_missing: int = 0
    commits: int = 0
    dead_letters: int = 0  # rows sent to replicator.dead_letters
    queue_bytes: int = 0
    last_error: str | None = None
    retry_reason: str | None = None  # classify.retry_reason of the failure being retried
    copy: dict[QualifiedName, TableProgress] = field(default_factory=dict)
    apply_delays: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    # --- read by the operations surface (health, metrics, notify); see each comment for
    # the pipeline events that update it. Defaults mean "not reported", never a guess.
    # Unix time since which received changes wait for the target: set when a chunk is
    # queued while it is None, cleared when the applier is idle again (queue empty, nothing
    # in the batch). Not reset at each commit: under a backlog the lag is then measured from
    # last_commit_time; after a quiet spell, from this arrival, not from the old commit.
    pending_since: float | None = None
    conflicts: int = 0  # rows logged to replicator.conflicts (either side may have won)
    slot_retained_bytes: int | None = None  # WAL the slot holds on the source
    slot_wal_status: str | None = None  # reserved, extended, unreserved or lost
    # rows applied per target table, for per-table metrics (the totals above stay the truth)
    table_rows: dict[QualifiedName, TableCounts] = field(default_factory=dict)

    def pending(self) -> bool:
        """Changes were received that the target has not committed yet."""
        return self.pending_since is not None or self.queue_bytes > 0

    def lag_bytes(self) -> int:
        """WAL the slot has sent us that the target has not recorded. Keepalives move
        ``received_lsn`` too, so an idle pipeline shows up to the idle-record threshold."""
        if not self.received_lsn or not self.applied_lsn:
            return 0
        return max(0, self.received_lsn - self.applied_lsn)

    def lag_seconds(self, now: float) -> float | None:
        """How far behind the source the target is, in seconds of source commit time:
        0 when nothing waits; else ``now`` (Unix) minus the later of the last applied
        source commit and the arrival of the waiting data. None when it cannot be told
        (data waits, nothing committed yet, arrival not recorded)."""
        if not self.pending():
            return 0.0
        marks = [t for t in (self.last_commit_time, self.pending_since) if t is not None]
        if not marks:
            return None
        return max(0.0, now - max(marks))

    def phase(self) -> State:
        """``state``, except that a pipeline still starting while its initial copy runs
        counts as copying (the copy runs before the pipeline reports a state of its own)."""
        if self.state is State.STARTING and any(
            p.ranges_total and p.finished is None for p in self.copy.values()
        ):
            return State.COPYING
        return self.state


@dataclass(slots=True)
class TableCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0


class Observed(Protocol):
    """What the health endpoint, metrics and notifications read from a pipeline."""

    @property
    def pipe(self) -> PipelineConfig: ...

    @property
    def stats(self) -> PipelineStats: ...
