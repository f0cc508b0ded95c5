"""The source side: one walsender connection in logical replication mode.

A thin I/O shell over libpq (psycopg 3's ``pq`` wrapper) driven by the asyncio
loop: connect, run replication commands (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT,
START_REPLICATION), then read CopyBoth frames without blocking and send standby
status updates. Decoding lives in :mod:`replicator.protocol`; deciding what to
confirm lives in :mod:`replicator.feedback`.

Why not psycopg2's ``ReplicationCursor``: its ``read_message()`` consumes
keepalives internally and moves its flush position to a keepalive's ``wal_end``
whenever the last *explicitly* flushed LSN is >= the data_start of the last
message received. A transaction that began before our last confirmed commit has
a smaller data_start, so while an earlier, complete but not yet applied
transaction waits in our batch, a keepalive would confirm past it: a crash then
loses it. Owning the CopyBoth frames means every flush position we send is one
the target has committed.

The session's text output is pinned as PostgreSQL's own apply worker pins it, so
values arrive in one unambiguous format whatever the server's defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import psycopg
from psycopg import pq, sql

from replicator.connect import source_conninfo
from replicator.feedback import Status
from replicator.lsn import Lsn
from replicator.protocol.frames import standby_status_update


class StreamEnded(psycopg.OperationalError):
    """The server ended the CopyBoth stream."""


class ReplicationConnection:
    """A walsender session. Not thread-safe; use from the event loop only."""

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        self._pgconn = pgconn
        self._loop = asyncio.get_running_loop()
        self._fd = pgconn.socket
        self._pending_flush = False
        self.server_version = pgconn.server_version

    @classmethod
    async def connect(
        cls, dsn: str, *, application_name: str, timeout: float = 30.0
    ) -> ReplicationConnection:
        conninfo = source_conninfo(dsn, application_name=application_name, replication=True)
        pgconn = pq.PGconn.connect_start(conninfo.encode())
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    state = pgconn.connect_poll()
                    if state == pq.PollingStatus.OK:
                        break
                    if state == pq.PollingStatus.FAILED:
                        raise psycopg.OperationalError(_message(pgconn))  # noqa: TRY301
                    await wait_fd(loop, pgconn.socket, write=state == pq.PollingStatus.WRITING)
        except BaseException:
            pgconn.finish()
            raise
        pgconn.nonblocking = 1
        return cls(pgconn)

    @property
    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._pgconn.status == pq.ConnStatus.BAD

    # -- commands ------------------------------------------------------------------------

    async def _send(self, command: sql.Composable) -> None:
        self._pgconn.send_query(command.as_bytes(None))
        while self._pgconn.flush():
            await wait_fd(self._loop, self._fd, write=True)

    async def _next_result(self) -> pq.abc.PGresult | None:
        while self._pgconn.is_busy():
            await wait_fd(self._loop, self._fd, write=False)
            self._pgconn.consume_input()
        return self._pgconn.get_result()

    async def execute(self, command: sql.Composable) -> list[tuple[str | None, ...]]:
        """Run a replication command (simple query protocol); rows as text."""
        await self._send(command)
        rows: list[tuple[str | None, ...]] = []
        error: psycopg.Error | None = None
        while (res := await self._next_result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                error = error or psycopg.errors.error_from_result(res)
            elif res.status == pq.ExecStatus.TUPLES_OK:
                for r in range(res.ntuples):
                    rows.append(
                        tuple(
                            None if (v := res.get_value(r, c)) is None else bytes(v).decode()
                            for c in range(res.nfields)
                        )
                    )
        if error is not None:
            raise error
        return rows

    async def wal_sender_timeout(self) -> float | None:
        """The server's ``wal_sender_timeout`` in seconds (None: disabled)."""
        ((value,),) = await self.execute(sql.SQL("SHOW wal_sender_timeout"))
        return parse_duration(value or "0")

    async def identify_system(self) -> tuple[str, int, Lsn, str | None]:
        ((sysid, timeline, xlogpos, dbname),) = await self.execute(sql.SQL("IDENTIFY_SYSTEM"))
        assert sysid
        assert timeline
        assert xlogpos
        return sysid, int(timeline), Lsn(xlogpos), dbname

    async def create_slot(
        self, slot: str, *, temporary: bool = False, snapshot: str = "export"
    ) -> tuple[Lsn, str | None]:
        """CREATE_REPLICATION_SLOT with pgoutput: (consistent point, exported snapshot name).

        With ``snapshot='export'`` the snapshot stays valid until this connection runs its
        next command, so copy sessions can import it (SET TRANSACTION SNAPSHOT)."""
        rows = await self.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT {})").format(
                sql.Identifier(slot),
                sql.SQL("TEMPORARY " if temporary else ""),
                sql.Literal(snapshot),
            )
        )
        (_, consistent, snapshot_name, _) = rows[0]
        assert consistent is not None
        return Lsn(consistent), snapshot_name

    async def start_replication(self, slot: str, start: Lsn, options: Mapping[str, str]) -> None:
        """Enter CopyBoth mode at ``start`` (the server starts at the slot's confirmed
        point instead when that is later)."""
        opts = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items()
        )
        await self._send(
            sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
                sql.Identifier(slot), sql.SQL(str(Lsn(start))), opts
            )
        )
        res = await self._next_result()
        if res is None:
            raise psycopg.OperationalError("START_REPLICATION returned no result")
        if res.status == pq.ExecStatus.FATAL_ERROR:
            err = psycopg.errors.error_from_result(res)
            while await self._next_result() is not None:
                pass
            raise err
        if res.status != pq.ExecStatus.COPY_BOTH:
            raise psycopg.OperationalError(f"START_REPLICATION: unexpected status {res.status}")

    # -- CopyBoth ------------------------------------------------------------------------

    def read_frames(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames already received, without blocking. Empty: wait for the
        socket to be readable and call again. Raises :class:`StreamEnded` at CopyDone."""
        pgconn = self._pgconn
        frames: list[bytes] = []
        consumed = False
        while len(frames) < limit:
            n, data = pgconn.get_copy_data(1)
            if n > 0:
                frames.append(bytes(data))
                continue
            if n == 0:
                if consumed:
                    break
                pgconn.consume_input()  # raises OperationalError on a broken connection
                consumed = True
                continue
            if n == -1:
                if frames:
                    break  # hand these over first; the end is reported on the next call
                self._raise_end()
            raise psycopg.OperationalError(_message(pgconn))
        return frames

    def _raise_end(self) -> None:
        error: psycopg.Error | None = None
        while (res := self._pgconn.get_result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                error = error or psycopg.errors.error_from_result(res)
        if error is not None:
            raise error
        raise StreamEnded("the server ended the replication stream")

    def send_status(self, status: Status, now_pg_us: int) -> None:
        """Queue a standby status update and flush as much as the socket takes."""
        msg = standby_status_update(
            status.write, status.flush, status.apply, now_pg_us, reply=status.reply
        )
        if self._pgconn.put_copy_data(msg) != 1:
            raise psycopg.OperationalError(_message(self._pgconn) or "cannot queue status update")
        self._flush()

    def _flush(self) -> None:
        pending = self._pgconn.flush()
        if pending < 0:
            raise psycopg.OperationalError(_message(self._pgconn))
        if pending and not self._pending_flush:
            self._pending_flush = True
            self._loop.add_writer(self._fd, self._on_writable)
        elif not pending and self._pending_flush:
            self._pending_flush = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        try:
            self._flush()
        except psycopg.OperationalError:
            # the reader will see the broken connection and report it
            self._pending_flush = False
            self._loop.remove_writer(self._fd)

    async def close(self) -> None:
        """End CopyBoth politely (CopyDone) if we can, then close the socket."""
        pgconn = self._pgconn
        try:
            if self._pending_flush:
                self._loop.remove_writer(self._fd)
                self._pending_flush = False
            if pgconn.status == pq.ConnStatus.OK and pgconn.put_copy_end() == 1:
                async with asyncio.timeout(5):
                    await self._finish_copy()
        except (TimeoutError, psycopg.Error, OSError):
            pass  # closing anyway: the server notices the socket going away
        finally:
            pgconn.finish()

    async def _finish_copy(self) -> None:
        pgconn = self._pgconn
        while pgconn.flush():
            await wait_fd(self._loop, self._fd, write=True)
        # read what the server still sends until its own CopyDone
        while True:
            n, _ = pgconn.get_copy_data(1)
            if n < 0:
                break
            if n == 0:
                await wait_fd(self._loop, self._fd, write=False)
                pgconn.consume_input()
        # then the command's results; a COPY status here means there is nothing more to wait for
        while (res := await self._next_result()) is not None:
            if res.status in (
                pq.ExecStatus.COPY_BOTH,
                pq.ExecStatus.COPY_OUT,
                pq.ExecStatus.COPY_IN,
            ):
                break


async def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _message(pgconn: pq.abc.PGconn) -> str:
    return pgconn.error_message.decode(errors="replace").strip()


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float | None:
    """A GUC duration as SHOW prints it ("10s", "1min", "500ms", "0") in seconds."""
    value = value.strip()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number) :] or "ms"  # wal_sender_timeout's base unit
    seconds = float(number) * _UNITS[unit]
    return seconds or None
