"""pgoutput logical replication messages, one frozen dataclass per message kind.

Field names follow PostgreSQL's "Logical Replication Message Formats" page.
Timestamps stay as PostgreSQL sends them: microseconds since 2000-01-01 UTC
(see :func:`pg_timestamp_to_datetime`). Tuple values are the server's text
output as ``bytes`` (UTF-8, the client encoding we pin), ``None`` for SQL NULL,
:data:`UNCHANGED_TOAST` for an unchanged TOASTed value that the server did not
send, or :class:`BinaryDatum` when binary transfer was negotiated.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

from replicator.lsn import Lsn

PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def pg_timestamp_to_datetime(us: int) -> dt.datetime:
    """Convert a protocol timestamp (microseconds since 2000-01-01 UTC)."""
    return PG_EPOCH + dt.timedelta(microseconds=us)


def datetime_to_pg_timestamp(when: dt.datetime) -> int:
    delta = when - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _UnchangedToast:
    """The ``u`` marker: the column is TOASTed and unchanged; its value was not sent."""

    __slots__ = ()
    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()


@dataclass(frozen=True, slots=True)
class BinaryDatum:
    """A value sent in the type's binary format (only with the ``binary`` option)."""

    data: bytes


Datum = bytes | None | _UnchangedToast | BinaryDatum
TupleData = tuple[Datum, ...]


# --- transaction framing -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: Lsn  # LSN of the commit record
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn  # end of the commit record: what progress and feedback report
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: Lsn  # the commit LSN on the origin server
    name: str


# --- catalog ---------------------------------------------------------------------------

REPLICA_IDENTITY_KEY_FLAG: Final = 1


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_id: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & REPLICA_IDENTITY_KEY_FLAG)


ReplicaIdentity = Literal["d", "n", "f", "i"]
# the byte as sent (or pg_class.relreplident) -> its typed value; absent: not an identity
REPLICA_IDENTITIES: Final[dict[str, ReplicaIdentity]] = {"d": "d", "n": "n", "f": "f", "i": "i"}


@dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None
    relation_id: int
    namespace: str  # "" means pg_catalog, as the server sends it
    relation_name: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.relation_name}"


@dataclass(frozen=True, slots=True)
class Type:
    xid: int | None
    type_id: int
    namespace: str
    name: str


# --- changes ---------------------------------------------------------------------------

OldTupleKind = Literal["K", "O"]
# a tuple marker -> the old tuple kind it announces; absent: no old tuple ("N" or invalid)
OLD_TUPLE_KINDS: Final[dict[str, OldTupleKind]] = {"K": "K", "O": "O"}


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relation_id: int
    new_tuple: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relation_id: int
    old_kind: OldTupleKind | None  # "K": old key (key changed), "O": old row (FULL)
    old_tuple: TupleData | None
    new_tuple: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relation_id: int
    old_kind: OldTupleKind
    old_tuple: TupleData


TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


@dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    options: int
    relation_ids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


MESSAGE_TRANSACTIONAL: Final = 1


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``pg_logical_emit_message()`` output (with the ``messages`` option)."""

    xid: int | None
    flags: int
    lsn: Lsn
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & MESSAGE_TRANSACTIONAL)


# --- streaming of in-progress transactions (protocol 2+) -------------------------------


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int
    abort_lsn: Lsn | None  # protocol 4 with streaming = parallel only
    abort_time: int | None


# --- two-phase commit (protocol 3+) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_time: int
    xid: int
    gid: str


Change = Insert | Update | Delete | Truncate
Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)
