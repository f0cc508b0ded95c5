"""The randomized differential test's driver: histories through the daemon, with faults.

An *episode* is one database pair, one pipeline with random batch settings, one daemon and
``K`` seeded histories (tests/histories.py), each in its own schema. The histories' first
transactions are written before the daemon starts (they arrive by the initial copy), the
rest while it streams, interleaved, with faults injected between transactions: SIGKILL of
the daemon and a restart, a fast or immediate restart of the target or the source server,
a cut route (every connection through the proxy reset). Once the source is quiet the
target must catch up and then equal the source, table by table, history by history: no
missing row, no extra row, and no dead letter (every history is valid on the source).

Everything random comes from the episode's seed (``plan_episode``), so a failure is
replayed with the one-line command it prints. Used by tests/integration/test_differential.py
(a short run in ``make test``) and scripts/soak.py (``make soak``).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tests import histories
from tests.histories import History
from tests.support import WaitTimeout, scalar, snapshot, wait_until

FAULTS: tuple[str, ...] = (
    "kill",  # SIGKILL of the daemon, then start it again
    "target_fast",  # pg_ctl restart -m fast of the target
    "target_immediate",  # ... -m immediate (crash recovery)
    "source_fast",
    "source_immediate",
    "cut_source",  # every connection to the source through the proxy reset
    "cut_target",
)

# batch settings drawn per episode (see replicator/config.py BatchConfig for the limits)
MAX_CHANGES = (1, 2, 3, 7, 20, 100, 1000, 50_000)
MAX_DELAY_MS = (1, 5, 20, 50, 200, 500)
FLUSH_BYTES = (1024, 4096, 32 * 1024, 1 << 20, 8 << 20)
QUEUE_BYTES = (1024, 8192, 64 * 1024, 1 << 20, 16 << 20)


@dataclass(frozen=True)
class EpisodePlan:
    seed: int
    features: frozenset[str]
    fault_kinds: tuple[str, ...]
    snapshots: tuple[str, ...]
    fault_count: tuple[int, int]
    histories: tuple[History, ...]
    batch: dict[str, int]
    snapshot: str  # the pipeline's first-copy mode
    order: tuple[int, ...]  # the history of each streamed transaction, in source order
    faults: tuple[tuple[int, str], ...]  # (after this many streamed transactions, fault)
    transactions: int

    def schema(self, h: History) -> str:
        return f"h{h.seed}"

    def describe(self) -> str:
        return (
            f"episode {self.seed}: batch={self.batch} snapshot={self.snapshot} "
            f"faults={list(self.faults)} histories={[h.seed for h in self.histories]}"
        )


def plan_episode(
    seed: int,
    *,
    features: Iterable[str] = histories.FEATURES,
    faults: Sequence[str] = FAULTS,
    histories_per_episode: int = 8,
    transactions: int = 30,
    fault_count: tuple[int, int] = (1, 3),
    snapshots: Sequence[str] = ("truncate", "merge"),
) -> EpisodePlan:
    """Everything random about an episode, from its seed alone."""
    rng = random.Random(seed)
    feats = frozenset(features)
    hs = tuple(
        histories.generate(seed * 1000 + i, feats, transactions=transactions)
        for i in range(histories_per_episode)
    )
    batch = {
        "max_changes": rng.choice(MAX_CHANGES),
        "max_delay_ms": rng.choice(MAX_DELAY_MS),
        "flush_bytes": rng.choice(FLUSH_BYTES),
        "queue_bytes": rng.choice(QUEUE_BYTES),
    }
    order = [i for i, h in enumerate(hs) for _ in h.transactions]
    rng.shuffle(order)  # each history's own transactions stay in order (see run_episode)
    faults_at: list[tuple[int, str]] = []
    if faults:
        n = rng.randint(*fault_count)
        points = sorted(rng.randrange(len(order) + 1) for _ in range(n))
        faults_at = [(p, rng.choice(list(faults))) for p in points]
    return EpisodePlan(
        seed=seed,
        features=feats,
        fault_kinds=tuple(faults),
        snapshots=tuple(snapshots),
        fault_count=fault_count,
        histories=hs,
        batch=batch,
        snapshot=rng.choice(list(snapshots)),
        order=tuple(order),
        faults=tuple(faults_at),
        transactions=transactions,
    )


def replay_command(plan: EpisodePlan, major: int) -> str:
    feats = ",".join(f for f in histories.FEATURES if f in plan.features) or "none"
    faults = ",".join(plan.fault_kinds) or "none"
    return (
        f"python scripts/soak.py --pg {major} --episode {plan.seed} "
        f"--histories {len(plan.histories)} --transactions {plan.transactions} "
        f"--features {feats} --faults {faults} --snapshot {','.join(plan.snapshots)} "
        f"--fault-count {plan.fault_count[0]},{plan.fault_count[1]}"
    )


# --- running one episode -------------------------------------------------------------------


@dataclass
class HistoryResult:
    seed: int
    schema: str
    ops: frozenset[str]
    missing: dict[str, int] = field(default_factory=dict)  # table -> rows not on the target
    extra: dict[str, int] = field(default_factory=dict)  # table -> rows only on the target
    dead_letters: list[str] = field(default_factory=list)
    source_error: str | None = None  # the history did not run on the source: a generator bug

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.dead_letters or self.source_error)

    def summary(self) -> str:
        parts = []
        if self.source_error:
            parts.append(f"source error: {self.source_error}")
        if self.missing:
            parts.append(f"missing {self.missing}")
        if self.extra:
            parts.append(f"extra/different {self.extra}")
        if self.dead_letters:
            parts.append(f"{len(self.dead_letters)} dead letters: {self.dead_letters[:3]}")
        return "; ".join(parts) or "ok"


@dataclass
class EpisodeResult:
    plan: EpisodePlan
    major: int
    results: list[HistoryResult]
    caught_up: bool
    seconds: float
    faults_done: list[str]
    daemon_exit: int | None  # None: still running at the end, as it should
    log_excerpt: list[str]

    @property
    def failures(self) -> list[HistoryResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures and self.daemon_exit is None

    def report(self) -> str:
        lines = [
            f"pg{self.major} {self.plan.describe()}",
            f"  {len(self.results)} histories, {len(self.failures)} failed, caught up: "
            f"{self.caught_up}, faults done: {self.faults_done}, {self.seconds:.1f}s",
        ]
        if self.daemon_exit is not None:
            lines.append(f"  the daemon exited with {self.daemon_exit}")
        for r in self.failures:
            lines.append(f"  FAIL history {r.seed} ({r.schema}): {r.summary()}")
        if not self.ok:
            lines.append("  daemon log (warnings and errors, first of each):")
            lines += [f"    {x}" for x in self.log_excerpt[:15]]
            lines.append(f"  replay: {replay_command(self.plan, self.major)}")
        return "\n".join(lines)


def log_excerpt(text: str) -> list[str]:
    """The first line of each distinct warning or error event in a JSON daemon log."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            if line.strip() and "Traceback" not in line:
                seen.setdefault(line[:200], line[:300])
            continue
        if not isinstance(ev, dict) or ev.get("level") not in ("warning", "error", "critical"):
            continue
        name = str(ev.get("event"))
        detail = {k: v for k, v in ev.items() if k not in ("timestamp", "level", "logger")}
        seen.setdefault(name, json.dumps(detail, default=str)[:400])
    return list(seen.values())


