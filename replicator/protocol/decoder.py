"""Strict decoder for pgoutput messages (protocol versions 1 to 4).

Bytes in, frozen message objects out (see :mod:`replicator.protocol.messages`).
Every read is bounds-checked, and an unknown tag, flag or tuple marker, a short
message or trailing bytes raise :class:`~replicator.errors.ProtocolError` with
the byte offset. Nothing is skipped or guessed.

The decoder keeps exactly one bit of state: whether it is inside a streamed
block (between Stream Start and Stream Stop), because there the change and
catalog messages carry an extra leading xid.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeVar

from replicator.errors import ProtocolError
from replicator.lsn import Lsn
from replicator.protocol.messages import (
    OLD_TUPLE_KINDS,
    REPLICA_IDENTITIES,
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryDatum,
    Column,
    Commit,
    CommitPrepared,
    Datum,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)

_U8: Final = struct.Struct("!B")
_I16: Final = struct.Struct("!h")
_U32: Final = struct.Struct("!I")
_I32: Final = struct.Struct("!i")
_U64: Final = struct.Struct("!Q")
_I64: Final = struct.Struct("!q")

_KIND_TEXT: Final = ord("t")
_KIND_NULL: Final = ord("n")
_KIND_UNCHANGED: Final = ord("u")
_KIND_BINARY: Final = ord("b")


class _Reader:
    """Bounds-checked cursor over one message."""

    __slots__ = ("buf", "end", "pos", "tag")

    def __init__(self, buf: bytes, tag: str) -> None:
        self.buf = buf
        self.pos = 1  # past the tag byte
        self.end = len(buf)
        self.tag = tag

    def fail(self, reason: str, offset: int | None = None) -> ProtocolError:
        return ProtocolError(reason, offset=self.pos if offset is None else offset, tag=self.tag)

    def _need(self, n: int, what: str) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise self.fail(f"message too short for {what} ({self.end - pos} of {n} bytes)")
        self.pos = pos + n
        return pos

    def u8(self, what: str) -> int:
        return self.buf[self._need(1, what)]

    def char(self, what: str) -> str:
        return chr(self.buf[self._need(1, what)])

    def i16(self, what: str) -> int:
        value: int = _I16.unpack_from(self.buf, self._need(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack_from(self.buf, self._need(4, what))[0]
        return value

    def i32(self, what: str) -> int:
        value: int = _I32.unpack_from(self.buf, self._need(4, what))[0]
        return value

    def i64(self, what: str) -> int:
        value: int = _I64.unpack_from(self.buf, self._need(8, what))[0]
        return value

    def lsn(self, what: str) -> Lsn:
        return Lsn.from_wire(_U64.unpack_from(self.buf, self._need(8, what))[0])

    def cstring(self, what: str) -> str:
        start = self.pos
        nul = self.buf.find(b"\0", start, self.end)
        if nul < 0:
            raise self.fail(f"unterminated string for {what}")
        self.pos = nul + 1
        try:
            return self.buf[start:nul].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"invalid UTF-8 in {what}", start) from exc

    def raw(self, n: int, what: str) -> bytes:
        if n < 0:
            raise self.fail(f"negative length {n} for {what}", self.pos - 4)
        start = self._need(n, what)
        return self.buf[start : start + n]

    def tuple_data(self, what: str) -> TupleData:
        values, self.pos = read_tuple(self.buf, self.pos, self.tag, what)
        return values

    def done(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} trailing byte(s)")


def read_tuple(buf: bytes, pos: int, tag: str, what: str) -> tuple[TupleData, int]:
    """TupleData at ``pos``: Int16 column count, then per column a kind byte and maybe a
    value. Returns the values and the position after them.

    This is the hot path of the whole daemon. It leaves bounds checking to Python (an
    index past the end raises IndexError, a short unpack struct.error, and an overlong
    slice leaves ``pos`` past the end, caught at the end); on any of those, or an
    unexpected kind byte, the strict parser runs again to name the exact fault.
    """
    try:
        (ncols,) = _I16.unpack_from(buf, pos)
        if ncols < 0:
            return _read_tuple_strict(buf, pos, tag, what)
        p = pos + 2
        values: list[Datum] = []
        append = values.append
        unpack_len = _U32.unpack_from
        for _ in range(ncols):
            kind = buf[p]
            if kind == 116:  # 't'
                length = unpack_len(buf, p + 1)[0]
                p += 5
                append(buf[p : p + length])
                p += length
            elif kind == 110:  # 'n'
                append(None)
                p += 1
            elif kind == 117:  # 'u'
                append(UNCHANGED_TOAST)
                p += 1
            else:
                break
        else:
            if p <= len(buf):
                return tuple(values), p
    except (IndexError, struct.error):
        pass
    return _read_tuple_strict(buf, pos, tag, what)


def _read_tuple_strict(buf: bytes, pos: int, tag: str, what: str) -> tuple[TupleData, int]:
    """The reference parser: checks every read and names the offset of the first bad one."""
    end = len(buf)
    if pos + 2 > end:
        raise ProtocolError(f"message too short for {what} column count", offset=pos, tag=tag)
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    if ncols < 0:
        raise ProtocolError(f"negative column count {ncols} in {what}", offset=pos - 2, tag=tag)
    values: list[Datum] = []
    append = values.append
    unpack_len = _I32.unpack_from
    for i in range(ncols):
        if pos >= end:
            raise ProtocolError(f"message too short for {what} column {i}", offset=pos, tag=tag)
        kind = buf[pos]
        pos += 1
        if kind == _KIND_TEXT:
            if pos + 4 > end:
                raise ProtocolError(
                    f"message too short for {what} column {i} length", offset=pos, tag=tag
                )
            (length,) = unpack_len(buf, pos)
            pos += 4
            stop = pos + length
            if length < 0 or stop > end:
                raise ProtocolError(
                    f"bad length {length} for {what} column {i}", offset=pos - 4, tag=tag
                )
            append(buf[pos:stop])
            pos = stop
        elif kind == _KIND_NULL:
            append(None)
        elif kind == _KIND_UNCHANGED:
            append(UNCHANGED_TOAST)
        elif kind == _KIND_BINARY:
            if pos + 4 > end:
                raise ProtocolError(
                    f"message too short for {what} column {i} length", offset=pos, tag=tag
                )
            (length,) = unpack_len(buf, pos)
            pos += 4
            stop = pos + length
            if length < 0 or stop > end:
                raise ProtocolError(
                    f"bad length {length} for {what} column {i}", offset=pos - 4, tag=tag
                )
            append(BinaryDatum(buf[pos:stop]))
            pos = stop
        else:
            raise ProtocolError(
                f"unknown tuple column kind {chr(kind)!r} in {what}", offset=pos - 1, tag=tag
            )
    return tuple(values), pos


def _zero_flags(r: _Reader) -> int:
    at = r.pos
    flags = r.u8("flags")
    if flags != 0:
        raise r.fail(f"unrecognized flags {flags}", at)
    return flags


def _read_begin(r: _Reader) -> Begin:
    final_lsn = r.lsn("final_lsn")
    if not final_lsn:
        raise r.fail("final_lsn not set", 1)
    return Begin(final_lsn, r.i64("commit_time"), r.u32("xid"))


def _read_commit(r: _Reader) -> Commit:
    flags = _zero_flags(r)
    return Commit(flags, r.lsn("commit_lsn"), r.lsn("end_lsn"), r.i64("commit_time"))


_M = TypeVar("_M", bound=Message)


def _strict(buf: bytes, tag: str, read: Callable[[_Reader], _M]) -> _M:
    """The general path: names the fault (short message, trailing bytes) with its offset."""
    reader = _Reader(buf, tag)
    msg = read(reader)
    reader.done()
    return msg


_BEGIN: Final = struct.Struct("!QqI")  # final_lsn, commit_time, xid
_COMMIT: Final = struct.Struct("!BQQq")  # flags, commit_lsn, end_lsn, commit_time


def _decode_begin(buf: bytes) -> Begin:
    """Begin, flat: one unpack. Every transaction has one, so it is on the hot path."""
    if len(buf) != 1 + _BEGIN.size:
        return _strict(buf, "B", _read_begin)
    final, when, xid = _BEGIN.unpack_from(buf, 1)
    if not final:
        raise ProtocolError("final_lsn not set", offset=1, tag="B")
    return Begin(Lsn.from_wire(final), when, xid)


def _decode_commit(buf: bytes) -> Commit:
    if len(buf) != 1 + _COMMIT.size:
        return _strict(buf, "C", _read_commit)
    flags, commit, end, when = _COMMIT.unpack_from(buf, 1)
    if flags != 0:
        raise ProtocolError(f"unrecognized flags {flags}", offset=1, tag="C")
    return Commit(flags, Lsn.from_wire(commit), Lsn.from_wire(end), when)


def decode_insert(buf: bytes) -> tuple[int, TupleData]:
    """(relation_id, new tuple) of an Insert outside a streamed block.

    The same checks as :meth:`PgOutputDecoder.decode`, without building the message
    object: inserts are most of what a busy stream carries.
    """
    end = len(buf)
    if end == 0:
        raise ProtocolError("empty message", offset=0)
    if end < 6:
        raise ProtocolError(f"message too short for relation_id ({end} bytes)", offset=1, tag="I")
    if buf[0] != 0x49:
        raise ProtocolError(f"not an Insert message: {chr(buf[0])!r}", offset=0)
    if buf[5] != 0x4E:
        raise ProtocolError("expected new tuple marker 'N'", offset=5, tag="I")
    values, pos = read_tuple(buf, 6, "I", "new tuple")
    if pos != end:
        raise ProtocolError(f"{end - pos} trailing byte(s)", offset=pos, tag="I")
    return _U32.unpack_from(buf, 1)[0], values


class PgOutputDecoder:
    """Decodes one pgoutput message at a time.

    ``proto_version`` is the negotiated ``proto_version`` option; ``parallel_abort_info``
    is true when protocol 4 runs with ``streaming 'parallel'``, where Stream Abort
    carries the abort LSN and timestamp.
    """

    __slots__ = ("_handlers", "in_stream", "parallel_abort_info", "proto_version")

    def __init__(self, proto_version: int = 1, *, parallel_abort_info: bool = False) -> None:
        if proto_version not in (1, 2, 3, 4):
            raise ValueError(f"unsupported pgoutput proto_version {proto_version}")
        self.proto_version = proto_version
        self.parallel_abort_info = parallel_abort_info
        self.in_stream = False
        self._handlers: dict[int, Callable[[_Reader], Message]] = {
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("O"): self._origin,
            ord("R"): self._relation,
            ord("Y"): self._type,
            ord("I"): self._insert,
            ord("U"): self._update,
            ord("D"): self._delete,
            ord("T"): self._truncate,
            ord("M"): self._message,
        }
        if proto_version >= 2:
            self._handlers.update(
                {
                    ord("S"): self._stream_start,
                    ord("E"): self._stream_stop,
                    ord("c"): self._stream_commit,
                    ord("A"): self._stream_abort,
                }
            )
        if proto_version >= 3:
            self._handlers.update(
                {
                    ord("b"): self._begin_prepare,
                    ord("P"): self._prepare,
                    ord("K"): self._commit_prepared,
                    ord("r"): self._rollback_prepared,
                    ord("p"): self._stream_prepare,
                }
            )

    def decode(self, buf: bytes) -> Message:
        if not buf:
            raise ProtocolError("empty message", offset=0)
        tag = buf[0]
        if tag == 0x42:  # 'B' and 'C' frame every transaction: flat paths
            return _decode_begin(buf)
        if tag == 0x43:
            return _decode_commit(buf)
        handler = self._handlers.get(tag)
        name = chr(tag)
        if handler is None:
            raise ProtocolError(
                f"unknown message tag {name!r} for proto_version {self.proto_version}", offset=0
            )
        reader = _Reader(buf, name)
        msg = handler(reader)
        reader.done()
        return msg

    # -- helpers -------------------------------------------------------------------------

    def _stream_xid(self, r: _Reader) -> int | None:
        return r.u32("xid") if self.in_stream else None

    def _flags_zero(self, r: _Reader) -> int:
        return _zero_flags(r)

    # -- transaction framing -------------------------------------------------------------

    def _begin(self, r: _Reader) -> Begin:
        return _read_begin(r)

    def _commit(self, r: _Reader) -> Commit:
        return _read_commit(r)

    def _origin(self, r: _Reader) -> Origin:
        return Origin(r.lsn("commit_lsn"), r.cstring("name"))

    # -- catalog -------------------------------------------------------------------------

    def _relation(self, r: _Reader) -> Relation:
        xid = self._stream_xid(r)
        relation_id = r.u32("relation_id")
        namespace = r.cstring("namespace")
        name = r.cstring("relation_name")
        at = r.pos
        byte = r.char("replica_identity")
        identity = REPLICA_IDENTITIES.get(byte)
        if identity is None:
            raise r.fail(f"unknown replica identity {byte!r}", at)
        ncols = r.i16("column count")
        if ncols < 0:
            raise r.fail(f"negative column count {ncols}", r.pos - 2)
        columns = []
        for i in range(ncols):
            at = r.pos
            flags = r.u8(f"column {i} flags")
            if flags & ~1:
                raise r.fail(f"unknown column flags {flags}", at)
            columns.append(
                Column(
                    flags,
                    r.cstring(f"column {i} name"),
                    r.u32(f"column {i} type"),
                    r.i32(f"column {i} typmod"),
                )
            )
        return Relation(xid, relation_id, namespace, name, identity, tuple(columns))

    def _type(self, r: _Reader) -> Type:
        xid = self._stream_xid(r)
        return Type(xid, r.u32("type_id"), r.cstring("namespace"), r.cstring("name"))

    # -- changes -------------------------------------------------------------------------

    def _insert(self, r: _Reader) -> Insert:
        xid = self._stream_xid(r)
        relation_id = r.u32("relation_id")
        at = r.pos
        if r.char("tuple marker") != "N":
            raise r.fail("expected new tuple marker 'N'", at)
        return Insert(xid, relation_id, r.tuple_data("new tuple"))

    def _update(self, r: _Reader) -> Update:
        xid = self._stream_xid(r)
        relation_id = r.u32("relation_id")
        at = r.pos
        marker = r.char("tuple marker")
        old_kind = OLD_TUPLE_KINDS.get(marker)
        old_tuple = None
        if old_kind is not None:
            old_tuple = r.tuple_data("old tuple")
            at = r.pos
            marker = r.char("tuple marker")
        if marker != "N":
            raise r.fail(f"expected tuple marker 'N', 'K' or 'O', got {marker!r}", at)
        return Update(xid, relation_id, old_kind, old_tuple, r.tuple_data("new tuple"))

    def _delete(self, r: _Reader) -> Delete:
        xid = self._stream_xid(r)
        relation_id = r.u32("relation_id")
        at = r.pos
        marker = r.char("tuple marker")
        old_kind = OLD_TUPLE_KINDS.get(marker)
        if old_kind is None:
            raise r.fail(f"expected tuple marker 'K' or 'O', got {marker!r}", at)
        return Delete(xid, relation_id, old_kind, r.tuple_data("old tuple"))

    def _truncate(self, r: _Reader) -> Truncate:
        xid = self._stream_xid(r)
        nrels = r.i32("relation count")
        if nrels < 0:
            raise r.fail(f"negative relation count {nrels}", r.pos - 4)
        at = r.pos
        options = r.u8("options")
        if options & ~3:
            raise r.fail(f"unknown truncate options {options}", at)
        return Truncate(xid, options, tuple(r.u32(f"relation {i}") for i in range(nrels)))

    def _message(self, r: _Reader) -> LogicalMessage:
        xid = self._stream_xid(r)
        at = r.pos
        flags = r.u8("flags")
        if flags & ~1:
            raise r.fail(f"unknown message flags {flags}", at)
        lsn = r.lsn("lsn")
        prefix = r.cstring("prefix")
        content = r.raw(r.i32("content length"), "content")
        return LogicalMessage(xid, flags, lsn, prefix, content)

    # -- streaming -----------------------------------------------------------------------

    def _stream_start(self, r: _Reader) -> StreamStart:
        if self.in_stream:
            raise r.fail("Stream Start inside a streamed block", 0)
        xid = r.u32("xid")
        at = r.pos
        first = r.u8("first_segment")
        if first not in (0, 1):
            raise r.fail(f"bad first_segment flag {first}", at)
        self.in_stream = True
        return StreamStart(xid, bool(first))

    def _stream_stop(self, r: _Reader) -> StreamStop:
        if not self.in_stream:
            raise r.fail("Stream Stop outside a streamed block", 0)
        self.in_stream = False
        return StreamStop()

    def _stream_commit(self, r: _Reader) -> StreamCommit:
        xid = r.u32("xid")
        flags = self._flags_zero(r)
        return StreamCommit(xid, flags, r.lsn("commit_lsn"), r.lsn("end_lsn"), r.i64("commit_time"))

    def _stream_abort(self, r: _Reader) -> StreamAbort:
        xid = r.u32("xid")
        subxid = r.u32("subxid")
        if self.parallel_abort_info:
            return StreamAbort(xid, subxid, r.lsn("abort_lsn"), r.i64("abort_time"))
        return StreamAbort(xid, subxid, None, None)

    # -- two-phase -----------------------------------------------------------------------

    def _begin_prepare(self, r: _Reader) -> BeginPrepare:
        return BeginPrepare(
            r.lsn("prepare_lsn"),
            r.lsn("end_lsn"),
            r.i64("prepare_time"),
            r.u32("xid"),
            r.cstring("gid"),
        )

    def _prepare(self, r: _Reader) -> Prepare:
        flags = self._flags_zero(r)
        return Prepare(
            flags,
            r.lsn("prepare_lsn"),
            r.lsn("end_lsn"),
            r.i64("prepare_time"),
            r.u32("xid"),
            r.cstring("gid"),
        )

    def _commit_prepared(self, r: _Reader) -> CommitPrepared:
        flags = self._flags_zero(r)
        return CommitPrepared(
            flags,
            r.lsn("commit_lsn"),
            r.lsn("end_lsn"),
            r.i64("commit_time"),
            r.u32("xid"),
            r.cstring("gid"),
        )

    def _rollback_prepared(self, r: _Reader) -> RollbackPrepared:
        flags = self._flags_zero(r)
        return RollbackPrepared(
            flags,
            r.lsn("prepare_end_lsn"),
            r.lsn("rollback_end_lsn"),
            r.i64("prepare_time"),
            r.i64("rollback_time"),
            r.u32("xid"),
            r.cstring("gid"),
        )

    def _stream_prepare(self, r: _Reader) -> StreamPrepare:
        flags = self._flags_zero(r)
        return StreamPrepare(
            flags,
            r.lsn("prepare_lsn"),
            r.lsn("end_lsn"),
            r.i64("prepare_time"),
            r.u32("xid"),
            r.cstring("gid"),
        )
