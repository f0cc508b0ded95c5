"""The reader/applier hand-off counts exactly what it holds, and nothing it no longer holds."""

from __future__ import annotations

import asyncio

import pytest

from replicator.assembler import TxnChunk
from replicator.handoff import Handoff
from replicator.lsn import Lsn
from replicator.protocol.messages import Begin


def chunk(nbytes: int) -> TxnChunk:
    return TxnChunk(
        begin=Begin(final_lsn=Lsn(100), commit_time=0, xid=1), origin=None, nbytes=nbytes
    )


def test_byte_count_follows_the_items_in_and_out():
    h = Handoff(limit=1000)
    h.put(chunk(600))
    h.put(chunk(500))
    assert h.nbytes == 1100
    assert h.full
    h.take_nowait()
    assert h.nbytes == 500
    assert not h.full
    assert not h.drained
    h.take_nowait()
    assert h.nbytes == 0
    assert h.drained
    assert h.empty()


def test_a_new_handoff_starts_empty_whatever_the_last_one_held():
    """A failed session's queue goes with its count: the next session is not 'full'."""
    old = Handoff(limit=1000)
    for _ in range(5):
        old.put(chunk(400))
    assert old.full
    assert not Handoff(limit=1000).full


def test_take_times_out_when_nothing_arrives():
    async def go() -> None:
        with pytest.raises(TimeoutError):
            await Handoff(limit=10).take(0.01)

    asyncio.run(go())
