"""Preflight rules about servers, slots, publications, replica identity and two-way pairs.

Pure: each rule takes catalog facts and returns findings; :mod:`.checks` reads the facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from replicator.config import Config, PipelineConfig, QualifiedName, TableConfig
from replicator.mapping import ForeignKeyRef, TablePlan, TruncateFacts
from replicator.preflight.findings import Finding, show_ident

# --- pure rules: server settings --------------------------------------------------------


def wal_level_finding(db: str, wal_level: str) -> Finding | None:
    if wal_level == "logical":
        return None
    return Finding(
        "error",
        "wal_level",
        db,
        f"wal_level is {wal_level!r}; logical decoding needs 'logical'",
        "ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL",
    )


def slot_headroom_findings(
    db: str, *, max_slots: int, used: int, missing: int, pipelines: int
) -> list[Finding]:
    """``missing`` slots still to be created; every pipeline may add a temporary slot
    while it resumes a copy or resyncs a table."""
    if used + missing > max_slots:
        return [
            Finding(
                "error",
                "max_replication_slots",
                db,
                f"max_replication_slots = {max_slots}, {used} in use, {missing} more needed",
                f"ALTER SYSTEM SET max_replication_slots = {used + missing + pipelines}; "
                "restart PostgreSQL (or drop unused slots, see replicator.slot_health)",
            )
        ]
    if used + missing + pipelines > max_slots:
        return [
            Finding(
                "warning",
                "max_replication_slots",
                db,
                f"max_replication_slots = {max_slots}, {used} in use, {missing} more needed: "
                "no room for the temporary slot a resumed copy or a resync takes",
                f"ALTER SYSTEM SET max_replication_slots = {used + missing + pipelines}; "
                "restart PostgreSQL",
            )
        ]
    return []


def wal_sender_findings(
    db: str, *, max_senders: int, in_use: int, needed: int, pipelines: int
) -> list[Finding]:
    """``needed``: walsenders the pipelines of this database will open (not running yet)."""
    if in_use + needed > max_senders:
        return [
            Finding(
                "error",
                "max_wal_senders",
                db,
                f"max_wal_senders = {max_senders}, {in_use} in use, {needed} more needed",
                f"ALTER SYSTEM SET max_wal_senders = {in_use + needed + pipelines}; "
                "restart PostgreSQL",
            )
        ]
    if in_use + needed + pipelines > max_senders:
        return [
            Finding(
                "warning",
                "max_wal_senders",
                db,
                f"max_wal_senders = {max_senders}, {in_use} in use, {needed} more needed: "
                "no room for the extra walsender a resync opens",
                f"ALTER SYSTEM SET max_wal_senders = {in_use + needed + pipelines}; "
                "restart PostgreSQL",
            )
        ]
    return []


def keep_size_finding(db: str, setting: str) -> Finding | None:
    """``setting`` as SHOW prints it ('-1', '100GB')."""
    if setting.strip() != "-1":
        return None
    return Finding(
        "warning",
        "max_slot_wal_keep_size",
        db,
        "max_slot_wal_keep_size = -1: a slot whose daemon stops (or is paused) retains WAL "
        "without limit until the disk is full",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '<most WAL you can afford, e.g. 50GB>'; "
        "SELECT pg_reload_conf(); a slot past it is invalidated (wal_status 'lost') and its "
        "pipeline needs `replicator resync --all`, but the server keeps running. Watch "
        "replicator.slot_health (sql/source/slot_health.sql)",
    )


def slot_findings(
    db: str, pipe: PipelineConfig, slot: Mapping[str, Any] | None, *, has_run: bool, dbname: str
) -> list[Finding]:
    """``slot``: the pg_replication_slots row as a dict (version-specific columns may be
    missing); ``has_run``: the target holds state for this pipeline."""
    obj = f"{db}:slot {pipe.slot_name}"
    if slot is None:
        if has_run:
            return [
                Finding(
                    "error",
                    "slot",
                    obj,
                    "the slot is missing, but the pipeline has run before: changes since "
                    "then are lost to it, and the daemon never recreates a slot silently",
                    "`replicator resync --all` (new slot, full copy)",
                    pipe.name,
                )
            ]
        return [
            Finding(
                "info",
                "slot",
                obj,
                "not created yet: the first `replicator run` creates it, with the initial copy",
                None,
                pipe.name,
            )
        ]
    out: list[Finding] = []
    if slot.get("slot_type") != "logical" or slot.get("plugin") != "pgoutput":
        out.append(
            Finding(
                "error",
                "slot",
                obj,
                f"slot exists but is a {slot.get('slot_type')} slot of plugin "
                f"{slot.get('plugin')!r}, not a pgoutput logical slot",
                "set another `slot` name for the pipeline, or drop that slot if unused",
                pipe.name,
            )
        )
    elif slot.get("database") != dbname:
        out.append(
            Finding(
                "error",
                "slot",
                obj,
                f"slot belongs to database {slot.get('database')!r}, not {dbname!r}",
                "set another `slot` name for the pipeline",
                pipe.name,
            )
        )
    status = slot.get("wal_status")
    reason = slot.get("invalidation_reason")  # PostgreSQL 17+
    if status == "lost" or reason or slot.get("conflicting"):
        why = f" ({reason})" if reason else ""
        out.append(
            Finding(
                "error",
                "slot",
                obj,
                f"slot is invalidated{why}: the WAL it needed is gone",
                "`replicator resync --all` (new slot, full copy); then consider "
                "max_slot_wal_keep_size and alerting on replicator.slot_health",
                pipe.name,
            )
        )
    elif status == "unreserved":
        out.append(
            Finding(
                "warning",
                "slot",
                obj,
                "wal_status 'unreserved': the slot is about to be invalidated "
                "(it retains more than max_slot_wal_keep_size)",
                "start the pipeline now so it catches up, or raise max_slot_wal_keep_size",
                pipe.name,
            )
        )
    if slot.get("active"):
        out.append(
            Finding(
                "info",
                "slot",
                obj,
                f"in use by walsender pid {slot.get('active_pid')} (the daemon is running?)",
                None,
                pipe.name,
            )
        )
    return out


# --- pure rules: the initial copy's truncate ---------------------------------------------


def copy_truncate_findings(
    db: str, pipe: str, tables: list[QualifiedName], facts: TruncateFacts, *, copying: bool
) -> list[Finding]:
    """``snapshot = 'truncate'`` empties the pipeline's target tables in one TRUNCATE; a
    table referenced by a foreign key from a table outside the pipeline cannot be in it
    (PostgreSQL refuses, and a CASCADE would empty a table the pipeline does not own):
    an error while that copy is ahead (``copying``). Otherwise only a source TRUNCATE
    meets it, and is applied as a delete: a warning."""
    _, blocked = facts.split(tables)
    mapped = set(tables)
    outside = [ref for ref in blocked.values() if ref.table not in mapped]  # the others follow
    if copying:
        return [copy_truncate_finding(db, pipe, ref) for ref in outside]
    return [
        Finding(
            "warning",
            "foreign_key",
            f"{db}:{ref.references}",
            f"constraint {ref.constraint} on {ref.table}, a table this pipeline does not map, "
            "references this table: a source TRUNCATE of it is applied as a DELETE of its "
            f"rows, and the rows of {ref.table} that reference them stay",
            f"add {ref.table} to pipeline {pipe!r}, or accept those rows",
            pipe,
        )
        for ref in outside
    ]


def copy_truncate_finding(db: str, pipe: str, ref: ForeignKeyRef) -> Finding:
    return Finding(
        "error",
        "foreign_key",
        f"{db}:{ref.references}",
        f"the initial copy (snapshot = 'truncate') empties this table, but constraint "
        f"{ref.constraint} on {ref.table}, a table this pipeline does not map, references "
        "it: PostgreSQL refuses that TRUNCATE",
        f"add {ref.table} to pipeline {pipe!r} (its rows are then copied too), or set "
        "snapshot = 'merge' on the pipeline (the copy merges into the rows there), or drop "
        f"constraint {ref.constraint}",
        pipe,
    )


# --- pure rules: replica identity and publication ---------------------------------------


def identity_findings(
    db: str,
    pipe: str,
    table: QualifiedName,
    *,
    identity: str,
    has_key_columns: bool,
    publishes_changes: bool,
    plan: TablePlan | None,
) -> list[Finding]:
    """``identity``: pg_class.relreplident; ``publishes_changes``: the publication publishes
    updates or deletes (or does not exist yet: setup publishes everything)."""
    obj = f"{db}:{table}"
    if identity == "n" or (identity in ("d", "i") and not has_key_columns):
        what = "REPLICA IDENTITY NOTHING" if identity == "n" else "no primary key"
        if not publishes_changes:
            return [
                Finding(
                    "info",
                    "replica_identity",
                    obj,
                    f"{what}: insert-only (the publication publishes no updates or deletes)",
                    None,
                    pipe,
                )
            ]
        return [
            Finding(
                "error",
                "replica_identity",
                obj,
                f"table has no replica identity ({what}): once published, every UPDATE and "
                "DELETE on it fails on the source, and the target could not match rows",
                f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX "
                "<unique index>, or REPLICA IDENTITY FULL (with `key = [...]` in the config)",
                pipe,
            )
        ]
    if identity == "f" and plan is not None and plan.mode == "full_row":
        return [
            Finding(
                "warning",
                "replica_identity",
                obj,
                "REPLICA IDENTITY FULL and no key: updates and deletes match target rows on "
                "every column (a scan per row on a table without a usable index)",
                f"add a primary key to the target {plan.target.name}, or set `key = [...]` "
                "for this table in the config",
                pipe,
            )
        ]
    return []


def two_way_pairs(config: Config) -> list[tuple[PipelineConfig, TableConfig, PipelineConfig]]:
    """(pipeline, table, reverse pipeline) for every table written on both sides: the
    reverse pipeline maps this table's target back onto its source."""
    out = []
    for i, p in enumerate(config.pipelines):
        for q in config.pipelines[i + 1 :]:
            if (q.from_, q.to) != (p.to, p.from_):
                continue
            for t in p.tables:
                back = q.table_for(t.target_name.schema, t.target_name.name)
                if back is not None and back.target_name == t.source:
                    out.append((p, t, q))
    return out


