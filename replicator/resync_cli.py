"""What ``replicator resync`` does to the databases (the daemon does the copying).

``--table``: mark the table ``resync`` on the target and NOTIFY the daemon, which
copies it under a fresh snapshot while the pipeline streams (see
:mod:`replicator.resync`); a daemon that is down does it at its next start.
``--all``: with the daemon stopped, drop the pipeline's slot and forget its state and
its origin progress: the next run creates a new slot and copies every table, as a first
run does (a source whose position went backward, after a restore, starts over right).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection

from replicator import control
from replicator.config import Config, PipelineConfig, QualifiedName
from replicator.errors import ConfigError, SlotError
from replicator.slots import ensure_publication


async def resync_tables(
    config: Config, pipes: Sequence[PipelineConfig], names: Sequence[str]
) -> list[str]:
    wanted = [QualifiedName.parse(n) for n in names]
    lines: list[str] = []
    for name in wanted:
        owners = [p for p in pipes if any(t.source == name for t in p.tables)]
        if not owners:
            raise ConfigError("resync", [f"{name}: no pipeline replicates this source table"])
        for pipe in owners:
            async with await AsyncConnection.connect(
                config.databases[pipe.from_].dsn.secret_value, autocommit=True
            ) as src:
                action = await ensure_publication(src, pipe.from_, pipe)
                if action.outcome != "exists":
                    lines.append(str(action))
            async with await AsyncConnection.connect(
                config.databases[pipe.to].dsn.secret_value, autocommit=True
            ) as dst:
                await control.ensure_schema(dst)
                state = await control.read_pipeline(dst, pipe.name)
                if state is None:
                    lines.append(f"{pipe.name}: {name} is copied by the pipeline's first run")
                    continue
                await control.write_table(dst, pipe.name, name, "resync")
                await dst.execute("SELECT pg_notify('replicator_control', %s)", [pipe.name])
                lines.append(
                    f"{pipe.name}: {name} marked for resync; the daemon copies it now "
                    "(or at its next start) while the other tables stream"
                )
    return lines


async def resync_all(config: Config, pipes: Sequence[PipelineConfig]) -> list[str]:
    lines: list[str] = []
    for pipe in pipes:
        async with await AsyncConnection.connect(
            config.databases[pipe.from_].dsn.secret_value, autocommit=True
        ) as src:
            cur = await src.execute(
                "SELECT active, active_pid FROM pg_catalog.pg_replication_slots"
                " WHERE slot_name = %s",
                [pipe.slot_name],
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                raise SlotError(
                    f"slot {pipe.slot_name!r} is in use (walsender pid {row[1]}): stop the "
                    "daemon first (systemctl stop replicator), then run resync --all again"
                )
            if row is not None:
                await src.execute(
                    "SELECT pg_catalog.pg_drop_replication_slot(%s)", [pipe.slot_name]
                )
                lines.append(f"{pipe.from_}: slot {pipe.slot_name} dropped")
        async with await AsyncConnection.connect(
            config.databases[pipe.to].dsn.secret_value, autocommit=True
        ) as dst:
            await control.ensure_schema(dst)
            await control.forget_pipeline(dst, pipe.name, pipe.origin_name)
        lines.append(
            f"{pipe.name}: state and origin progress forgotten; the next `replicator run` "
            f"creates a new slot and copies every table ({pipe.snapshot})"
        )
    return lines
