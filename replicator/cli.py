"""Command line: ``replicator run | check | setup | status | demo``.

Exit codes: 0 success, 1 a problem was found (every problem printed), 2 usage.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from replicator import __version__
from replicator.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, load_config
from replicator.errors import ConfigError, ReplicatorError

_config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    envvar=CONFIG_ENV,
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    show_envvar=True,
    help="Configuration file (TOML).",
)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _run_async(coro: Any) -> Any:
    import uvloop  # noqa: PLC0415 - only the commands that run a loop need it

    return uvloop.run(coro)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replicator")
def main() -> None:
    """Keep PostgreSQL databases in sync through logical replication, masking on the way."""


@main.command()
@_config_option
def run(config_path: str) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from replicator import logs  # noqa: PLC0415

    config = _load(config_path)
    logs.configure(config.service.log_format, config.service.log_level)
    try:
        code = _run_async(_run_daemon(config, config_path))
    except ReplicatorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


async def _run_daemon(config: Config, config_path: str | None = None) -> int:
    from replicator.daemon import Daemon  # noqa: PLC0415

    return await Daemon(config, config_path).run()


@main.command()
@_config_option
def setup(config_path: str) -> None:
    """Create publications, slots and origins, idempotently."""
    from replicator.slots import setup as do_setup  # noqa: PLC0415

    config = _load(config_path)
    try:
        actions = _run_async(do_setup(config))
    except ReplicatorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for action in actions:
        click.echo(str(action))


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def check(config_path: str, as_json: bool) -> None:
    """Preflight: config, databases, privileges, tables, types, masks.

    Prints every finding with its fix; exits 1 on any error (warnings don't fail)."""
    from replicator.preflight import (  # noqa: PLC0415
        Finding,
        Report,
        format_report,
        report_json,
        run_preflight,
    )

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report = Report([Finding("error", "config", exc.source, p) for p in exc.problems])
    else:
        report = _run_async(run_preflight(config))
    if as_json:
        click.echo(report_json(report, source=config_path).decode())
    else:
        click.echo(format_report(report, source=config_path))
    sys.exit(0 if report.ok else 1)


# operator commands live in their own module
from replicator.cli_ops import dlq, resync  # noqa: E402
from replicator.demo_cli import demo  # noqa: E402

main.add_command(dlq)
main.add_command(resync)
main.add_command(demo)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: str, as_json: bool) -> None:
    """Per pipeline: slot, lag, last applied, copy progress, dead letters.

    Reads the databases only, so it works while the daemon is down. Exits 1 when a
    database could not be read."""
    from replicator.status import format_status, read_status, status_json  # noqa: PLC0415

    config = _load(config_path)
    statuses = _run_async(read_status(config))
    if as_json:
        click.echo(status_json(statuses).decode())
    else:
        click.echo(format_status(statuses))
    sys.exit(1 if any(st.problems for st in statuses) else 0)