def sequence_finding(
    p: PipelineConfig,
    table: TableConfig,
    q: PipelineConfig,
    source_seqs: Mapping[str, str],
    target_seqs: Mapping[str, str],
) -> Finding | None:
    """``*_seqs``: column -> sequence, on each side (serial and identity columns). One side
    is enough to collide: rows replicated into a table do not advance its sequence."""
    if not source_seqs and not target_seqs:
        return None
    sides = "; ".join(
        f"on {db}: " + ", ".join(f"{col} ({seq})" for col, seq in sorted(seqs.items()))
        for db, seqs in ((p.from_, source_seqs), (p.to, target_seqs))
        if seqs
    )
    return Finding(
        "warning",
        "sequence",
        f"{p.from_}:{table.source} <-> {p.to}:{table.target_name}",
        f"written on both sides (pipelines {p.name} and {q.name}), with values from "
        f"sequences ({sides}): rows inserted on both sides get the same values and "
        "collide, and replicated rows do not advance the other side's sequence",
        "give each side its own range, e.g. odd/even: ALTER SEQUENCE <seq> INCREMENT BY 2 "
        "RESTART WITH <odd start> on one side and <even start> on the other (above the "
        "current maximum); or uuid keys; or insert on one side only",
        p.name,
    )


# --- least privilege and transport --------------------------------------------------------

