"""``replicator status``: where every pipeline stands, read from the databases alone.

Per pipeline: the slot on the source (exists, active, wal_status, retained WAL, confirmed
position), the source's current position, what the target applied (the position committed
with the data, :func:`replicator.control.read_progress`), the lag between the two in bytes and, when
the daemon is streaming, in seconds (from its walsender's statistics), the state kept in
the target's control schema (copying or streaming, paused, per-table copy progress) and
the open dead letters and conflicts. Works while the daemon is down.

I/O for reading (:func:`read_status`), pure for showing (:func:`format_status`,
:func:`status_json`). Read-only; never prints a password.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg import AsyncConnection

from replicator import control
from replicator.catalog import relation_name
from replicator.config import Config, PipelineConfig, QualifiedName
from replicator.errors import describe_error
from replicator.lsn import Lsn
from replicator.preflight.checks import connect
from replicator.query import fetch_one

# An idle pipeline records progress only every so many bytes (pipeline.IDLE_RECORD_BYTES):
# a lag below this with no walsender sample is "caught up".
CAUGHT_UP_BYTES: Final = 1024 * 1024


@dataclass(slots=True)
class SlotStatus:
    name: str
    exists: bool | None = None  # None: the source could not be read, so nobody knows
    active: bool = False
    active_pid: int | None = None
    wal_status: str | None = None
    retained_wal_bytes: int | None = None
    safe_wal_size: int | None = None
    restart_lsn: str | None = None
    confirmed_flush_lsn: str | None = None


@dataclass(slots=True)
class TableStatus:
    table: str
    state: str
    rows_copied: int
    bytes_copied: int
    ranges_done: int
    ranges_total: int


@dataclass(slots=True)
class PipelineStatus:
    pipeline: str
    source: str
    target: str
    slot: SlotStatus
    origin: str
    state: str | None = None  # replicator.pipelines.state; None: never ran
    paused: bool | None = None
    paused_at: dt.datetime | None = None
    consistent_lsn: str | None = None
    source_lsn: str | None = None  # the source's current WAL position
    source_last_commit: dt.datetime | None = None  # needs track_commit_timestamp
    applied_lsn: str | None = None  # committed with the data (else the origin's progress)
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    lag_note: str | None = None
    tables: list[TableStatus] = field(default_factory=list)
    dead_letters: int | None = None  # open (unresolved)
    conflicts: int | None = None
    problems: list[str] = field(default_factory=list)  # what could not be read
    source_reachable: bool = True  # False: no connection to the source at all
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reading ------------------------------------------------------------------------------


async def read_status(config: Config) -> list[PipelineStatus]:
    conns: dict[str, AsyncConnection | str] = {}  # a connection, or why there is none
    try:
        for db in dict.fromkeys(d for p in config.pipelines for d in (p.from_, p.to)):
            try:
                conns[db] = await connect(config, db, "replicator:status")
            except psycopg.Error as exc:
                conns[db] = f"{db}: cannot connect: {describe_error(exc)}"
        out = []
        for pipe in config.pipelines:
            st = PipelineStatus(
                pipe.name, pipe.from_, pipe.to, SlotStatus(pipe.slot_name), pipe.origin_name
            )
            for side, db, reader in (
                ("source", pipe.from_, _read_source),
                ("target", pipe.to, _read_target),
            ):
                conn = conns[db]
                if isinstance(conn, str):
                    st.problems.append(conn)
                    st.source_reachable &= side != "source"
                    continue
                try:
                    await reader(conn, pipe, st)
                except psycopg.Error as exc:
                    st.problems.append(f"{side} {db}: {describe_error(exc)}")
            src, dst = conns[pipe.from_], conns[pipe.to]
            if not isinstance(src, str) and not isinstance(dst, str):
                try:
                    await _read_renames(src, dst, pipe, st)
                except psycopg.Error as exc:
                    st.problems.append(f"renamed tables: {describe_error(exc)}")
            compute_lag(st)
            out.append(st)
        return out
    finally:
        for conn in conns.values():
            if not isinstance(conn, str):
                await conn.close()


async def _read_source(conn: AsyncConnection, pipe: PipelineConfig, st: PipelineStatus) -> None:
    cur = await conn.execute(
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
        " ELSE pg_current_wal_lsn() END::text,"
        " current_setting('track_commit_timestamp')::bool"
    )
    lsn, track = await fetch_one(cur)
    st.source_lsn = lsn
    if track:
        cur = await conn.execute("SELECT timestamp FROM pg_last_committed_xact()")
        row = await cur.fetchone()
        st.source_last_commit = row[0] if row else None
    cur = await conn.execute(
        "SELECT s.active, s.active_pid, s.wal_status, s.safe_wal_size,"
        " pg_wal_lsn_diff(%s::pg_lsn, s.restart_lsn)::bigint,"
        " s.restart_lsn::text, s.confirmed_flush_lsn::text"
        " FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = %s",
        [lsn, pipe.slot_name],
    )
    row = await cur.fetchone()
    slot = st.slot
    slot.exists = row is not None
    if row is None:
        return
    (
        slot.active,
        slot.active_pid,
        slot.wal_status,
        slot.safe_wal_size,
        slot.retained_wal_bytes,
        slot.restart_lsn,
        slot.confirmed_flush_lsn,
    ) = row
    if slot.active_pid is not None:
        # the walsender measures lag from the daemon's feedback (visible to the same role)
        cur = await conn.execute(
            "SELECT extract(epoch FROM coalesce(replay_lag, flush_lag))::float8"
            " FROM pg_catalog.pg_stat_replication WHERE pid = %s",
            [slot.active_pid],
        )
        sample = await cur.fetchone()
        if sample is not None:
            st.lag_seconds = sample[0]
            if st.lag_seconds is None:
                st.lag_note = "walsender has no lag sample (idle, or just started)"


async def _read_target(conn: AsyncConnection, pipe: PipelineConfig, st: PipelineStatus) -> None:
    try:
        cur = await conn.execute(
            "SELECT CASE WHEN pg_replication_origin_oid(%(o)s) IS NOT NULL"
            " THEN pg_replication_origin_progress(%(o)s, false)::text END",
            {"o": pipe.origin_name},
        )
        st.applied_lsn = (await fetch_one(cur))[0]
    except psycopg.errors.InsufficientPrivilege as exc:
        st.problems.append(f"target {pipe.to}: origin progress: {describe_error(exc)}")
    cur = await conn.execute("SELECT to_regclass('replicator.pipelines') IS NOT NULL")
    if not (await fetch_one(cur))[0]:
        st.notes.append(
            f"target {pipe.to}: no control schema `replicator` yet (`replicator setup` creates it)"
        )
        return
    # to_jsonb: columns added by later versions of control.sql (paused) may be missing
    cur = await conn.execute(
        "SELECT to_jsonb(p) FROM replicator.pipelines p WHERE p.pipeline = %s", [pipe.name]
    )
    row = await cur.fetchone()
    if row is not None:
        p = row[0]
        # what was committed with the data, not origin progress alone (it can run ahead)
        if (progress := await control.read_progress(conn, pipe.name, pipe.origin_name)) is not None:
            st.applied_lsn = str(progress)
        st.state = p.get("state")
        st.consistent_lsn = p.get("consistent_lsn")
        st.paused = p.get("paused")
        if p.get("paused_at"):
            st.paused_at = dt.datetime.fromisoformat(p["paused_at"])
    cur = await conn.execute(
        "SELECT t.source_schema || '.' || t.source_table, t.state, t.rows_copied,"
        " t.bytes_copied, count(r.*) FILTER (WHERE r.done), count(r.*)"
        " FROM replicator.tables t"
        " LEFT JOIN replicator.copy_ranges r USING (pipeline, source_schema, source_table)"
        " WHERE t.pipeline = %s GROUP BY 1, 2, 3, 4 ORDER BY 1",
        [pipe.name],
    )
    st.tables = [TableStatus(*r) for r in await cur.fetchall()]
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM replicator.dead_letters"
        "         WHERE pipeline = %(p)s AND resolved IS NULL),"
        " (SELECT count(*) FROM replicator.conflicts WHERE pipeline = %(p)s)",
        {"p": pipe.name},
    )
    st.dead_letters, st.conflicts = await fetch_one(cur)


async def _read_renames(
    src: AsyncConnection, dst: AsyncConnection, pipe: PipelineConfig, st: PipelineStatus
) -> None:
    """Configured tables that go by another name on the source now: the daemon follows
    them by the OID it recorded, and the config should be updated."""
    cur = await dst.execute("SELECT to_regclass('replicator.tables') IS NOT NULL")
    if not (await fetch_one(cur))[0]:
        return
    # to_jsonb: relation_id is missing where control.sql is older
    cur = await dst.execute(
        "SELECT t.source_schema, t.source_table, (to_jsonb(t) ->> 'relation_id')::oid"
        " FROM replicator.tables t WHERE t.pipeline = %s ORDER BY 1, 2",
        [pipe.name],
    )
    for schema, name, oid in await cur.fetchall():
        if oid is None:
            continue
        now_named = await relation_name(src, int(oid))
        if now_named is not None and now_named != QualifiedName(schema, name):
            st.notes.append(
                f"source table {schema}.{name} was renamed to {now_named}: the pipeline "
                f'follows it by its OID; update the config (source = "{now_named}")'
            )


def compute_lag(st: PipelineStatus) -> None:
    """Lag in bytes from the two positions; in seconds only from a live walsender's sample:
    the databases keep no commit time for an origin's progress that could be read back."""
    if st.source_lsn and st.applied_lsn and Lsn(st.applied_lsn):
        st.lag_bytes = max(0, int(Lsn(st.source_lsn)) - int(Lsn(st.applied_lsn)))
    elif st.source_lsn and st.state is not None:
        st.lag_note = "nothing applied yet (initial copy)"
    if not st.slot.active:
        if st.lag_note is None and st.source_lsn:
            st.lag_note = (
                "the daemon is not streaming: seconds are measured by its walsender while it runs"
            )
        return
    if st.lag_seconds is None and st.lag_bytes is not None and st.lag_bytes <= CAUGHT_UP_BYTES:
        st.lag_seconds = 0.0
        st.lag_note = "caught up"


