"""Benchmark: the masking step of the hot path, for a citizen row with four masked columns.

Run: ``python bench/bench_masking.py [--rows N] [--repeats R]``.

It builds synthetic rows (seeded, so every run masks the same values), then times the
step the pipeline runs per row: copy the tuple values, and for each masked column call
:func:`replicator.masking.mask_datum` with that column's compiled mask. The baseline is
the same loop with identity masks, so the result reads as a ratio; absolute numbers drift
on a shared machine. Each figure is the best of R repetitions, with the garbage collector
off while timing (as :mod:`timeit` does). A second table times each mask called directly on
its column, to show which one costs what.

It measures speed only; correctness lives in tests/unit/test_masking.py.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from replicator.masking import MaskFn, compile_mask, mask_datum, parse_mask

Row = tuple[bytes | None, ...]
Plan = Sequence[tuple[int, MaskFn]]

# The row: (id, name, jan_aadhaar, mobile, email, income_band, district). Columns 2..5 masked.
RULES = {2: "partial:4", 3: "partial:4", 4: "email", 5: "redact:CONFIDENTIAL"}
COLUMN_NAMES = {2: "jan_aadhaar", 3: "mobile", 4: "email", 5: "income_band"}
KEY = bytes(range(32))  # benchmark only: a fixed, public key

FIRST = ["asha", "ravi", "meena", "arjun", "kavita", "suresh", "pooja", "vikram", "neha", "amit"]
LAST = ["sharma", "verma", "meena", "singh", "gupta", "jain", "yadav", "rathore", "joshi"]
DOMAINS = ["gmail.com", "yahoo.in", "rajasthan.gov.in", "outlook.com", "rediffmail.com"]
BANDS = [b"below 1 lakh", b"1-2.5 lakh", b"2.5-5 lakh", b"5-10 lakh", b"above 10 lakh"]
DISTRICTS = [b"Jaipur", b"Jodhpur", b"Udaipur", b"Kota", b"Ajmer", b"Bikaner"]


def make_rows(count: int, seed: int = 20240601) -> list[Row]:
    rnd = random.Random(seed)
    rows: list[Row] = []
    for i in range(count):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        aadhaar = b"%04d-%04d-%04d" % (
            rnd.randrange(1000, 10000),
            rnd.randrange(10000),
            rnd.randrange(10000),
        )
        mobile = b"%010d" % rnd.randrange(6_000_000_000, 10_000_000_000)
        email = f"{first}.{last}{rnd.randrange(100)}@{rnd.choice(DOMAINS)}".encode()
        name = f"{first.title()} {last.title()}".encode()
        rows.append(
            (
                str(i).encode(),
                name,
                aadhaar,
                mobile,
                email,
                rnd.choice(BANDS),
                rnd.choice(DISTRICTS),
            )
        )
    return rows


def mask_rows(rows: list[Row], plan: Plan) -> list[list[bytes | None]]:
    """The per-row step as the pipeline runs it: a mutable copy, each masked column replaced."""
    out = []
    for row in rows:
        values = list(row)
        for index, fn in plan:
            values[index] = mask_datum(fn, values[index])
        out.append(values)
    return out


def call_each(values: list[bytes], fn: MaskFn) -> None:
    for value in values:
        fn(value)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return best


def identity(value: bytes) -> bytes:
    return value


def print_table(title: str, header: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    rows = make_rows(args.rows)
    masked_plan = [(i, compile_mask(parse_mask(rule), KEY)) for i, rule in RULES.items()]
    identity_plan = [(i, identity) for i in RULES]
    masks_per_row = len(masked_plan)

    # refuse to time a broken mask
    sample = mask_rows(rows[:1], masked_plan)[0]
    aadhaar, mobile, email, band = sample[2:6]
    assert isinstance(aadhaar, bytes)
    assert aadhaar.startswith(b"****-****-"), aadhaar
    assert isinstance(mobile, bytes)
    assert mobile.startswith(b"******"), mobile
    assert isinstance(email, bytes)
    assert b"***@" in email, email
    assert band == b"CONFIDENTIAL", band

    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    print(f"{args.rows:,} rows, {masks_per_row} masked columns, best of {args.repeats}")

    base = best_seconds(lambda: mask_rows(rows, identity_plan), args.repeats)
    real = best_seconds(lambda: mask_rows(rows, masked_plan), args.repeats)
    calls = args.rows * masks_per_row
    lines = []
    for label, seconds in (("baseline (identity masks)", base), ("masked (4 masks)", real)):
        lines.append(
            [
                label,
                f"{args.rows / seconds:,.0f}",
                f"{seconds / args.rows * 1e9:,.0f}",
                f"{seconds / calls * 1e9:,.0f}",
                f"{seconds / base:.2f}x",
            ]
        )
    header = ["row step", "rows/s", "ns/row", "ns/mask call", "vs baseline"]
    print_table("per row (copy + mask_datum per masked column)", header, lines)
    print(f"masking cost above baseline: {(real - base) / calls * 1e9:,.0f} ns per mask call")

    # each mask alone, called directly on its own column (no mask_datum, no row copy)
    columns = {i: [row[i] for row in rows] for i in RULES}
    per_mask = [
        ("identity", 3, identity),
        *(
            (f"{rule} ({COLUMN_NAMES[i]})", i, fn)
            for (i, fn), rule in zip(masked_plan, RULES.values(), strict=True)
        ),
        ("hash (mobile)", 3, compile_mask(parse_mask("hash"), KEY)),
        ("email (jan_aadhaar: no @)", 2, compile_mask(parse_mask("email"))),
    ]
    ident = best_seconds(lambda: call_each(columns[3], identity), args.repeats)
    lines = []
    for label, index, fn in per_mask:
        seconds = best_seconds(
            lambda fn=fn, index=index: call_each(columns[index], fn), args.repeats
        )
        lines.append([label, f"{seconds / args.rows * 1e9:,.0f}", f"{seconds / ident:.2f}x"])
    print_table("per mask (fn(value) in a loop)", ["mask", "ns/call", "vs identity"], lines)


if __name__ == "__main__":
    main()
