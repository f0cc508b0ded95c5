"""Micro-benchmark: folding changes into a :class:`TableBatch` (pure Python, no server).

Run: ``python bench/bench_fold.py [--rows N] [--repeats R]``.

Times three loops the applier runs per change: N inserts (the COPY fast path), N updates
of existing keys, and N updates of keys inserted in the same batch. Each figure is the
best of R repetitions with the garbage collector off (as :mod:`timeit` does), in CPU
time of this process (a shared machine steals wall-clock time, not CPU time); compare
runs of two checkouts on the same machine as a ratio, absolute numbers drift.

It measures speed only; correctness lives in tests/unit/test_batching.py.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from replicator.batching import TableBatch
from replicator.config import QualifiedName, TableConfig
from replicator.mapping import TablePlan, TargetColumn, TargetTable, build_plan
from replicator.protocol.messages import Begin, Column, Relation

COLUMNS = ("id", "email", "n", "note")


def make_plan() -> TablePlan:
    relation = Relation(
        None,
        16384,
        "public",
        "u",
        "d",
        tuple(Column(1 if c == "id" else 0, c, 25, -1) for c in COLUMNS),
    )
    text = {c: TargetColumn(c, "pg_catalog", "text", False, False, None, "S") for c in COLUMNS}
    target = TargetTable(QualifiedName("public", "u"), 4242, text, (frozenset({"id"}),), ("id",))
    config = TableConfig(source=QualifiedName("public", "u"))
    return build_plan(
        relation, config, target, global_masks={}, unclassified="allow", hash_key=None
    )


def best(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        finally:
            gc.enable()
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    plan = make_plan()
    begin = Begin(final_lsn=1, commit_time=0, xid=1)  # type: ignore[arg-type]
    rows = [
        (str(i).encode(), b"user%d@example.in" % i, b"%d" % i, b"note") for i in range(args.rows)
    ]
    changed = [(r[0], r[1], b"0", b"changed") for r in rows]

    def inserts() -> None:
        tb = TableBatch(plan)
        tb.ref.begin = begin
        for r in rows:
            tb.insert(r)

    def updates() -> None:
        tb = TableBatch(plan)
        tb.ref.begin = begin
        for r in changed:
            tb.update(None, r)

    def insert_then_update() -> None:
        tb = TableBatch(plan)
        tb.ref.begin = begin
        for r in rows:
            tb.insert(r)
        for r in changed:
            tb.update(None, r)

    print(f"python {sys.version.split()[0]}, {args.rows} rows, best of {args.repeats}")
    for name, fn in [
        ("insert", inserts),
        ("update", updates),
        ("insert+update", insert_then_update),
    ]:
        t = best(fn, args.repeats)
        print(f"{name:>14}: {t * 1000:8.1f} ms  {t / args.rows * 1e9:6.0f} ns/change")


if __name__ == "__main__":
    main()
