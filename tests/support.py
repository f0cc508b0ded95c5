"""Helpers shared by integration and e2e tests: waiting, TOML, table snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql


class WaitTimeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, reason: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``reason`` at the
    deadline. Never a bare sleep: every wait in the suite has a condition and a limit."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for: {reason} (last: {last!r})")
        time.sleep(interval)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Sequence):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for our config shape: tables, arrays of tables one level down."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping | list)}
    for k, v in scalars.items():
        lines.append(f"{toml_value(k)} = {toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, Mapping):
            _table(lines, [k], v)
    for k, v in data.items():
        if isinstance(v, list) and v and isinstance(v[0], Mapping):
            for item in v:
                lines.append(f"\n[[{k}]]")
                for ik, iv in item.items():
                    if not (isinstance(iv, list) and iv and isinstance(iv[0], Mapping)):
                        lines.append(f"{toml_value(ik)} = {toml_value(iv)}")
                for ik, iv in item.items():
                    if isinstance(iv, list) and iv and isinstance(iv[0], Mapping):
                        for sub in iv:
                            lines.append(f"\n[[{k}.{ik}]]")
                            lines.extend(
                                f"{toml_value(sk)} = {toml_value(sv)}" for sk, sv in sub.items()
                            )
    return "\n".join(lines) + "\n"


def _table(lines: list[str], path: list[str], data: Mapping[str, Any]) -> None:
    lines.append("\n[" + ".".join(toml_value(p) if not p.isidentifier() else p for p in path) + "]")
    nested = []
    for k, v in data.items():
        if isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values()) and v:
            nested.append((k, v))
        else:
            lines.append(f"{toml_value(k)} = {toml_value(v)}")
    for k, v in nested:
        _table(lines, [*path, k], v)


def snapshot(dsn: str, table: str, *, order: str | None = None) -> list[str]:
    """Every row of ``table`` as PostgreSQL's own row text, sorted: exact and type-blind."""
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT ROW(snap_row.*)::text FROM {} AS snap_row").format(ident)
        ).fetchall()
    return sorted(r[0] for r in rows)


def scalar(dsn: str, query: str, params: Sequence[Any] | None = None) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


def assert_stable(probe: Callable[[], Any], *, seconds: float, interval: float = 0.5) -> Any:
    """``probe()`` must return the same value throughout ``seconds`` (a quiet system stays
    quiet: this is an observation window, the one kind of timed wait a test may need)."""
    first = probe()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = probe()
        if now != first:
            raise AssertionError(f"changed while it should stay still: {first!r} -> {now!r}")
    return first
