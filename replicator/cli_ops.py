"""Operator commands that act on a running system: ``dlq`` (and ``resync``).

Registered on the main command group by :mod:`replicator.cli`.
"""

from __future__ import annotations

import sys

import click
import orjson

from replicator.config import Config, PipelineConfig


def _pipelines(config: Config, name: str | None) -> list[PipelineConfig]:
    if name is None:
        return list(config.pipelines)
    try:
        return [config.pipeline(name)]
    except KeyError:
        click.echo(f"error: no pipeline named {name!r}", err=True)
        sys.exit(2)


@click.group()
def dlq() -> None:
    """Rows the target rejected: list, retry, discard."""


_pipeline_option = click.option(
    "-p", "--pipeline", "pipeline_name", default=None, help="Only this pipeline (default: all)."
)


@dlq.command("list")
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar="REPLICATOR_CONFIG",
    default="/etc/replicator/replicator.toml",
    show_default=True,
)
@_pipeline_option
@click.option("--all", "include_resolved", is_flag=True, help="Include applied and discarded.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(
    config_path: str, pipeline_name: str | None, include_resolved: bool, as_json: bool
) -> None:
    """List dead letters (values are masked, as applied)."""
    from replicator.cli import _load, _run_async  # noqa: PLC0415
    from replicator.dlq import list_letters  # noqa: PLC0415

    config = _load(config_path)

    async def go() -> list:
        import psycopg  # noqa: PLC0415

        out = []
        by_target: dict[str, list[str]] = {}
        for p in _pipelines(config, pipeline_name):
            by_target.setdefault(p.to, []).append(p.name)
        for db, names in by_target.items():
            async with await psycopg.AsyncConnection.connect(
                config.databases[db].dsn.secret_value, autocommit=True
            ) as conn:
                out += await list_letters(conn, pipelines=names, include_resolved=include_resolved)
        return out

    letters = _run_async(go())
    if as_json:
        for letter in letters:
            click.echo(orjson.dumps(letter, default=str).decode())
        return
    if not letters:
        click.echo("no dead letters")
        return
    for lt in letters:
        key = ", ".join(f"{k}={v}" for k, v in (lt.key or lt.old_key or {}).items())
        click.echo(
            f"{lt.id:>6}  {lt.pipeline}  {lt.target_table}  {lt.operation:<6}  [{key}]  "
            f"{lt.error_class} {lt.error_message}  lsn {lt.source_lsn}"
            f"{'  ' + lt.resolved if lt.resolved else ''}"
        )


@dlq.command("retry")
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar="REPLICATOR_CONFIG",
    default="/etc/replicator/replicator.toml",
    show_default=True,
)
@_pipeline_option
@click.argument("ids", nargs=-1, type=int)
def dlq_retry(config_path: str, pipeline_name: str | None, ids: tuple[int, ...]) -> None:
    """Re-apply dead letters (all open ones, or the given IDs). Idempotent."""
    from replicator.cli import _load, _run_async  # noqa: PLC0415
    from replicator.dlq import retry  # noqa: PLC0415

    config = _load(config_path)
    failed = 0
    total = 0
    for p in _pipelines(config, pipeline_name):
        for r in _run_async(retry(config, p, ids)):
            total += 1
            failed += r.outcome != "applied"
            click.echo(f"{r.id:>6}  {r.outcome}{'  ' + r.detail if r.detail else ''}")
    if total == 0:
        click.echo("nothing to retry")
    sys.exit(1 if failed else 0)


@dlq.command("discard")
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar="REPLICATOR_CONFIG",
    default="/etc/replicator/replicator.toml",
    show_default=True,
)
@_pipeline_option
@click.argument("ids", nargs=-1, type=int, required=True)
def dlq_discard(config_path: str, pipeline_name: str | None, ids: tuple[int, ...]) -> None:
    """Mark dead letters as discarded (they stay in the table, resolved)."""
    from replicator.cli import _load, _run_async  # noqa: PLC0415
    from replicator.dlq import discard  # noqa: PLC0415

    config = _load(config_path)
    n = sum(_run_async(discard(config, p, ids)) for p in _pipelines(config, pipeline_name))
    click.echo(f"discarded {n}")


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar="REPLICATOR_CONFIG",
    default="/etc/replicator/replicator.toml",
    show_default=True,
)
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="Copy this source table again while its pipeline streams (repeatable).",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="New slot and a full copy at the next run (daemon stopped).",
)
@_pipeline_option
def resync(
    config_path: str, tables: tuple[str, ...], everything: bool, pipeline_name: str | None
) -> None:
    """Re-copy tables: one table live (--table), or everything with a new slot (--all)."""
    from replicator.cli import _load, _run_async  # noqa: PLC0415
    from replicator.errors import ReplicatorError  # noqa: PLC0415
    from replicator.resync_cli import resync_all, resync_tables  # noqa: PLC0415

    if bool(tables) == everything:
        click.echo("error: give --table T (one or more) or --all", err=True)
        sys.exit(2)
    config = _load(config_path)
    pipes = _pipelines(config, pipeline_name)
    try:
        lines = _run_async(
            resync_all(config, pipes) if everything else resync_tables(config, pipes, tables)
        )
    except ReplicatorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(line)