# predefined roles that reach far beyond what either side of a pipeline needs
BROAD_ROLES: Final = (
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
)


@dataclass(frozen=True, slots=True)
class RoleReach:
    """What the role the config connects as may do, beyond its grants on tables."""

    role: str
    superuser: bool
    createdb: bool
    createrole: bool
    replication: bool
    member_of: tuple[str, ...]  # of BROAD_ROLES
    physical: bool | None = None  # may open a physical replication connection (source)


def role_findings(db: str, side: str, reach: RoleReach) -> list[Finding]:
    """Warnings for a role that can do more than the daemon needs on ``side``
    ("source" or "target"): the scripts in sql/ make roles that draw none."""
    obj = f"{db}:role {reach.role}"
    script = f"sql/{side}/roles.sql"
    out = []
    if reach.superuser:
        out.append(
            Finding(
                "warning",
                "privilege",
                obj,
                "connects as a superuser: a leaked DSN or a bug can then read or change "
                "anything in the cluster",
                f"create the least-privilege role with {script} and use it in the DSN",
            )
        )
    else:
        extra = [a for a, on in (("CREATEDB", reach.createdb), ("CREATEROLE", reach.createrole))
                 if on]  # fmt: skip
        if side == "target" and reach.replication:
            extra.append("REPLICATION")
        if extra:
            out.append(
                Finding(
                    "warning",
                    "privilege",
                    obj,
                    f"the role has {', '.join(extra)}, which the daemon does not need on "
                    f"the {side}",
                    f"ALTER ROLE {show_ident(reach.role)} "
                    + " ".join(f"NO{a}" for a in extra)
                    + f" (or run {script})",
                )
            )
        if reach.member_of:
            out.append(
                Finding(
                    "warning",
                    "privilege",
                    obj,
                    f"member of {', '.join(reach.member_of)}: far more than the daemon needs",
                    " ; ".join(
                        f"REVOKE {r} FROM {show_ident(reach.role)}" for r in reach.member_of
                    ),
                )
            )
    if reach.physical:
        out.append(
            Finding(
                "warning",
                "privilege",
                obj,
                "the role can open a physical replication connection: pg_basebackup would "
                "copy the whole cluster, unpublished tables included",
                "in pg_hba.conf, give this role a line for its database only and let no "
                "`replication` line match it (logical replication matches by database)",
            )
        )
    return out


def _local(host: str) -> bool:
    # a unix socket (a path, or @abstract), or the loopback interface
    return not host or host.startswith(("/", "@", "127.")) or host in {"localhost", "::1"}


def tls_finding(db: str, hosts: list[str], sslmode: str) -> Finding | None:
    """A warning when a connection to another host does not verify the server: without
    ``verify-full`` (or ``verify-ca``) a man in the middle sees every row and the
    password; ``require`` encrypts but accepts any certificate."""
    remote = [h for h in hosts if not _local(h)]
    if not remote or sslmode in ("verify-full", "verify-ca"):
        return None
    return Finding(
        "warning",
        "tls",
        db,
        f"connects to {', '.join(remote)} with sslmode={sslmode or 'prefer'}: the server is "
        "not verified, so rows and credentials can be read or changed on the way",
        "add sslmode=verify-full sslrootcert=/path/to/ca.crt to the DSN (README: TLS)",
    )
