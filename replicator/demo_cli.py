"""The ``demo`` command's options, for ``replicator.cli`` to register.

Kept apart so the demo's list of knobs does not crowd the daemon's CLI module.
"""

from __future__ import annotations

import sys

import click


@click.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Replay the seed's day of traffic in this many seconds.",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0.0001),
    default=None,
    help="Volume factor for seeded rows and traffic (1 = the seed's: ~100K profiles, "
    "~650K changes a day). Default: 1, or --rows / 100,000.",
)
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=None,
    help="Profiles to seed (golden records, 360 profiles, portal accounts). Alone, it also "
    "sets --scale.",
)
@click.option("--keep", is_flag=True, help="Leave the clusters running and print how to connect.")
@click.option(
    "--pg-version",
    "version",
    type=int,
    default=None,
    help="PostgreSQL major version to use (default: the system's, else the embedded wheel's).",
)
@click.option(
    "--max-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="p99 commit-to-apply delay the run must meet to pass (the seed's target); "
    "0: measure and show it without judging.",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="The live view (default: when stdout is a terminal); --no-live prints log lines.",
)
def demo(
    *,
    seconds: float,
    scale: float | None,
    rows: int | None,
    keep: bool,
    version: int | None,
    live: bool | None,
    max_delay: float,
) -> None:
    """Run the seed's two databases end to end on throwaway local PostgreSQL clusters.

    Two clusters, the smart_warehouse and smart_citizen schemas at the seed's volumes,
    examples/smart.toml as the config, the initial copy, a compressed day of traffic both
    ways, then a verification table. Exits 0 only if every table is equal, every masked
    column masked and the p99 delay within the seed's 5 seconds."""
    from replicator.demo import DemoOptions, run_demo  # noqa: PLC0415 - keeps the CLI fast

    sys.exit(
        run_demo(
            DemoOptions(
                rows=rows,
                seconds=seconds,
                keep=keep,
                version=version,
                scale=scale,
                live=live,
                max_delay=max_delay or None,
            )
        )
    )
