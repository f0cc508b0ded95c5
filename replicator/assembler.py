"""Transaction assembly: decoded messages in, work items out.

Checks the Begin ... Commit framing, remembers which relations the stream has
described, drops transactions that carry one of our own replication origins
(loop prevention where the server cannot filter them), and cuts large
transactions into chunks so memory stays bounded whatever their size. A chunk
never mixes two transactions; the last chunk of a transaction carries its Commit.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from replicator.errors import StreamStateError
from replicator.lsn import Lsn
from replicator.protocol.messages import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
)

# Insert, Update and Delete stay as their raw pgoutput bytes until the applier folds them:
# a queued change then costs its payload size, not a tree of Python objects.
RawChange = bytes
ChunkItem = RawChange | Insert | Update | Delete | Truncate | Relation | LogicalMessage
CHANGE_TAGS: Final = frozenset(b"IUD")
_RELID: Final = struct.Struct("!I")


@dataclass(slots=True)
class TxnChunk:
    """Consecutive changes of one source transaction."""

    begin: Begin
    origin: str | None
    items: list[ChunkItem] = field(default_factory=list)
    nbytes: int = 0
    first: bool = True
    commit: Commit | None = None  # set on the transaction's last chunk
    skipped: bool = False  # dropped (our own origin): carries no items, only progress

    @property
    def xid(self) -> int:
        return self.begin.xid


@dataclass(frozen=True, slots=True)
class NonTransactional:
    """A ``pg_logical_emit_message(false, ...)`` outside any transaction (heartbeats)."""

    message: LogicalMessage
    lsn: Lsn


WorkItem = TxnChunk | NonTransactional


class Assembler:
    __slots__ = (
        "_chunk",
        "_chunk_bytes",
        "_chunk_items",
        "_relations",
        "_skip_origins",
        "skipped_transactions",
        "transactions",
    )

    def __init__(
        self,
        *,
        chunk_bytes: int = 4 * 1024 * 1024,
        chunk_items: int = 20_000,
        skip_origins: frozenset[str] = frozenset(),
    ) -> None:
        self._chunk_bytes = chunk_bytes
        self._chunk_items = chunk_items
        self._skip_origins = skip_origins
        self._chunk: TxnChunk | None = None
        self._relations: dict[int, Relation] = {}
        self.transactions = 0
        self.skipped_transactions = 0

    @property
    def in_transaction(self) -> bool:
        return self._chunk is not None

    def relation(self, relation_id: int) -> Relation | None:
        return self._relations.get(relation_id)

    def feed_change(self, payload: bytes, lsn: int) -> WorkItem | None:
        """An Insert, Update or Delete (tag in :data:`CHANGE_TAGS`) kept undecoded.

        Only the framing is checked here; the applier decodes the tuples."""
        chunk = self._chunk
        if chunk is None:
            raise StreamStateError(
                f"{chr(payload[0])!r} change outside a transaction at {Lsn(lsn)}"
            )
        if len(payload) < 5:
            raise StreamStateError(f"truncated {chr(payload[0])!r} change at {Lsn(lsn)}")
        relid = _RELID.unpack_from(payload, 1)[0]
        if relid not in self._relations:
            raise StreamStateError(
                f"change for undescribed relation {relid} at {Lsn(lsn)} (xid {chunk.xid})"
            )
        if chunk.skipped:
            return None
        items = chunk.items
        items.append(payload)
        chunk.nbytes += len(payload)
        if chunk.nbytes < self._chunk_bytes and len(items) < self._chunk_items:
            return None
        self._chunk = TxnChunk(chunk.begin, chunk.origin, first=False)
        return chunk

    def feed(self, msg: Message, lsn: Lsn, nbytes: int) -> WorkItem | None:
        """Consume one message received at ``lsn``; return a finished work item or None."""
        chunk = self._chunk
        # the class in a local: the hot path reads it once, mypy does not narrow msg by it
        cls = msg.__class__
        if cls is Begin:  # the common framing first: one class test each
            if chunk is not None:
                raise StreamStateError(f"Begin of xid {msg.xid} at {lsn} inside xid {chunk.xid}")  # type: ignore[union-attr]  # cls is Begin
            self._chunk = TxnChunk(msg, None)  # type: ignore[arg-type]  # cls is Begin
            return None
        if cls is Commit:
            return self._commit(chunk, msg, lsn)  # type: ignore[arg-type]  # cls is Commit
        match msg:
            case Insert() | Update() | Delete():
                if chunk is None:
                    raise StreamStateError(f"{type(msg).__name__} outside a transaction at {lsn}")
                if msg.relation_id not in self._relations:
                    raise StreamStateError(
                        f"{type(msg).__name__} for undescribed relation {msg.relation_id} "
                        f"at {lsn} (xid {chunk.xid})"
                    )
                return self._add(chunk, msg, nbytes)
            case Truncate():
                if chunk is None:
                    raise StreamStateError(f"Truncate outside a transaction at {lsn}")
                for rid in msg.relation_ids:
                    if rid not in self._relations:
                        raise StreamStateError(
                            f"Truncate of undescribed relation {rid} at {lsn} (xid {chunk.xid})"
                        )
                return self._add(chunk, msg, nbytes)
            case Relation():
                self._relations[msg.relation_id] = msg
                if chunk is None:
                    return None
                if chunk.skipped:
                    # the server describes a relation once per session: the applier must
                    # see it even inside a transaction it drops, or a later one lacks it
                    chunk.items.append(msg)
                    return None
                return self._add(chunk, msg, nbytes)
            case Type():
                return None  # type names only matter for binary transfer, which we never use
            case Origin():
                if chunk is None:
                    raise StreamStateError(f"Origin outside a transaction at {lsn}")
                if chunk.items or not chunk.first:
                    raise StreamStateError(f"Origin after changes in xid {chunk.xid} at {lsn}")
                chunk.origin = msg.name
                chunk.skipped = msg.name in self._skip_origins
                return None

            case LogicalMessage():
                if chunk is None:
                    if msg.transactional:
                        raise StreamStateError(
                            f"transactional message outside a transaction at {lsn}"
                        )
                    return NonTransactional(msg, lsn)
                return self._add(chunk, msg, nbytes)
            case _:
                raise StreamStateError(
                    f"{type(msg).__name__} at {lsn}: streaming and two-phase messages need "
                    "options this pipeline never requests"
                )

    def _commit(self, chunk: TxnChunk | None, msg: Commit, lsn: Lsn) -> TxnChunk:
        if chunk is None:
            raise StreamStateError(f"Commit outside a transaction at {lsn}")
        if msg.commit_lsn != chunk.begin.final_lsn:
            raise StreamStateError(
                f"Commit LSN {msg.commit_lsn} of xid {chunk.xid} does not match "
                f"its Begin ({chunk.begin.final_lsn})"
            )
        chunk.commit = msg
        self._chunk = None
        self.transactions += 1
        if chunk.skipped:
            self.skipped_transactions += 1
        return chunk

    def _add(self, chunk: TxnChunk, item: ChunkItem, nbytes: int) -> TxnChunk | None:
        if chunk.skipped:
            return None
        chunk.items.append(item)
        chunk.nbytes += nbytes
        if chunk.nbytes < self._chunk_bytes and len(chunk.items) < self._chunk_items:
            return None
        # hand over what we have; the transaction goes on in a fresh chunk
        self._chunk = TxnChunk(chunk.begin, chunk.origin, first=False)
        return chunk
