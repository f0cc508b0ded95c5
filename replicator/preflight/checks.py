"""The I/O shell of the preflight: connect, read the catalogs, apply the rules.

Read-only, with one exception: the control-schema DDL the daemon runs at start is tried
inside a transaction that is rolled back, so its privilege needs are checked by the DDL
itself. Never prints a password (DSNs are redacted) or a row value (none is read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from replicator import control
from replicator.catalog import (
    read_source_relation,
    read_target_table,
    relation_name,
    table_oid,
    truncate_facts,
)
from replicator.config import Config, PipelineConfig, QualifiedName, TableConfig
from replicator.errors import MaskingError, SchemaError, describe_error
from replicator.keyfile import GENERATE, key_file_problems, key_problems
from replicator.mapping import TablePlan, build_plan
from replicator.masking import MaskingKey, load_key, resolve_masks
from replicator.preflight.columns import (
    ColumnType,
    cast_contexts,
    column_findings,
    read_column_types,
)
from replicator.preflight.findings import Finding, Report, show_ident
from replicator.preflight.rules import (
    BROAD_ROLES,
    RoleReach,
    copy_truncate_findings,
    identity_findings,
    keep_size_finding,
    role_findings,
    sequence_finding,
    slot_findings,
    slot_headroom_findings,
    tls_finding,
    two_way_pairs,
    wal_level_finding,
    wal_sender_findings,
)
from replicator.query import fetch_one

# Functions the apply session, setup, copy workers, dead-letter retries and status call.
ORIGIN_FUNCTIONS: Final = (
    "pg_replication_origin_create",
    "pg_replication_origin_oid",
    "pg_replication_origin_progress",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_progress",
    "pg_replication_origin_xact_setup",
    # a pipeline started afresh (first run, resync --all) resets its origin's progress
    "pg_replication_origin_session_reset",
    "pg_replication_origin_advance",
)
TARGET_TABLE_PRIVILEGES: Final = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
MIN_TESTED_VERSION: Final = 150000


def _conninfo(dsn: str, application_name: str, **more: str) -> str:
    extra = {"application_name": application_name, **more}
    if "connect_timeout" not in conninfo_to_dict(dsn):
        extra["connect_timeout"] = "10"  # a check must not hang on an unreachable host
    return make_conninfo(dsn, **extra)


async def connect(config: Config, db: str, application_name: str) -> AsyncConnection:
    dsn = config.databases[db].dsn.secret_value
    return await AsyncConnection.connect(_conninfo(dsn, application_name), autocommit=True)


@dataclass(slots=True)
class _Db:
    """Facts about one connected database and the role the config connects as."""

    name: str
    conn: AsyncConnection
    dbname: str
    version: int
    role: str
    superuser: bool
    replication: bool
    bypassrls: bool
    createdb: bool
    createrole: bool
    member_of: list[str]

    def reach(self, physical: bool | None = None) -> RoleReach:
        return RoleReach(
            self.role,
            self.superuser,
            self.createdb,
            self.createrole,
            self.replication,
            tuple(self.member_of),
            physical,
        )


async def _db_facts(name: str, conn: AsyncConnection) -> _Db:
    cur = await conn.execute(
        "SELECT current_database(), current_setting('server_version_num')::int, r.rolname,"
        " r.rolsuper, r.rolreplication, r.rolbypassrls, r.rolcreatedb, r.rolcreaterole,"
        " ARRAY(SELECT b.rolname FROM pg_catalog.pg_roles b WHERE b.rolname = ANY(%s)"
        "       AND pg_catalog.pg_has_role(current_user, b.oid, 'MEMBER') ORDER BY 1)"
        " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
        [list(BROAD_ROLES)],
    )
    row = await cur.fetchone()
    assert row is not None
    return _Db(name, conn, *row)


def _effective(conn: AsyncConnection) -> tuple[list[str], str]:
    """The hosts and sslmode libpq used for ``conn``: the DSN, the environment
    (PGSSLMODE, PGHOST) and libpq's defaults, as the connection itself reports them."""
    opts = {o.keyword: o.val for o in conn.pgconn.info}
    hosts = [h for h in (opts.get(b"host") or b"").decode().split(",") if h]
    addrs = [h for h in (opts.get(b"hostaddr") or b"").decode().split(",") if h]
    return hosts or addrs, (opts.get(b"sslmode") or b"prefer").decode()