# --- showing -----------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    """Like pg_size_pretty: 1024-based, one decimal above bytes."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def format_status(statuses: Sequence[PipelineStatus]) -> str:
    """One block per pipeline, for people at a terminal."""
    blocks = []
    for st in statuses:
        state = st.state or "not started"
        if st.paused:
            state += f", PAUSED since {_when(st.paused_at)}"
        lines = [f"{st.pipeline}  {st.source} -> {st.target}  {state}"]
        slot = st.slot
        if slot.exists:
            active = f"active (pid {slot.active_pid})" if slot.active else "inactive"
            lines.append(
                f"  slot          {slot.name}: {active}, wal_status {slot.wal_status}, "
                f"retains {human_bytes(slot.retained_wal_bytes)}, "
                f"confirmed {slot.confirmed_flush_lsn}"
            )
        elif slot.exists is False:
            lines.append(f"  slot          {slot.name}: missing")
        elif not st.source_reachable:
            # not "missing": that would invite a `resync --all` over a network outage
            lines.append(f"  slot          {slot.name}: unknown, source unreachable")
        else:
            lines.append(f"  slot          {slot.name}: unknown, could not read the source")
        source = st.source_lsn or "-"
        if st.source_last_commit:
            source += f", last commit {_when(st.source_last_commit)}"
        lines.append(f"  source at     {source}")
        lines.append(f"  applied       {st.applied_lsn or '-'} (origin {st.origin})")
        seconds = "-" if st.lag_seconds is None else f"{st.lag_seconds:.1f} s"
        lag = f"{human_bytes(st.lag_bytes)}, {seconds}"
        if st.lag_note:
            lag += f" ({st.lag_note})"
        lines.append(f"  lag           {lag}")
        lines.append(
            f"  dead letters  {_count(st.dead_letters)} open; conflicts {_count(st.conflicts)}"
        )
        if st.tables:
            width = max(len(t.table) for t in st.tables)
            lines.append("  tables")
            for t in st.tables:
                ranges = f"ranges {t.ranges_done}/{t.ranges_total}" if t.ranges_total else ""
                lines.append(
                    f"    {t.table:<{width}}  {t.state:<8} {t.rows_copied:>12,} rows "
                    f"{human_bytes(t.bytes_copied):>10}  {ranges}".rstrip()
                )
        lines.extend(f"  note          {n}" for n in st.notes)
        lines.extend(f"  PROBLEM       {p}" for p in st.problems)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def status_json(statuses: Sequence[PipelineStatus]) -> bytes:
    return orjson.dumps(
        {"pipelines": [st.as_dict() for st in statuses]},
        option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z,
    )