def _fingerprints(dsn: str, tables: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(count, md5 of the sorted rows) of every table, in one query."""
    parts = [
        sql.SQL(
            "(SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))"
            " FROM {} AS r)"
        ).format(sql.Identifier(s, t))
        for s, t in tables
    ]
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS i, * FROM {} AS f{}").format(sql.Literal(i), p, sql.SQL(str(i)))
        for i, p in enumerate(parts)
    )
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(sql.SQL("{} ORDER BY i").format(query)).fetchall()
    return [(int(c), str(m)) for _, c, m in rows]


def _same(src: str, dst: str, tables: list[tuple[str, str]]) -> bool:
    try:
        return _fingerprints(src, tables) == _fingerprints(dst, tables)
    except psycopg.Error:
        return False  # a server restarting, or the target still without the tables' rows


class _Source:
    """The workload's own session on the source, reconnected after a source restart."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None

    def session(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = _connect_retrying(self.dsn)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self, schema: str, tx: histories.Transaction) -> None:
        conn = self.session()
        with conn.transaction(force_rollback=not tx.commit):
            for stmt in tx.stmts:
                conn.execute(stmt.render(schema))


def _connect_retrying(dsn: str, timeout: float = 60) -> psycopg.Connection[Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the server is coming back up; poll with a deadline


def _run_history_txs(
    source: _Source, schema: str, txs: Sequence[histories.Transaction], result: HistoryResult
) -> None:
    for tx in txs:
        if result.source_error:
            return
        try:
            source.run(schema, tx)
        except psycopg.Error as exc:
            result.source_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def run_episode(
    plan: EpisodePlan,
    dbs: Any,  # tests.plugins.pg.DbPair
    start_daemon: Callable[[dict[str, Any]], Any],  # config -> DaemonProcess (setup + start)
    make_proxy: Callable[[int], Any],  # upstream port -> TcpProxy
    *,
    catchup_timeout: float = 120,
) -> EpisodeResult:
    t0 = time.monotonic()
    results = [HistoryResult(h.seed, plan.schema(h), h.ops) for h in plan.histories]
    tables = [(plan.schema(h), t) for h in plan.histories for t in histories.TABLES]
    for dsn in (dbs.src, dbs.dst):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for h in plan.histories:
                for stmt in histories.ddl(plan.schema(h)):
                    conn.execute(stmt)
    source = _Source(dbs.src)
    for h, r in zip(plan.histories, results, strict=True):
        _run_history_txs(source, r.schema, h.initial, r)

    src_proxy, dst_proxy = make_proxy(dbs.pair.src.port), make_proxy(dbs.pair.dst.port)
    cfg = dbs.config(
        [{"source": f"{s}.{t}"} for s, t in tables],
        pipeline={
            "batch": plan.batch,
            "snapshot": plan.snapshot,
            "source_timeout_s": 5,
            "target_timeout_s": 10,
            "heartbeat_interval_s": 1,
        },
    )
    for side, proxy in (("src", src_proxy), ("dst", dst_proxy)):
        cfg["databases"][side]["dsn"] = (
            f"host=127.0.0.1 port={proxy.port} dbname={dbs.name} user=postgres connect_timeout=3"
        )
    d = start_daemon(cfg)
    # the streamed transactions must reach the target by the stream, not by the first
    # copy: a busy machine can take longer to start the daemon than to run the histories
    _wait_streaming(dbs.dst, d, timeout=catchup_timeout)

    faults = list(plan.faults)
    done: list[str] = []
    position = [0] * len(plan.histories)

    def inject(kind: str) -> None:
        match kind:
            case "kill":
                d.kill()
                d.start()
            case "target_fast" | "target_immediate":
                dbs.pair.dst.restart(kind.split("_")[1])
            case "source_fast" | "source_immediate":
                source.close()
                dbs.pair.src.restart(kind.split("_")[1])
            case "cut_source":
                src_proxy.cut()
            case "cut_target":
                dst_proxy.cut()
            case _:
                raise ValueError(f"unknown fault {kind!r}")
        done.append(kind)

    for n, i in enumerate(plan.order):
        while faults and faults[0][0] <= n:
            inject(faults.pop(0)[1])
        h = plan.histories[i]
        _run_history_txs(source, results[i].schema, [h.transactions[position[i]]], results[i])
        position[i] += 1
    for _, kind in faults:
        inject(kind)
    source.close()

    deadline = time.monotonic() + catchup_timeout
    caught_up = False
    while time.monotonic() < deadline and d.alive():
        if _same(dbs.src, dbs.dst, tables):
            caught_up = True
            break
        time.sleep(0.5)  # poll the condition until the deadline

    _judge(dbs, results)
    exit_code = None if d.alive() else d.proc.returncode
    excerpt = log_excerpt(d.log_text())
    with contextlib.suppress(Exception):
        d.stop(timeout=30)
    return EpisodeResult(
        plan, dbs.major, results, caught_up, time.monotonic() - t0, done, exit_code, excerpt
    )


def _wait_streaming(dst: str, d: Any, *, timeout: float) -> bool:
    """Until the pipeline streams; False when it does not (a failed first copy, say: the
    judge then reports what is missing) or the daemon exits."""

    def streaming() -> bool:
        if not d.alive():
            return True  # nothing to wait for
        try:
            return bool(scalar(dst, "SELECT state = 'streaming' FROM replicator.pipelines"))
        except psycopg.Error:
            return False

    try:
        wait_until(streaming, timeout=timeout, reason="the pipeline streams", interval=0.2)
    except WaitTimeout:
        return False
    return d.alive()


def _judge(dbs: Any, results: list[HistoryResult]) -> None:
    letters: list[tuple[str, str, str, str]] = []
    with contextlib.suppress(psycopg.Error), psycopg.connect(dbs.dst) as conn:
        letters = conn.execute(
            "SELECT source_table, operation, error_class, error_message"
            " FROM replicator.dead_letters ORDER BY id"
        ).fetchall()
    for r in results:
        for t in histories.TABLES:
            src = Counter(snapshot(dbs.src, f"{r.schema}.{t}"))
            try:
                dst = Counter(snapshot(dbs.dst, f"{r.schema}.{t}"))
            except psycopg.Error:
                dst = Counter()
            missing, extra = sum((src - dst).values()), sum((dst - src).values())
            if missing:
                r.missing[t] = missing
            if extra:
                r.extra[t] = extra
        r.dead_letters = [
            f"{tbl} {op} {cls} {msg}"
            for tbl, op, cls, msg in letters
            if tbl.split(".")[0].strip('"') == r.schema
        ]
