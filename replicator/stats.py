"""What a pipeline reports about itself: state, positions, counters.

Plain data written by the pipeline's own task and read by status, metrics and the
health endpoint on the same event loop; no locking needed, no I/O here.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field

from replicator.config import QualifiedName
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
    STARTING = "starting"
    COPYING = "copying"
    STREAMING = "streaming"
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
    queue_bytes: int = 0
    last_error: str | None = None
    copy: dict[QualifiedName, TableProgress] = field(default_factory=dict)
    apply_delays: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
