"""Feedback: what the walsender is told is flushed, and when it is told."""

from __future__ import annotations

import pytest

from replicator.feedback import Feedback, Status
from replicator.lsn import INVALID_LSN, Lsn

A = Lsn("0/100")
B = Lsn("0/200")
C = Lsn("0/300")


def sent(fb: Feedback, now: float) -> Status:
    status = fb.take(now)
    assert status is not None
    return status


def test_first_status_goes_out_at_once_and_confirms_nothing() -> None:
    fb = Feedback()
    fb.on_data(B)
    # an invalid flush position: the server keeps the slot's confirmed point where it is
    assert sent(fb, 0.0) == Status(write=B, flush=INVALID_LSN, apply=INVALID_LSN)


@pytest.mark.parametrize(
    "events",
    [
        [("data", C)],
        [("keepalive", C)],
        [("keepalive-reply", C)],
        [("data", C), ("keepalive", C), ("data", A)],
    ],
    ids=["data", "keepalive", "keepalive-asking-for-reply", "mixed"],
)
def test_never_reports_a_flush_it_was_not_told_was_committed(
    events: list[tuple[str, Lsn]],
) -> None:
    fb = Feedback()
    fb.on_committed(A)
    for kind, lsn in events:
        if kind == "data":
            fb.on_data(lsn)
        else:
            fb.on_keepalive(lsn, reply_requested=kind == "keepalive-reply")
    status = sent(fb, 0.0)
    assert status.flush == A
    assert status.apply == A
    assert status.write == C  # received is reported as written: that is not a promise


def test_flush_only_moves_forward() -> None:
    fb = Feedback(interval=0.0)
    fb.on_committed(B)
    assert sent(fb, 0.0).flush == B
    fb.on_committed(A)  # an older commit reported late
    assert fb.confirmed == B
    assert sent(fb, 100.0).flush == B
    fb.on_committed(C)
    assert sent(fb, 200.0).flush == C


def test_write_is_never_behind_flush() -> None:
    fb = Feedback()
    fb.on_committed(B)  # e.g. progress restored from the target, nothing received yet
    assert sent(fb, 0.0) == Status(write=B, flush=B, apply=B)


def test_reply_requested_forces_a_status_right_away() -> None:
    fb = Feedback(interval=5.0, max_interval=60.0)
    sent(fb, 0.0)
    fb.on_keepalive(A, reply_requested=False)
    assert fb.take(0.1) is None
    fb.on_keepalive(B, reply_requested=True)
    assert fb.due(0.1)
    assert sent(fb, 0.1).write == B
    # answered: the request does not linger
    assert fb.take(0.2) is None


@pytest.mark.parametrize(
    ("committed", "now", "due"),
    [
        (False, 0.5, False),
        (False, 9.9, False),
        (False, 10.0, True),
        (True, 0.5, False),
        (True, 1.0, True),
    ],
    ids=[
        "nothing-new-before-interval",
        "nothing-new-before-max-interval",
        "nothing-new-at-max-interval-as-liveness",
        "progress-before-interval",
        "progress-at-interval",
    ],
)
def test_status_is_rate_limited_by_interval_and_max_interval(
    committed: bool, now: float, due: bool
) -> None:
    fb = Feedback(interval=1.0, max_interval=10.0)
    sent(fb, 0.0)
    if committed:
        fb.on_committed(A)
    assert fb.due(now) is due
    assert (fb.take(now) is not None) is due


def test_force_sends_even_when_nothing_is_due() -> None:
    fb = Feedback(interval=1.0, max_interval=10.0)
    sent(fb, 0.0)
    fb.on_committed(A)
    assert fb.take(0.1) is None
    status = fb.take(0.1, force=True)  # at shutdown
    assert status is not None
    assert status.flush == A


def test_sending_resets_the_interval_clock() -> None:
    fb = Feedback(interval=1.0, max_interval=10.0)
    sent(fb, 0.0)
    fb.on_committed(A)
    sent(fb, 1.0)
    fb.on_committed(B)
    assert fb.take(1.5) is None
    assert sent(fb, 2.0).flush == B


@pytest.mark.parametrize(
    ("keepalive", "committed", "target"),
    [
        (None, None, None),
        (B, None, B),
        (B, A, B),
        (B, B, None),
        (A, B, None),
    ],
    ids=[
        "no-keepalive-yet",
        "keepalive-ahead-of-nothing",
        "keepalive-ahead-of-committed",
        "keepalive-equal-to-committed",
        "keepalive-behind-committed",
    ],
)
def test_idle_advance_target_is_the_keepalive_position_when_ahead(
    keepalive: Lsn | None, committed: Lsn | None, target: Lsn | None
) -> None:
    fb = Feedback()
    if keepalive is not None:
        fb.on_keepalive(keepalive, reply_requested=False)
    if committed is not None:
        fb.on_committed(committed)
    assert fb.idle_advance_target() == target


def test_idle_advance_moves_flush_only_once_recorded_as_committed() -> None:
    fb = Feedback(interval=0.0)
    fb.on_committed(A)
    fb.on_keepalive(C, reply_requested=False)
    assert sent(fb, 0.0).flush == A  # the keepalive alone confirms nothing
    target = fb.idle_advance_target()
    assert target == C
    fb.on_committed(target)  # the pipeline stored it as origin progress on the target
    assert sent(fb, 1.0).flush == C
    assert fb.idle_advance_target() is None


def test_keepalive_position_only_moves_forward() -> None:
    fb = Feedback()
    fb.on_keepalive(B, reply_requested=False)
    fb.on_keepalive(A, reply_requested=False)
    assert fb.keepalive_lsn == B
    assert fb.received == B
