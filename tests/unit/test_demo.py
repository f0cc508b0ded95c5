"""The demo's pure parts: pacing of the traffic, the verdict's checks, the daemon log count."""

from __future__ import annotations

import random

import pytest

from replicator.demo import DemoOptions, count_daemon_log
from replicator.demo_live import PipelineView, Rates, from_status
from replicator.demo_verify import compare_rows, latency, looks_masked, quantile
from replicator.demo_workload import TRAFFIC, Stream, StreamSpec, Volumes, bulk_due, due
from replicator.masking import compile_mask, parse_mask

# --- pacing ------------------------------------------------------------------------------


def test_due_spreads_the_day_evenly_and_owes_the_rest_at_the_end() -> None:
    assert due(1000, 0, 0.0, 60.0) == 0
    assert due(1000, 0, 30.0, 60.0) == 500
    assert due(1000, 400, 30.0, 60.0) == 100
    assert due(1000, 600, 30.0, 60.0) == 0  # ahead: nothing owed, never negative
    assert due(1000, 999, 60.0, 60.0) == 1
    assert due(1000, 999, 75.0, 60.0) == 1


def test_bulk_stream_writes_whole_loads_on_the_hour() -> None:
    # 24 loads of 1000 rows over 24 seconds: nothing before the first hour ends
    assert bulk_due(24_000, 0, 0.9, 24.0, 24) == 0
    assert bulk_due(24_000, 0, 1.0, 24.0, 24) == 1000
    assert bulk_due(24_000, 1000, 1.5, 24.0, 24) == 0
    assert bulk_due(24_000, 1000, 12.2, 24.0, 24) == 11_000
    assert bulk_due(24_000, 23_000, 24.0, 24.0, 24) == 1000


SPEC = StreamSpec("s", "warehouse", 1000, "SELECT 1", max_batch=50)


def play(stream: Stream, duration: float, step: float) -> list[int]:
    rng = random.Random(1)
    sizes = []
    t = 0.0
    while stream.done < stream.total:
        n = stream.next_batch(t, duration, rng)
        if n:
            sizes.append(n)
            stream.done += n
        t += step
    return sizes


def test_stream_writes_exactly_its_total_in_micro_batches() -> None:
    sizes = play(Stream(SPEC, 5000), duration=10.0, step=0.001)
    assert sum(sizes) == 5000
    assert max(sizes) <= SPEC.max_batch
    # whole micro-batches, not one row per writer loop
    assert len(sizes) < 5000 / 10


def test_stream_that_fell_behind_catches_up_in_bounded_transactions() -> None:
    sizes = play(Stream(SPEC, 5000), duration=10.0, step=1.0)
    assert sum(sizes) == 5000
    assert max(sizes) <= 10 * SPEC.max_batch


def test_scale_shrinks_seeded_rows_with_floors_that_keep_every_table_populated() -> None:
    full, tiny = Volumes.scaled(1.0), Volumes.scaled(0.0001)
    assert full.profiles == 100_000
    assert full.schemes == 200
    assert all(getattr(tiny, f) >= 4 for f in tiny.__slots__)
    assert tiny.params()["hot_consents"] >= 2


def test_rows_alone_sets_the_scale() -> None:
    opts = DemoOptions(rows=2000)
    assert opts.resolved_scale() == pytest.approx(0.02)
    assert opts.volumes().profiles == 2000
    assert DemoOptions().resolved_scale() == 1.0


def test_default_day_has_the_seeds_daily_volumes() -> None:
    per_day = {s.name: s.per_day for s in TRAFFIC}
    assert per_day["eligibility"] == per_day["forecasts"] == 50_000
    assert per_day["decisions"] == 10_000
    assert per_day["citizens"] == 20_000
    assert per_day["applications"] == 5_000
    assert per_day["documents"] == 15_000
    assert per_day["feedback"] == 1_000
    assert per_day["user_events"] == 500_000


# --- the verdict -------------------------------------------------------------------------

SHAPES = [
    ("redact", "***MASKED***", True),
    ("redact", "1234 5678 9012", False),
    ("redact:CONFIDENTIAL", "CONFIDENTIAL", True),
    ("redact:CONFIDENTIAL", "2.5-5L", False),
    ("partial:4", "****-****-9012", True),
    ("partial:4", "******5678", True),
    ("partial:4", "9876545678", False),
    ("partial:4", "1234-5678-9012", False),
    ("email", "u***@example.com", True),
    ("email", "***", True),
    ("email", "user@example.com", False),
    ("hash", "a" * 64, True),
    ("hash", "secret", False),
    ("partial:4", None, True),
]