async def _physical_replication_allowed(dsn: str) -> bool:
    """Whether the DSN's role gets a physical replication connection (what
    pg_basebackup uses). Connecting is the one test that sees pg_hba as the server does."""
    try:
        conn = await AsyncConnection.connect(_conninfo(dsn, "replicator:check", replication="true"))
    except psycopg.Error:
        return False
    await conn.close()
    return True


class Preflight:
    """One run of the checks; collects findings into :attr:`report`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.report = Report()
        self.dbs: dict[str, _Db] = {}
        self.hash_key: MaskingKey | None = None
        # column types read per (database, table), for the two-way sequence check
        self.types: dict[tuple[str, QualifiedName], dict[str, ColumnType]] = {}

    async def run(self) -> Report:
        cfg = self.config
        used = list(dict.fromkeys(db for p in cfg.pipelines for db in (p.from_, p.to)))
        self.report.add(
            Finding(
                "info",
                "config",
                "config",
                f"valid: {len(cfg.pipelines)} pipeline(s) over {len(used)} database(s)",
            )
        )
        self._check_key()
        try:
            for db in used:
                await self._connect(db)
            for db in dict.fromkeys(p.from_ for p in cfg.pipelines):
                if db in self.dbs:
                    await self._source_server(self.dbs[db])
            for db in dict.fromkeys(p.to for p in cfg.pipelines):
                if db in self.dbs:
                    await self._target_server(self.dbs[db])
            for pipe in cfg.pipelines:
                await self._pipeline(pipe)
            self._two_way()
        finally:
            for d in self.dbs.values():
                await d.conn.close()
        return self.report

    def _check_key(self) -> None:
        m = self.config.masking
        if not m.key_file:
            return
        try:
            self.hash_key = load_key(m.key_file)
        except MaskingError as exc:
            self.report.add(
                Finding(
                    "error",
                    "masking",
                    "masking.key_file",
                    str(exc),
                    f"create the key: {GENERATE}",
                )
            )
            # a stand-in, so hash masks are checked for fit alone
            self.hash_key = MaskingKey(b"\0" * 32)
            return
        for what, fix in key_file_problems(m.key_file) + key_problems(self.hash_key):
            self.report.add(Finding("error", "masking", "masking.key_file", what, fix))

    async def _connect(self, db: str) -> None:
        try:
            conn = await connect(self.config, db, "replicator:check")
        except psycopg.Error as exc:
            self.report.add(
                Finding(
                    "error",
                    "connect",
                    db,
                    f"cannot connect ({self.config.databases[db].dsn.redacted()}): "
                    f"{describe_error(exc)}",
                    "check the DSN, that the server runs, pg_hba.conf and the password (passfile)",
                )
            )
            return
        self.dbs[db] = await _db_facts(db, conn)
        self.report.add(tls_finding(db, *_effective(conn)))

    # -- per database ------------------------------------------------------------------

    async def _source_server(self, d: _Db) -> None:
        r = self.report
        pipes = [p for p in self.config.pipelines if p.from_ == d.name]
        if d.version < MIN_TESTED_VERSION:
            r.add(_old_version(d))
        cur = await d.conn.execute(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
            " current_setting('max_wal_senders')::int, current_setting('max_slot_wal_keep_size'),"
            " (SELECT count(*) FROM pg_catalog.pg_replication_slots),"
            " (SELECT count(*) FROM pg_catalog.pg_stat_replication)"
        )
        wal_level, max_slots, max_senders, keep, used, senders = await fetch_one(cur)
        r.add(wal_level_finding(d.name, wal_level))
        cur = await d.conn.execute(
            "SELECT slot_name, active FROM pg_catalog.pg_replication_slots"
            " WHERE slot_name = ANY(%s)",
            [[p.slot_name for p in pipes]],
        )
        slots: dict[str, bool] = dict(await cur.fetchall())  # slot name -> active
        missing = sum(1 for p in pipes if p.slot_name not in slots)
        idle = sum(1 for p in pipes if not slots.get(p.slot_name))
        r.extend(
            slot_headroom_findings(
                d.name, max_slots=max_slots, used=used, missing=missing, pipelines=len(pipes)
            )
        )
        r.extend(
            wal_sender_findings(
                d.name, max_senders=max_senders, in_use=senders, needed=idle, pipelines=len(pipes)
            )
        )
        r.add(keep_size_finding(d.name, keep))
        physical = await _physical_replication_allowed(
            self.config.databases[d.name].dsn.secret_value
        )
        r.extend(role_findings(d.name, "source", d.reach(physical)))
        if not (d.replication or d.superuser):
            r.add(
                Finding(
                    "error",
                    "privilege",
                    f"{d.name}:role {d.role}",
                    "the role has neither REPLICATION nor SUPERUSER: it cannot create or "
                    "stream a replication slot",
                    f"ALTER ROLE {show_ident(d.role)} REPLICATION (or run sql/source/roles.sql)",
                )
            )

    async def _target_server(self, d: _Db) -> None:
        r = self.report
        conn = d.conn
        if d.version < MIN_TESTED_VERSION and all(p.from_ != d.name for p in self.config.pipelines):
            r.add(_old_version(d))
        grant = "(or run sql/target/roles.sql)"
        if all(p.from_ != d.name for p in self.config.pipelines):  # else: as a source
            r.extend(role_findings(d.name, "target", d.reach()))
        cur = await conn.execute("SELECT has_database_privilege(current_database(), 'TEMP')")
        if not (await fetch_one(cur))[0]:
            r.add(
                Finding(
                    "error",
                    "privilege",
                    f"{d.name}:role {d.role}",
                    "no TEMPORARY privilege on the database: batches are staged in "
                    "temporary tables",
                    f"GRANT TEMPORARY ON DATABASE {show_ident(d.dbname)} TO "
                    f"{show_ident(d.role)} {grant}",
                )
            )
        if d.version >= 150000:
            cur = await conn.execute(
                "SELECT has_parameter_privilege('session_replication_role', 'SET')"
            )
            can_set = bool((await fetch_one(cur))[0])
        else:
            can_set = d.superuser
        if not can_set:
            r.add(
                Finding(
                    "error",
                    "privilege",
                    f"{d.name}:role {d.role}",
                    "may not SET session_replication_role (the apply session runs as "
                    "'replica': no user triggers, no FK checks)",
                    "GRANT SET ON PARAMETER session_replication_role TO "
                    f"{show_ident(d.role)} {grant}",
                )
            )
        cur = await conn.execute(
            "SELECT p.proname, bool_or(has_function_privilege(p.oid, 'EXECUTE'))"
            " FROM pg_catalog.pg_proc p"
            " WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY(%s)"
            " GROUP BY p.proname",
            [list(ORIGIN_FUNCTIONS)],
        )
        allowed: dict[str, bool] = dict(await cur.fetchall())  # function -> executable
        denied = [f for f in ORIGIN_FUNCTIONS if not allowed.get(f)]
        if denied:
            r.add(
                Finding(
                    "error",
                    "privilege",
                    f"{d.name}:role {d.role}",
                    f"no EXECUTE on {', '.join(denied)} (revoked from PUBLIC by default): "
                    "replication origins record progress and tag the daemon's writes",
                    f"GRANT EXECUTE ON FUNCTION pg_catalog.{denied[0]}(...) TO "
                    f"{show_ident(d.role)}, and the others likewise {grant}",
                )
            )
        await self._control_schema(d)

    async def _control_schema(self, d: _Db) -> None:
        """Try the DDL the daemon runs at every start, then roll it back."""
        r = self.report
        fix = (
            "run sql/target/roles.sql as a superuser: it makes the apply role the owner of "
            "schema replicator and its tables"
        )
        try:
            async with d.conn.transaction(force_rollback=True):
                await d.conn.execute("SET LOCAL lock_timeout = '3s'")
                await d.conn.execute(control.control_ddl())
        except psycopg.errors.LockNotAvailable:
            r.add(
                Finding(
                    "warning",
                    "control_schema",
                    f"{d.name}:schema replicator",
                    "could not verify the control schema: its tables are locked",
                    "run the check again",
                )
            )
            return
        except psycopg.Error as exc:
            r.add(
                Finding(
                    "error",
                    "control_schema",
                    f"{d.name}:schema replicator",
                    f"the control-schema DDL the daemon runs at start fails as role "
                    f"{d.role}: {describe_error(exc)}",
                    fix,
                )
            )
            return
        cur = await d.conn.execute(
            "SELECT c.relname, array_remove(array["
            " CASE WHEN NOT has_table_privilege(c.oid, 'SELECT') THEN 'SELECT' END,"
            " CASE WHEN NOT has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,"
            " CASE WHEN NOT has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,"
            " CASE WHEN NOT has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END], NULL)"
            " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'replicator' AND c.relkind IN ('r', 'p') ORDER BY 1"
        )
        for relname, missing in await cur.fetchall():
            if missing:
                r.add(
                    Finding(
                        "error",
                        "privilege",
                        f"{d.name}:replicator.{relname}",
                        f"role {d.role} lacks {', '.join(missing)} on this control table",
                        fix,
                    )
                )

    # -- per pipeline ---------------------------------------------------------------------

    async def _pipeline(self, pipe: PipelineConfig) -> None:
        src = self.dbs.get(pipe.from_)
        dst = self.dbs.get(pipe.to)
        pub: dict[str, Any] | None = None
        published: set[QualifiedName] = set()
        if src is not None:
            pub, published = await self._publication(src, pipe)
        if dst is not None:
            await self._origin(dst, pipe)
        if src is not None:
            has_run = await self._has_run(dst, pipe) if dst is not None else False
            cur = await src.conn.execute(
                "SELECT to_jsonb(s) FROM pg_catalog.pg_replication_slots s WHERE slot_name = %s",
                [pipe.slot_name],
            )
            row = await cur.fetchone()
            self.report.extend(
                slot_findings(
                    pipe.from_, pipe, row[0] if row else None, has_run=has_run, dbname=src.dbname
                )
            )
        for table in pipe.tables:
            try:
                await self._table(pipe, table, src, dst, pub)
            except psycopg.Error as exc:
                # a catalog read failed (a privilege the rules did not foresee, a dropped
                # table): report it with the rest instead of stopping the check
                self.report.add(
                    Finding(
                        "error",
                        "catalog",
                        f"{pipe.from_}:{table.source} -> {pipe.to}:{table.target_name}",
                        f"could not check this table: {describe_error(exc)}",
                        "grant the privileges named, then check again",
                        pipe.name,
                    )
                )
        if dst is not None:
            copying = pipe.snapshot == "truncate" and not await self._has_run(dst, pipe)
            targets = [t.target_name for t in pipe.tables]
            facts = await truncate_facts(dst.conn, targets)
            self.report.extend(
                copy_truncate_findings(pipe.to, pipe.name, targets, facts, copying=copying)
            )
        if pub is not None:
            extra = published - {t.source for t in pipe.tables}
            if extra and not pub["puballtables"]:
                shown = ", ".join(str(t) for t in sorted(extra))
                self.report.add(
                    Finding(
                        "warning",
                        "publication",
                        f"{pipe.from_}:publication {pipe.publication_name}",
                        f"publishes table(s) the pipeline does not map: {shown}; their "
                        "changes are decoded, sent and dropped",
                        "remove them from the publication (sql/source/publication.sql with "
                        "the pipeline's tables), or map them",
                        pipe.name,
                    )
                )

    async def _publication(
        self, src: _Db, pipe: PipelineConfig
    ) -> tuple[dict[str, Any] | None, set[QualifiedName]]:
        name = pipe.publication_name
        obj = f"{pipe.from_}:publication {name}"
        async with src.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,"
                " pg_has_role(pubowner, 'USAGE') AS owner"
                " FROM pg_catalog.pg_publication WHERE pubname = %s",
                [name],
            )
            pub = await cur.fetchone()
        wanted = {t.source for t in pipe.tables}
        cur2 = await src.conn.execute(
            "SELECT c.relname, n.nspname, pg_has_role(c.relowner, 'USAGE')"
            " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            [[t.schema for t in wanted], [t.name for t in wanted]],
        )
        owns_all = all(own for _, _, own in await cur2.fetchall())
        cur2 = await src.conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')")
        can_create = src.superuser or (bool((await fetch_one(cur2))[0]) and owns_all)
        dba_fix = (
            f"as a superuser: psql -d {src.dbname} -v publication={name} -v tables='"
            + ", ".join(str(t) for t in sorted(wanted))
            + "' -f sql/source/publication.sql"
        )
        if pub is None:
            if can_create:
                self.report.add(
                    Finding(
                        "info",
                        "publication",
                        obj,
                        "does not exist yet: `replicator setup` creates it",
                        None,
                        pipe.name,
                    )
                )
            else:
                self.report.add(
                    Finding(
                        "error",
                        "publication",
                        obj,
                        f"does not exist, and role {src.role} cannot create it (needs CREATE "
                        "on the database and ownership of the tables)",
                        dba_fix,
                        pipe.name,
                    )
                )
            return None, set()
        cur2 = await src.conn.execute(
            "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = %s",
            [name],
        )
        published = {QualifiedName(s, t) for s, t in await cur2.fetchall()}
        missing = wanted - published
        if missing:
            shown = ", ".join(str(t) for t in sorted(missing))
            managed = pipe.publication is not None
            fixable = (
                not managed
                and not pub["puballtables"]
                and (src.superuser or (pub["owner"] and owns_all))
            )
            self.report.add(
                Finding(
                    "warning" if fixable else "error",
                    "publication",
                    obj,
                    f"does not publish {shown}: changes to it never reach the target"
                    + ("; `replicator setup` adds it" if fixable else ""),
                    "run `replicator setup`" if fixable else dba_fix,
                    pipe.name,
                )
            )
        flags = [op for op in ("insert", "update", "delete") if not pub[f"pub{op}"]]
        if flags:
            self.report.add(
                Finding(
                    "warning",
                    "publication",
                    obj,
                    f"does not publish {', '.join(flags)}s: the target drifts from the source",
                    f"ALTER PUBLICATION {show_ident(name)} SET (publish = "
                    "'insert, update, delete, truncate')",
                    pipe.name,
                )
            )
        return pub, published

    async def _origin(self, dst: _Db, pipe: PipelineConfig) -> None:
        try:
            cur = await dst.conn.execute(
                "SELECT pg_catalog.pg_replication_origin_oid(%s)", [pipe.origin_name]
            )
        except psycopg.errors.InsufficientPrivilege:
            return  # reported with the origin functions
        if (await fetch_one(cur))[0] is None:
            self.report.add(
                Finding(
                    "info",
                    "origin",
                    f"{pipe.to}:origin {pipe.origin_name}",
                    "does not exist yet: `replicator setup` creates it",
                    None,
                    pipe.name,
                )
            )

    async def _has_run(self, dst: _Db, pipe: PipelineConfig) -> bool:
        try:
            async with dst.conn.transaction(force_rollback=True):
                cur = await dst.conn.execute(
                    "SELECT to_regclass('replicator.pipelines') IS NOT NULL"
                )
                if not (await fetch_one(cur))[0]:
                    return False
                cur = await dst.conn.execute(
                    "SELECT 1 FROM replicator.pipelines WHERE pipeline = %s", [pipe.name]
                )
                return await cur.fetchone() is not None
        except psycopg.errors.InsufficientPrivilege:
            return False  # reported by the control-schema check

    async def _renamed(
        self, pipe: PipelineConfig, table: TableConfig, src: _Db, dst: _Db
    ) -> int | None:
        """A configured table renamed on the source since the pipeline last saw it: the
        daemon follows it by the OID it recorded (a warning: the config wants updating)."""
        try:
            async with dst.conn.transaction(force_rollback=True):
                cur = await dst.conn.execute("SELECT to_regclass('replicator.tables') IS NOT NULL")
                if not (await fetch_one(cur))[0]:
                    return None
                oid = (await control.read_relation_ids(dst.conn, pipe.name)).get(table.source)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedColumn):
            return None  # reported by the control-schema check, or not recorded yet
        now_named = None if oid is None else await relation_name(src.conn, oid)
        if now_named is None:
            return None
        self.report.add(
            Finding(
                "warning",
                "table",
                f"{pipe.from_}:{table.source}",
                f"renamed on the source to {now_named}: the pipeline follows it by its OID ({oid})",
                f'update the config: source = "{now_named}", target = "{table.target_name}"',
                pipe.name,
            )
        )
        return oid

    async def _table(
        self,
        pipe: PipelineConfig,
        table: TableConfig,
        src: _Db | None,
        dst: _Db | None,
        pub: Mapping[str, Any] | None,
    ) -> None:
        r = self.report
        src_oid = dst_oid = None
        if src is not None:
            src_oid = await table_oid(src.conn, table.source)
            if src_oid is None and dst is not None:
                src_oid = await self._renamed(pipe, table, src, dst)
            if src_oid is None:
                r.add(
                    Finding(
                        "error",
                        "table",
                        f"{pipe.from_}:{table.source}",
                        "source table does not exist",
                        "create it, or remove it from the pipeline",
                        pipe.name,
                    )
                )
            else:
                await self._source_table(pipe, table, src, src_oid, pub)
        if dst is not None:
            dst_oid = await table_oid(dst.conn, table.target_name)
            if dst_oid is None:
                r.add(
                    Finding(
                        "error",
                        "table",
                        f"{pipe.to}:{table.target_name}",
                        "target table does not exist",
                        f"create it on {pipe.to} (the daemon never creates target tables), "
                        "or set `target`",
                        pipe.name,
                    )
                )
            else:
                await self._target_table(pipe, table, dst, dst_oid)
        if src is None or dst is None or src_oid is None or dst_oid is None:
            return
        src_types = await read_column_types(src.conn, src_oid)
        dst_types = await read_column_types(dst.conn, dst_oid)
        self.types[(pipe.from_, table.source)] = src_types
        self.types[(pipe.to, table.target_name)] = dst_types
        relation = await read_source_relation(src.conn, table.source, oid=src_oid)
        try:
            masks = resolve_masks(
                f"{table.source.schema}.{table.source.name}",
                [c.name for c in relation.columns],
                table.mask,
                self.config.masking.columns,
            )
        except ValueError:
            masks = {}  # the table plan below reports it
        casts = await cast_contexts(dst.conn, src_types.values(), dst_types, table)
        r.extend(
            column_findings(
                pipe.to,
                pipe.name,
                table,
                source=list(src_types.values()),
                target=dst_types,
                casts=casts,
                masks=masks,
            )
        )

        # the daemon's own plan, on the columns that have a target (missing ones are reported
        # above): masks against target columns, keys, conflict columns
        target = await read_target_table(dst.conn, table.target_name)
        kept = tuple(
            c
            for c in relation.columns
            if table.target_column(c.name) is None or table.target_column(c.name) in target.columns
        )
        plan: TablePlan | None = None
        try:
            plan = build_plan(
                dataclasses.replace(relation, columns=kept),
                table,
                target,
                global_masks=self.config.masking.columns,
                unclassified=self.config.masking.unclassified,
                hash_key=self.hash_key,
            )
        except MaskingError as exc:
            r.add(
                Finding(
                    "error",
                    "mask",
                    f"{pipe.to}:{table.target_name}",
                    str(exc),
                    "change the mask in the config, or the target column so it can hold "
                    "the masked value",
                    pipe.name,
                )
            )
        except SchemaError as exc:
            r.add(
                Finding(
                    "error",
                    "mapping",
                    f"{pipe.to}:{table.target_name}",
                    str(exc),
                    "adjust the target table or this table's config (columns, exclude, key, "
                    "conflict)",
                    pipe.name,
                )
            )
        r.extend(
            identity_findings(
                pipe.from_,
                pipe.name,
                table.source,
                identity=relation.replica_identity,
                has_key_columns=any(c.is_key for c in relation.columns),
                publishes_changes=pub is None or bool(pub["pubupdate"] or pub["pubdelete"]),
                plan=plan,
            )
        )

    async def _source_table(
        self,
        pipe: PipelineConfig,
        table: TableConfig,
        src: _Db,
        oid: int,
        pub: Mapping[str, Any] | None,
    ) -> None:
        cur = await src.conn.execute(
            "SELECT has_schema_privilege(c.relnamespace, 'USAGE'),"
            " has_table_privilege(c.oid, 'SELECT'), c.relrowsecurity, c.relkind,"
            " pg_has_role(c.relowner, 'USAGE')"
            " FROM pg_catalog.pg_class c WHERE c.oid = %s",
            [oid],
        )
        usage, select, rls, relkind, owner = await fetch_one(cur)
        obj = f"{pipe.from_}:{table.source}"
        if not (usage and select):
            what = "USAGE on its schema" if not usage else "SELECT"
            self.report.add(
                Finding(
                    "error",
                    "privilege",
                    obj,
                    f"role {src.role} lacks {what}: the initial copy and resyncs read the table",
                    f"GRANT USAGE ON SCHEMA {show_ident(table.source.schema)} TO "
                    f"{show_ident(src.role)}; "
                    f"GRANT SELECT ON {table.source} TO {show_ident(src.role)} "
                    "(or run sql/source/roles.sql)",
                    pipe.name,
                )
            )
        if rls and not (src.superuser or src.bypassrls or owner):
            self.report.add(
                Finding(
                    "warning",
                    "privilege",
                    obj,
                    f"row-level security is enabled and role {src.role} does not bypass it: "
                    "the initial copy reads only the rows its policies show",
                    f"ALTER ROLE {show_ident(src.role)} BYPASSRLS, or a policy that shows it "
                    "every row",
                    pipe.name,
                )
            )
        if relkind == "p" and pub is not None and not pub["pubviaroot"]:
            self.report.add(
                Finding(
                    "error",
                    "publication",
                    obj,
                    "partitioned table in a publication without publish_via_partition_root: "
                    "its changes arrive under the partitions' names, which are not mapped",
                    f"ALTER PUBLICATION {show_ident(pipe.publication_name)} SET "
                    "(publish_via_partition_root = true)",
                    pipe.name,
                )
            )

    async def _target_table(
        self, pipe: PipelineConfig, table: TableConfig, dst: _Db, oid: int
    ) -> None:
        checks = ", ".join(f"has_table_privilege(c.oid, '{p}')" for p in TARGET_TABLE_PRIVILEGES)
        cur = await dst.conn.execute(
            sql.SQL(
                "SELECT has_schema_privilege(c.relnamespace, 'USAGE'), c.relrowsecurity,"
                " pg_has_role(c.relowner, 'USAGE'), {} FROM pg_catalog.pg_class c WHERE c.oid = %s"
            ).format(sql.SQL(checks)),
            [oid],
        )
        usage, rls, owner, *privs = await fetch_one(cur)
        obj = f"{pipe.to}:{table.target_name}"
        missing = [p for p, ok in zip(TARGET_TABLE_PRIVILEGES, privs, strict=True) if not ok]
        if not usage:
            missing.insert(0, f"USAGE on schema {table.target_name.schema}")
        if missing:
            self.report.add(
                Finding(
                    "error",
                    "privilege",
                    obj,
                    f"role {dst.role} lacks {', '.join(missing)}",
                    f"GRANT {', '.join(p for p in TARGET_TABLE_PRIVILEGES)} ON "
                    f"{table.target_name} TO {show_ident(dst.role)} (or run sql/target/roles.sql)",
                    pipe.name,
                )
            )
        if rls and not (dst.superuser or dst.bypassrls or owner):
            self.report.add(
                Finding(
                    "warning",
                    "privilege",
                    obj,
                    f"row-level security is enabled and role {dst.role} does not bypass it: "
                    "updates and deletes only find the rows its policies show",
                    f"ALTER ROLE {show_ident(dst.role)} BYPASSRLS, or disable RLS on the target",
                    pipe.name,
                )
            )

    # -- across pipelines -------------------------------------------------------------------

    def _two_way(self) -> None:
        for p, table, q in two_way_pairs(self.config):
            src = self.types.get((p.from_, table.source))
            dst = self.types.get((p.to, table.target_name))
            if src is None or dst is None:
                continue
            self.report.add(
                sequence_finding(
                    p,
                    table,
                    q,
                    {c.name: c.sequence for c in src.values() if c.sequence},
                    {c.name: c.sequence for c in dst.values() if c.sequence},
                )
            )


def _old_version(d: _Db) -> Finding:
    return Finding(
        "warning",
        "version",
        d.name,
        f"PostgreSQL {d.version // 10000}: replicator is tested on 15 and later "
        "(GRANT SET ON PARAMETER needs 15)",
        "upgrade PostgreSQL",
    )


async def run_preflight(config: Config) -> Report:
    return await Preflight(config).run()
