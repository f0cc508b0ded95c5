"""The demo's verdict: every replicated table equal, every masked column masked, delays.

For each table of each pipeline in the config, the source rows projected as the daemon
would write them (renames, exclusions, masks) must equal the target's rows. The
columns without a mask are compared by digest, bucket by bucket, inside PostgreSQL;
the masked ones row by row, the expected values computed with
:mod:`replicator.masking` from the source's originals. A masked column must also
*look* masked, by a shape test written independently of the masking code
(:func:`looks_masked`), and hold no original value.

Delay is measured with the heartbeat tables: ``arrived_at - sent_at`` of every
heartbeat sent during the traffic (both clocks are this host's).

The comparisons are I/O; :func:`looks_masked`, :func:`latency` and the verdicts are
pure. Never prints a value of a masked column: failures are counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

import psycopg
from psycopg import sql

from replicator.config import Config, PipelineConfig, QualifiedName, TableConfig
from replicator.masking import MaskFn, MaskingKey, MaskSpec, compile_mask, load_key, resolve_masks

_T = TypeVar("_T")

LATENCY_TARGET_SECONDS: Final = 5.0  # the seed's success criterion for event-driven syncs
HEARTBEAT_SOURCE: Final = QualifiedName("ops", "heartbeat_out")

_EMAIL_MASKED: Final = re.compile(r"[^@*]\*\*\*@[^@]+")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


# --- pure ----------------------------------------------------------------------------------


def looks_masked(spec: MaskSpec, value: str | None) -> bool:
    """Whether ``value`` has the shape ``spec``'s output must have (NULL always passes).

    Deliberately not built on :mod:`replicator.masking`: a bug there must not be able to
    make its own output look right."""
    if value is None:
        return True
    match spec.kind:
        case "redact":
            return value == spec.arg
        case "partial":
            assert isinstance(spec.arg, int)
            kept = sum(1 for ch in value if ch.isalnum())
            return kept <= spec.arg and "*" in value
        case "email":
            return value == "***" or _EMAIL_MASKED.fullmatch(value) is not None
        case "hash":
            return _HEX64.fullmatch(value) is not None
        case "null":
            return False
        case "plain":
            return True
    return False


@dataclass(frozen=True, slots=True)
class MaskCheck:
    column: str  # target column
    spec: MaskSpec
    values: int = 0  # non-NULL target values looked at
    wrong: int = 0  # not the masked source value
    leaked: int = 0  # the source's original value, unmasked
    malformed: int = 0  # does not look like the mask's output

    @property
    def ok(self) -> bool:
        return self.wrong == self.leaked == self.malformed == 0


@dataclass(frozen=True, slots=True)
class TableCheck:
    pipeline: str
    source: QualifiedName
    target: QualifiedName
    source_rows: int
    target_rows: int
    missing: int  # source keys the target lacks
    extra: int  # target keys the source lacks
    different: int  # same key, other values (masked columns included)
    masks: tuple[MaskCheck, ...] = ()

    @property
    def equal(self) -> bool:
        return self.missing == self.extra == self.different == 0

    @property
    def masked_ok(self) -> bool:
        return all(m.ok for m in self.masks)

    @property
    def ok(self) -> bool:
        return self.equal and self.masked_ok


@dataclass(frozen=True, slots=True)
class Latency:
    pipeline: str
    count: int
    p50: float | None
    p99: float | None
    max: float | None
    target: float | None = LATENCY_TARGET_SECONDS  # None: measured and shown, not judged

    @property
    def ok(self) -> bool:
        return self.p99 is not None and (self.target is None or self.p99 <= self.target)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (no interpolation: a real observed delay)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * q // 1))  # ceil(n * q), at least 1
    return sorted_values[int(rank) - 1]


def latency(
    pipeline: str, delays: Iterable[float], target: float | None = LATENCY_TARGET_SECONDS
) -> Latency:
    values = sorted(delays)
    if not values:
        return Latency(pipeline, 0, None, None, None, target)
    return Latency(
        pipeline, len(values), quantile(values, 0.5), quantile(values, 0.99), values[-1], target
    )


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    pipeline: str
    dead_letters: int
    conflicts: int


@dataclass(frozen=True, slots=True)
class Verdict:
    tables: tuple[TableCheck, ...]
    latencies: tuple[Latency, ...]
    health: tuple[PipelineHealth, ...]
    daemon_errors: int  # error lines in the daemon's log
    daemon_exit: int | None  # None: not stopped yet

    @property
    def ok(self) -> bool:
        return (
            bool(self.tables)
            and all(t.ok for t in self.tables)
            and bool(self.latencies)
            and all(x.ok for x in self.latencies)
            and all(h.dead_letters == 0 for h in self.health)
            and self.daemon_errors == 0
            and self.daemon_exit in (None, 0)
        )


# --- reading the databases -----------------------------------------------------------------


def _columns(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_attribute a"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " AND a.attgenerated = '' ORDER BY a.attnum",
        [_regclass(table)],
    ).fetchall()
    return [r[0] for r in rows]


def _primary_key(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index i"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n",
        [_regclass(table)],
    ).fetchall()
    return [r[0] for r in rows]


def _regclass(table: QualifiedName) -> str:
    return sql.Identifier(table.schema, table.name).as_string(None)


def _row_text(columns: Sequence[str]) -> sql.Composable:
    """``ROW(c1::text, ...)::text``: one comparable text per row, whatever the types."""
    if not columns:
        return sql.SQL("''")
    return sql.SQL("ROW({})::text").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
    )


Rows = dict[str, tuple[object, ...]]  # key text -> (plain digest, masked column texts...)


def _key_hash(key_text: sql.Composable) -> sql.Composable:
    # 64-bit text hashes are stable across server versions (hash partitioning relies on it)
    return sql.SQL("pg_catalog.hashtextextended({}, 0)").format(key_text)


def _row_hash(row_text: sql.Composable) -> sql.Composable:
    return sql.SQL("pg_catalog.hashtextextended({}, 7)").format(row_text)


def _buckets(
    conn: psycopg.Connection, table: QualifiedName, key: Sequence[str], cols: Sequence[str]
) -> dict[int, tuple[int, int]]:
    """Per bucket (the low 8 bits of the key's hash): rows, and a digest of them: the
    XOR of each row's hash of key and values, which needs no sort."""
    query = sql.SQL(
        "SELECT ({kh} & 255)::int, count(*), bit_xor({rh})"
        " FROM (SELECT {kt} AS kt, {rt} AS rt FROM {t}) AS r GROUP BY 1"
    ).format(
        kh=_key_hash(sql.SQL("kt")),
        rh=_row_hash(sql.SQL("kt || '|' || rt")),
        kt=_row_text(key),
        rt=_row_text(cols),
        t=sql.Identifier(table.schema, table.name),
    )
    return {b: (n, d) for b, n, d in conn.execute(query).fetchall()}


def _rows_in(
    conn: psycopg.Connection,
    *,
    table: QualifiedName,
    key: Sequence[str],
    plain: Sequence[str],
    masked: Sequence[str],
    buckets: Sequence[int] | None,
) -> Rows:
    """Row level: key text -> (hash of the plain columns, then each masked column's
    text); only the rows of ``buckets`` unless it is None."""
    where: sql.Composable = sql.SQL("")
    if buckets is not None:
        where = sql.SQL(" WHERE ({} & 255) = ANY(%s)").format(_key_hash(_row_text(key)))
    query = sql.SQL("SELECT {kt}, {rh}{m} FROM {t}{w}").format(
        kt=_row_text(key),
        rh=_row_hash(_row_text(plain)),
        m=sql.SQL("").join(sql.SQL(", {}::text").format(sql.Identifier(c)) for c in masked),
        t=sql.Identifier(table.schema, table.name),
        w=where,
    )
    cur = conn.execute(query, [list(buckets)] if buckets is not None else None)
    return {r[0]: tuple(r[1:]) for r in cur.fetchall()}


@dataclass(frozen=True, slots=True)
class _Projection:
    """How one source table lands in its target, as column lists in matching order."""

    key_src: tuple[str, ...]
    key_dst: tuple[str, ...]
    plain_src: tuple[str, ...]
    plain_dst: tuple[str, ...]
    masked_src: tuple[str, ...]
    masked_dst: tuple[str, ...]
    specs: tuple[MaskSpec, ...]


def _projection(src: psycopg.Connection, config: Config, table: TableConfig) -> _Projection:
    columns = _columns(src, table.source)
    key = _primary_key(src, table.source)
    if not key:
        raise ValueError(f"{table.source}: no primary key, rows cannot be matched")
    specs = resolve_masks(
        f"{table.source.schema}.{table.source.name}", columns, table.mask, config.masking.columns
    )
    plain: list[tuple[str, str]] = []
    masked: list[tuple[str, str, MaskSpec]] = []
    for c in columns:
        dest = table.target_column(c)
        if dest is None:
            continue
        spec = specs.get(c)
        if spec is None or spec.kind == "plain":
            plain.append((c, dest))
        else:
            masked.append((c, dest, spec))
    return _Projection(
        key_src=tuple(key),
        key_dst=tuple(table.target_column(k) or k for k in key),
        plain_src=tuple(c for c, _ in plain),
        plain_dst=tuple(d for _, d in plain),
        masked_src=tuple(c for c, _, _ in masked),
        masked_dst=tuple(d for _, d, _ in masked),
        specs=tuple(s for _, _, s in masked),
    )


def _both(first: Callable[[], _T], second: Callable[[], _T]) -> tuple[_T, _T]:
    """Run two reads at once (two servers, two cores) and return both results."""
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(first)
        other = second()
        return job.result(), other


def compare_rows(
    src_rows: Rows, dst_rows: Rows, specs: Sequence[MaskSpec], masks: Sequence[MaskFn]
) -> tuple[int, int, int, list[list[int]]]:
    """(missing, extra, different, per masked column [values, wrong, leaked, malformed]):
    source rows with ``masks`` applied against the target's (pure)."""
    missing = sum(1 for k in src_rows if k not in dst_rows)
    extra = sum(1 for k in dst_rows if k not in src_rows)
    different = 0
    counts = [[0, 0, 0, 0] for _ in specs]
    for k, s_row in src_rows.items():
        d_row = dst_rows.get(k)
        if d_row is None:
            continue
        same = s_row[0] == d_row[0]
        for i, fn in enumerate(masks):
            raw, got = s_row[1 + i], d_row[1 + i]
            assert raw is None or isinstance(raw, str)
            assert got is None or isinstance(got, str)
            masked = None if raw is None else fn(raw.encode())
            want = None if masked is None else masked.decode()
            c = counts[i]
            if got is not None:
                c[0] += 1
                c[3] += not looks_masked(specs[i], got)
                c[2] += raw is not None and got == raw and want != raw
            if got != want:
                c[1] += 1
                same = False
        different += not same
    return missing, extra, different, counts


def check_table(
    src: psycopg.Connection,
    dst: psycopg.Connection,
    config: Config,
    pipe: PipelineConfig,
    table: TableConfig,
    *,
    hash_key: MaskingKey | None = None,
) -> TableCheck:
    proj = _projection(src, config, table)
    target = table.target_name
    src_buckets, dst_buckets = _both(
        lambda: _buckets(src, table.source, proj.key_src, proj.plain_src),
        lambda: _buckets(dst, target, proj.key_dst, proj.plain_dst),
    )
    source_rows = sum(n for n, _ in src_buckets.values())
    target_rows = sum(n for n, _ in dst_buckets.values())
    differing = sorted(
        b
        for b in src_buckets.keys() | dst_buckets.keys()
        if src_buckets.get(b) != dst_buckets.get(b)
    )
    if not proj.masked_src and not differing:
        return TableCheck(pipe.name, table.source, target, source_rows, target_rows, 0, 0, 0)
    # row level: every row when masked columns need their values, else the odd buckets only
    only = None if proj.masked_src else differing
    src_rows, dst_rows = _both(
        lambda: _rows_in(
            src,
            table=table.source,
            key=proj.key_src,
            plain=proj.plain_src,
            masked=proj.masked_src,
            buckets=only,
        ),
        lambda: _rows_in(
            dst,
            table=target,
            key=proj.key_dst,
            plain=proj.plain_dst,
            masked=proj.masked_dst,
            buckets=only,
        ),
    )
    masks = [compile_mask(spec, hash_key) for spec in proj.specs]
    missing, extra, different, counts = compare_rows(src_rows, dst_rows, proj.specs, masks)
    checks = tuple(
        MaskCheck(col, spec, *c)
        for col, spec, c in zip(proj.masked_dst, proj.specs, counts, strict=True)
    )
    return TableCheck(
        pipe.name, table.source, target, source_rows, target_rows, missing, extra, different, checks
    )


def check_tables(
    config: Config, dsns: dict[str, str], progress: Callable[[str], object] | None = None
) -> list[TableCheck]:
    """Every table of every pipeline, source against target."""
    key = load_key(config.masking.key_file) if config.masking.key_file else None
    out = []
    for pipe in config.pipelines:
        with _connect(dsns[pipe.from_]) as src, _connect(dsns[pipe.to]) as dst:
            for table in pipe.tables:
                if progress:
                    progress(f"{pipe.name}: {table.source} -> {table.target_name}")
                out.append(check_table(src, dst, config, pipe, table, hash_key=key))
    return out


def _connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    # text forms of timestamps must not depend on either server's setting
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def heartbeat_target(pipe: PipelineConfig) -> QualifiedName | None:
    table = pipe.table_for(HEARTBEAT_SOURCE.schema, HEARTBEAT_SOURCE.name)
    return None if table is None else table.target_name


def measure_latency(
    config: Config, dsns: dict[str, str], since: object, target: float | None
) -> list[Latency]:
    """Per pipeline: heartbeats sent since ``since`` (a timestamp), arrival minus send,
    judged against ``target`` seconds at p99 (None: not judged)."""
    out = []
    for pipe in config.pipelines:
        beats = heartbeat_target(pipe)
        if beats is None:
            out.append(Latency(pipe.name, 0, None, None, None, target))
            continue
        with _connect(dsns[pipe.to]) as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT extract(epoch FROM arrived_at - sent_at)::float8 FROM {}"
                    " WHERE sent_at >= %s"
                ).format(sql.Identifier(beats.schema, beats.name)),
                [since],
            ).fetchall()
        out.append(latency(pipe.name, (r[0] for r in rows), target))
    return out


def pipeline_health(config: Config, dsns: dict[str, str]) -> list[PipelineHealth]:
    """Open dead letters and logged conflicts, from each target's control schema."""
    out = []
    for pipe in config.pipelines:
        with _connect(dsns[pipe.to]) as conn:
            dead = conn.execute(
                "SELECT count(*) FROM replicator.dead_letters"
                " WHERE pipeline = %s AND resolved IS NULL",
                [pipe.name],
            ).fetchone()
            conflicts = conn.execute(
                "SELECT count(*) FROM replicator.conflicts WHERE pipeline = %s", [pipe.name]
            ).fetchone()
        out.append(
            PipelineHealth(
                pipe.name, int(dead[0]) if dead else 0, int(conflicts[0]) if conflicts else 0
            )
        )
    return out