@pytest.mark.parametrize(
    ("mask", "value", "masked"), SHAPES, ids=[f"{m}:{v}" for m, v, _ in SHAPES]
)
def test_masked_shape_is_recognised_and_originals_are_not(
    mask: str, value: str | None, masked: bool
) -> None:
    assert looks_masked(parse_mask(mask), value) is masked


@pytest.mark.parametrize(
    ("mask", "original"),
    [
        ("redact", "2345 6789 0123"),
        ("redact:CONFIDENTIAL", "1-2.5L"),
        ("partial:4", "0000-0500-0022"),
        ("partial:4", "7000039595"),
        ("email", "gurpreet.verma5@gmail.com"),
        ("hash", "7000039595"),
    ],
)
def test_the_masking_modules_output_passes_the_independent_shape_test(
    mask: str, original: str
) -> None:
    spec = parse_mask(mask)
    out = compile_mask(spec, b"k" * 32)(original.encode())
    assert out is not None
    assert looks_masked(spec, out.decode())
    assert not looks_masked(spec, original)


def test_compare_rows_counts_missing_extra_changed_and_leaked_rows() -> None:
    spec = parse_mask("partial:4")
    fn = compile_mask(spec, None)
    src = {
        "(1)": ("h1", "9876545678"),
        "(2)": ("h2", "9876500000"),
        "(3)": ("h3", None),
        "(4)": ("h4", "9000000001"),
    }
    dst = {
        "(1)": ("h1", "******5678"),  # equal
        "(2)": ("h2", "9876500000"),  # leaked: the original
        "(3)": ("hX", None),  # other plain values
        "(5)": ("h5", "******0001"),  # extra
    }
    missing, extra, different, counts = compare_rows(src, dst, [spec], [fn])
    assert (missing, extra, different) == (1, 1, 2)
    values, wrong, leaked, malformed = counts[0]
    assert (values, wrong, leaked, malformed) == (2, 1, 1, 1)


def test_quantile_is_a_real_observation_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([3.0], 0.99) == 3.0


def test_latency_is_within_target_only_when_p99_is() -> None:
    fast = latency("p", [0.1] * 99 + [4.9])
    slow = latency("p", [0.1] * 98 + [6.0, 6.0])
    assert fast.ok
    assert fast.max == 4.9
    assert not slow.ok
    assert not latency("p", []).ok  # nothing measured is not a pass
    assert not latency("p", [0.1] * 98 + [1.5, 1.5], target=1.0).ok


def test_an_unjudged_latency_passes_once_measured() -> None:
    assert latency("p", [0.1] * 98 + [60.0, 60.0], target=None).ok
    assert not latency("p", [], target=None).ok


def test_daemon_log_errors_and_warnings_are_counted_by_level() -> None:
    log = [
        '{"event":"pipeline_streaming","level":"info"}',
        '{"event":"pipeline_retry","level":"warning"}',
        '{"event":"pipeline_failed","level":"error"}',
        "Traceback (most recent call last):",
        "  a continuation line",
    ]
    assert count_daemon_log(iter(log)) == (2, 1)


# --- the live view -----------------------------------------------------------------------


def test_status_document_becomes_pipeline_views() -> None:
    doc = {
        "pipelines": [
            {
                "pipeline": "w2p",
                "state": "copying",
                "changes": 0,
                "lag_seconds": None,
                "dead_letters": 0,
                "conflicts": 2,
                "apply_delay_seconds": None,
                "copy": [
                    {"table": "public.a", "rows": 10, "done": True},
                    {"table": "public.b", "rows": 5, "done": False},
                ],
            }
        ]
    }
    (view,) = from_status(doc)
    assert view.state == "copying"
    assert view.conflicts == 2
    assert view.copy_rows == {"public.a": 10, "public.b": 5}
    assert not view.copy_done


def test_rates_are_changes_per_second_over_the_window() -> None:
    rates = Rates(window=3.0)
    for t, n in ((0.0, 0), (1.0, 100), (2.0, 300), (5.0, 900)):
        rates.add(t, [PipelineView("p", "streaming", changes=n)])
    assert rates.rate("p") == pytest.approx((900 - 300) / 3.0)
    assert rates.rate("other") is None
