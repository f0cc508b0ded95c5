"""What to tell the walsender, and when.

Reports as flushed only an LSN the target has committed: the ``end_lsn`` of the
last source transaction whose target transaction committed (progress is stored in
that same target transaction). When nothing is in flight the pipeline may move
that point to the last keepalive's ``wal_end`` so an idle slot never pins WAL,
but only after recording it as origin progress on the target
(:meth:`Feedback.idle_advance_target`), so the slot's ``confirmed_flush_lsn``
never passes the target's origin progress.

Status goes out when the server asks for a reply, when the confirmed point moved
and ``interval`` has passed, and at least every ``max_interval`` (a liveness
signal well inside ``wal_sender_timeout``). The flush position only moves forward.

Pure: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from replicator.lsn import INVALID_LSN, Lsn


@dataclass(frozen=True, slots=True)
class Status:
    write: Lsn
    flush: Lsn
    apply: Lsn
    reply: bool = False


class Feedback:
    __slots__ = (
        "_confirmed_sent",
        "_last_sent_at",
        "confirmed",
        "interval",
        "keepalive_lsn",
        "max_interval",
        "received",
        "reply_requested",
    )

    def __init__(self, *, interval: float = 1.0, max_interval: float = 10.0) -> None:
        self.interval = interval
        self.max_interval = max_interval
        self.received = INVALID_LSN  # highest position seen in data or keepalives
        # committed on the target in this session; Invalid (0) until the first commit:
        # the server ignores an invalid flush position, so we never move it backward
        self.confirmed = INVALID_LSN
        self.keepalive_lsn = INVALID_LSN
        self.reply_requested = False
        self._confirmed_sent = INVALID_LSN
        self._last_sent_at: float | None = None

    def on_data(self, lsn: Lsn) -> None:
        self.received = max(self.received, lsn)

    def on_keepalive(self, wal_end: Lsn, *, reply_requested: bool) -> None:
        self.keepalive_lsn = max(self.keepalive_lsn, wal_end)
        self.on_data(wal_end)
        self.reply_requested = self.reply_requested or reply_requested

    def on_committed(self, end_lsn: Lsn) -> None:
        """The target committed everything up to ``end_lsn`` (never moves backward)."""
        self.confirmed = max(self.confirmed, end_lsn)

    def idle_advance_target(self) -> Lsn | None:
        """With nothing in flight: the keepalive position worth recording, if ahead."""
        if self.keepalive_lsn > self.confirmed:
            return self.keepalive_lsn
        return None

    def due(self, now: float) -> bool:
        if self.reply_requested or self._last_sent_at is None:
            return True
        elapsed = now - self._last_sent_at
        if elapsed >= self.max_interval:
            return True
        return self.confirmed != self._confirmed_sent and elapsed >= self.interval

    def take(self, now: float, *, force: bool = False) -> Status | None:
        """The status message to send now, or None when nothing is due.

        A status sent because ``max_interval`` elapsed asks the server to reply: its
        answer proves the connection alive when nothing else arrives."""
        if not force and not self.due(now):
            return None
        probe = self._last_sent_at is not None and now - self._last_sent_at >= self.max_interval
        self._last_sent_at = now
        self._confirmed_sent = self.confirmed
        self.reply_requested = False
        write = max(self.received, self.confirmed)
        return Status(write=write, flush=self.confirmed, apply=self.confirmed, reply=probe)
