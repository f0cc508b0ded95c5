"""Block ranges of the initial copy: they cover every block and carry no value."""

from __future__ import annotations

import itertools

import pytest

from replicator.config import QualifiedName
from replicator.snapshot import block_ranges

T = QualifiedName("public", "t")


@pytest.mark.parametrize(
    ("rows", "blocks", "per_range", "count"),
    [(100, 10, 1000, 1), (10_000, 100, 1000, 11), (10_000, 3, 1000, 3), (10**9, 10**6, 1, 1000)],
    ids=["small", "even", "fewer-blocks-than-ranges", "capped"],
)
def test_ranges_cover_every_block_once_and_the_last_is_open(rows, blocks, per_range, count):
    ranges = block_ranges(T, rows, blocks, per_range)
    assert len(ranges) == count
    assert ranges[0].lower_block is None
    assert ranges[-1].upper_block is None
    for a, b in itertools.pairwise(ranges):
        assert a.upper_block == b.lower_block
        assert b.lower_block is not None
        assert a.lower_block is None or a.lower_block < b.lower_block
    assert [r.range_no for r in ranges] == list(range(count))
    assert all(r.lower_key is None and r.upper_key is None for r in ranges)
