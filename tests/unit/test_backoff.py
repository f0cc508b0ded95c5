"""The supervisor's retry policy: back off while nothing works, start afresh after progress."""

from __future__ import annotations

from replicator.daemon import RetryBackoff


def test_failures_without_progress_back_off_up_to_the_maximum():
    backoff = RetryBackoff(initial=1, maximum=60)
    delays = [backoff.after_failure(progressed=False, ran_for=0.1) for _ in range(10)]
    assert delays[0] < 2  # one second plus at most one of jitter
    assert delays[3] >= 8  # 1, 2, 4, 8: doubling
    assert max(delays) <= 60
    assert delays[-1] == 60


def test_a_run_that_committed_starts_the_next_outage_afresh():
    backoff = RetryBackoff(initial=1, maximum=60)
    for _ in range(6):
        backoff.after_failure(progressed=False, ran_for=0.1)
    assert backoff.attempt == 6
    delay = backoff.after_failure(progressed=True, ran_for=3.0)
    assert backoff.attempt == 1
    assert delay < 2


def test_a_long_run_counts_as_recovered_even_without_commits():
    backoff = RetryBackoff(initial=1, maximum=60)
    for _ in range(6):
        backoff.after_failure(progressed=False, ran_for=0.1)
    backoff.after_failure(progressed=False, ran_for=61.0)
    assert backoff.attempt == 1
