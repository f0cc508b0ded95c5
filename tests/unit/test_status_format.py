"""`replicator status` output from status records, without a database."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from replicator.status import (
    PipelineStatus,
    SlotStatus,
    TableStatus,
    compute_lag,
    format_status,
    human_bytes,
    status_json,
)


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 kB"), (5 * 1024**3, "5.0 GB")],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def _status(**kw: object) -> PipelineStatus:
    st = PipelineStatus("p", "a", "b", SlotStatus("replicator_p"), "replicator_p")
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def test_lag_in_bytes_from_source_position_and_origin_progress():
    st = _status(source_lsn="0/3000000", applied_lsn="0/2000000", state="streaming")
    compute_lag(st)
    assert st.lag_bytes == 0x1000000
    assert st.lag_seconds is None
    assert st.lag_note is not None
    assert "not streaming" in st.lag_note


def test_nothing_applied_yet_is_not_a_lag_of_the_whole_wal():
    st = _status(source_lsn="0/3000000", applied_lsn="0/0", state="copying")
    compute_lag(st)
    assert st.lag_bytes is None
    assert st.lag_note == "nothing applied yet (initial copy)"


def test_streaming_without_a_lag_sample_and_little_lag_is_caught_up():
    slot = SlotStatus("replicator_p", exists=True, active=True, active_pid=42)
    st = _status(source_lsn="0/3000100", applied_lsn="0/3000000", slot=slot)
    compute_lag(st)
    assert (st.lag_bytes, st.lag_seconds, st.lag_note) == (0x100, 0.0, "caught up")


def test_streaming_with_a_walsender_sample_keeps_it():
    slot = SlotStatus("replicator_p", exists=True, active=True, active_pid=42)
    st = _status(source_lsn="0/9000000", applied_lsn="0/3000000", slot=slot, lag_seconds=2.5)
    compute_lag(st)
    assert st.lag_seconds == 2.5


def test_text_and_json_show_the_same_facts():
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    slot = SlotStatus(
        "replicator_p",
        exists=True,
        active=False,
        wal_status="reserved",
        retained_wal_bytes=3 * 1024 * 1024,
        confirmed_flush_lsn="0/2000000",
    )
    st = _status(
        slot=slot,
        state="streaming",
        paused=True,
        paused_at=when,
        source_lsn="0/3000000",
        applied_lsn="0/2000000",
        tables=[TableStatus("public.events", "ready", 1500, 2048, 2, 2)],
        dead_letters=3,
        conflicts=1,
    )
    compute_lag(st)
    text = format_status([st])
    assert "p  a -> b  streaming, PAUSED since 2025-01-02 03:04:05 UTC" in text
    assert "replicator_p: inactive, wal_status reserved, retains 3.0 MB" in text
    assert "lag           16.0 MB, - (the daemon is not streaming" in text
    assert "dead letters  3 open; conflicts 1" in text
    assert "public.events  ready           1,500 rows     2.0 kB  ranges 2/2" in text
    doc = orjson.loads(status_json([st]))["pipelines"][0]
    assert doc["paused_at"] == "2025-01-02T03:04:05Z"
    assert doc["lag_bytes"] == 16 * 1024 * 1024
    assert doc["tables"][0]["rows_copied"] == 1500
