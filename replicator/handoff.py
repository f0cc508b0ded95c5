"""The bounded hand-off between the socket reader and the applier.

The reader puts whole work items (transaction chunks, non-transactional messages);
the applier takes them in order. The queue counts the bytes it holds itself, so the
count can never outlive its contents: a pipeline that fails drops its queue and its
count together, and the next session starts from an empty one. (A count kept apart
from the queue once survived a failure with the items it counted gone: the reader then
saw a full queue forever and stopped reading, with no error.)

Backpressure is a rule on that count: the reader stops above ``limit`` bytes and
resumes below half of it, so it does not flap on every item.
"""

from __future__ import annotations

import asyncio

from replicator.assembler import TxnChunk, WorkItem

NON_TXN_BYTES = 64  # what a message outside a transaction counts for (heartbeats)


def item_bytes(item: WorkItem) -> int:
    return item.nbytes if isinstance(item, TxnChunk) else NON_TXN_BYTES


class Handoff:
    """A FIFO of work items that knows how many bytes it holds."""

    __slots__ = ("_queue", "limit", "nbytes")

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self.limit = limit
        self.nbytes = 0

    def put(self, item: WorkItem) -> None:
        self._queue.put_nowait(item)
        self.nbytes += item_bytes(item)

    def empty(self) -> bool:
        return self._queue.empty()

    def take_nowait(self) -> WorkItem:
        return self._counted(self._queue.get_nowait())

    async def take(self, timeout: float) -> WorkItem:
        """The next item; TimeoutError if none arrives within ``timeout`` seconds."""
        return self._counted(await asyncio.wait_for(self._queue.get(), timeout=timeout))

    def _counted(self, item: WorkItem) -> WorkItem:
        self.nbytes -= item_bytes(item)
        return item

    @property
    def full(self) -> bool:
        """The reader must stop reading."""
        return self.nbytes > self.limit

    @property
    def drained(self) -> bool:
        """A stopped reader may read again."""
        return self.nbytes < self.limit // 2
