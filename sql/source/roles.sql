-- replicator: the least-privilege role the daemon uses on a SOURCE database.
--
-- Usage (as a superuser, or a role with CREATEROLE that owns the tables), in the source
-- database, once per database the role reads:
--
--   psql -d smart_warehouse -v role=replicator_source \
--        -v tables='eligibility.scheme_master, public.citizens' \
--        -f sql/source/roles.sql
--
--   role    the login role to create or adjust (default: replicator_source)
--   tables  comma-separated tables the pipelines of this database publish; a name without
--           a schema means public.*; quote as in SQL for odd names: 'public."My Table"'
--
-- What the role gets, and nothing more:
--   * LOGIN REPLICATION: the replication protocol (CREATE_REPLICATION_SLOT, START_REPLICATION)
--     and pg_create/drop_logical_replication_slot. NOSUPERUSER, NOCREATEDB and NOCREATEROLE
--     are enforced on every run, also for an existing role. BYPASSRLS is left as it is: on
--     a table with row-level security the copy would otherwise read only the rows its
--     policies show (`replicator check` warns about such tables).
--   * CONNECT on this database, USAGE on the tables' schemas, SELECT on exactly the listed
--     tables (the initial copy and resyncs read them under the slot's snapshot). SELECT that
--     this role holds directly on any other table of this database is revoked, so running
--     the script again with a shorter list takes access away.
--
-- Not granted: CREATE on the database, so `replicator setup` cannot create the publication
-- under this role. Create it with sql/source/publication.sql (same list of tables); setup
-- then finds it and leaves it alone.
--
-- Passwords are not set here (they would land in shell history): use \password in psql,
-- or certificate/peer authentication; the daemon reads its password from a libpq passfile.
-- pg_hba.conf: the slot is streamed over a LOGICAL replication connection, which pg_hba
-- matches by DATABASE name (not by the `replication` keyword, which matches physical
-- replication only: pg_basebackup of the whole cluster). One line per database, e.g.
--     hostssl  smart_warehouse  replicator_source  10.0.0.0/24  scram-sha-256
-- and no `replication` line that matches this role (REPLICATION would let it copy the
-- cluster through one).
--
-- Idempotent: run it again at any time (e.g. after adding a table to a pipeline).

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role replicator_source
\endif

\if :{?tables}
\else
\echo 'usage: psql -d DB -v role=ROLE -v tables=''schema.table, ...'' -f sql/source/roles.sql'
DO $$ BEGIN RAISE EXCEPTION 'psql variable "tables" is not set'; END $$;
\endif

-- psql does not substitute variables inside DO blocks: hand them over as settings of this
-- session (custom "replicator.*" settings need no privilege).
SELECT set_config('replicator.role', :'role', false) AS _role,
       set_config('replicator.tables', :'tables', false) AS _tables \gset

DO $$
DECLARE
    role_name text := current_setting('replicator.role');
    item text;
    parts text[];
    rel regclass;
    wanted oid[] := '{}';
    stale record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('CREATE ROLE %I LOGIN REPLICATION', role_name);
        RAISE NOTICE 'created role %', role_name;
    END IF;
    -- enforced every run: an existing role may have been created with more
    EXECUTE format(
        'ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE',
        role_name);
    EXECUTE format('COMMENT ON ROLE %I IS %L', role_name,
                   'replicator daemon, source side: reads published tables, streams slots');
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);

    FOREACH item IN ARRAY string_to_array(current_setting('replicator.tables'), ',') LOOP
        item := btrim(item);
        CONTINUE WHEN item = '';
        parts := parse_ident(item);
        IF cardinality(parts) = 1 THEN
            parts := ARRAY['public', parts[1]];
        ELSIF cardinality(parts) <> 2 THEN
            RAISE EXCEPTION 'table % : expected schema.table', item;
        END IF;
        rel := to_regclass(format('%I.%I', parts[1], parts[2]));
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table %.% does not exist in database %',
                parts[1], parts[2], current_database();
        END IF;
        wanted := wanted || rel::oid;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', parts[1], role_name);
        EXECUTE format('GRANT SELECT ON TABLE %s TO %I', rel, role_name);
    END LOOP;
    IF cardinality(wanted) = 0 THEN
        RAISE EXCEPTION 'no tables given (-v tables=...)';
    END IF;

    -- "only the published tables": take back SELECT granted directly on anything else
    FOR stale IN
        SELECT c.oid::regclass AS rel
          FROM pg_catalog.pg_class c, aclexplode(c.relacl) a
         WHERE a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = role_name)
           AND a.privilege_type = 'SELECT'
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND c.oid <> ALL (wanted)
    LOOP
        EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', stale.rel, role_name);
        RAISE NOTICE 'revoked SELECT on % (not in the table list)', stale.rel;
    END LOOP;
END
$$;

RESET replicator.role;
RESET replicator.tables;
