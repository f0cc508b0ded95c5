-- replicator: the least-privilege APPLY role the daemon uses on a TARGET database.
--
-- Usage (as a superuser), in the target database:
--
--   psql -d smart_citizen -v role=replicator_apply \
--        -v tables='public.schemes, public.citizens' \
--        -f sql/target/roles.sql
--
--   role    the login role to create or adjust (default: replicator_apply)
--   tables  comma-separated `target` tables of every pipeline that applies into this
--           database; a name without a schema means public.*
--
-- What the role gets, and nothing more:
--   * LOGIN; NOSUPERUSER, NOCREATEDB, NOCREATEROLE enforced on every run. No REPLICATION
--     (not needed to apply; a role used on both sides of a two-way pair keeps what
--     sql/source/roles.sql gave it, but one role per side is clearer).
--   * CONNECT and TEMPORARY on this database: each apply session stages batches in
--     temporary tables (pg_temp).
--   * USAGE on the tables' schemas; SELECT, INSERT, UPDATE, DELETE, TRUNCATE on exactly the
--     listed tables (SELECT because UPDATE ... FROM, DELETE ... USING and ON CONFLICT read the
--     rows they match); USAGE on the sequences behind their column defaults (a target column
--     the source does not send takes its default). Table privileges it holds directly on any
--     other table of this database (outside schema replicator) are revoked, so running the
--     script again with a shorter list takes access away.
--   * SET on session_replication_role (PostgreSQL 15+): the apply session runs as
--     PostgreSQL's own apply worker does, with user triggers and FK checks off.
--   * EXECUTE on the replication-origin functions the daemon calls (PostgreSQL revokes
--     them from PUBLIC): pg_replication_origin_create, _oid, _progress, _session_setup,
--     _session_progress, _xact_setup, _session_reset, _advance. Origins tag the daemon's
--     writes (exactly-once progress, loop prevention in two-way sync); a pipeline started
--     afresh (first run, `resync --all`) resets its origin's progress.
--   * Ownership of schema `replicator` and its control tables (sql/target/control.sql is
--     run first): the daemon re-runs that idempotent DDL at every start, and it writes
--     pipeline state, copy progress, dead letters and conflicts there.
--
-- Not granted: CREATE on the database or on any schema but `replicator` (PostgreSQL 15+ no
-- longer lets PUBLIC create in schema public); SELECT on unmapped tables.
--
-- Known limit: TRUNCATE ... RESTART IDENTITY (a source TRUNCATE with RESTART IDENTITY)
-- needs ownership of the target's sequences; without it that TRUNCATE fails on the target.
--
-- Passwords are not set here: use \password, a libpq passfile for the daemon, or peer /
-- certificate authentication.
--
-- Idempotent: run it again at any time (e.g. after adding a table to a pipeline).

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role replicator_apply
\endif

\if :{?tables}
\else
\echo 'usage: psql -d DB -v role=ROLE -v tables=''schema.table, ...'' -f sql/target/roles.sql'
DO $$ BEGIN RAISE EXCEPTION 'psql variable "tables" is not set'; END $$;
\endif

-- The control schema first (owned by whoever runs this; handed over below). Its NOTICEs
-- ("already exists, skipping") are noise here.
SET client_min_messages = warning;
\ir control.sql
RESET client_min_messages;

-- psql does not substitute variables inside DO blocks: pass them as session settings
SELECT set_config('replicator.role', :'role', false) AS _role,
       set_config('replicator.tables', :'tables', false) AS _tables \gset

DO $$
DECLARE
    role_name text := current_setting('replicator.role');
    role_oid oid;
    item text;
    parts text[];
    rel regclass;
    wanted oid[] := '{}';
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', role_name);
        RAISE NOTICE 'created role %', role_name;
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', role_name);
    EXECUTE format('COMMENT ON ROLE %I IS %L', role_name,
                   'replicator daemon, target side: applies changes to mapped tables');
    SELECT oid INTO role_oid FROM pg_catalog.pg_roles WHERE rolname = role_name;

    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), role_name);

    -- the mapped tables
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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE %s TO %I',
                       rel, role_name);
        -- sequences behind serial and identity columns (nextval of a column default)
        FOR r IN
            SELECT DISTINCT d.objid::regclass AS seq
              FROM pg_catalog.pg_depend d
             WHERE d.refobjid = rel AND d.classid = 'pg_catalog.pg_class'::regclass
               AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.deptype IN ('a', 'i')
               AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = d.objid) = 'S'
        LOOP
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', r.seq, role_name);
        END LOOP;
    END LOOP;
    IF cardinality(wanted) = 0 THEN
        RAISE EXCEPTION 'no tables given (-v tables=...)';
    END IF;

    -- "only the mapped tables": take back table privileges granted directly elsewhere
    FOR r IN
        SELECT c.oid::regclass AS rel, string_agg(DISTINCT a.privilege_type, ', ') AS privs
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
               aclexplode(c.relacl) a
         WHERE a.grantee = role_oid
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname <> 'replicator'
           AND c.oid <> ALL (wanted)
         GROUP BY c.oid
    LOOP
        EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', r.rel, role_name);
        RAISE NOTICE 'revoked % on % (not in the table list)', r.privs, r.rel;
    END LOOP;

    -- PostgreSQL 15+: a plain role may be allowed to set a superuser-only parameter
    EXECUTE format('GRANT SET ON PARAMETER session_replication_role TO %I', role_name);

    -- every overload, so a future signature of the same function is covered too
    FOR r IN
        SELECT p.oid::regprocedure AS fn
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace
           AND p.proname IN ('pg_replication_origin_create', 'pg_replication_origin_oid',
                             'pg_replication_origin_progress',
                             'pg_replication_origin_session_setup',
                             'pg_replication_origin_session_progress',
                             'pg_replication_origin_xact_setup',
                             'pg_replication_origin_session_reset',
                             'pg_replication_origin_advance')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', r.fn, role_name);
    END LOOP;

    -- the control schema and its tables belong to the apply role (identity sequences and
    -- indexes follow their table); views and functions a DBA put there stay the DBA's
    EXECUTE format('ALTER SCHEMA replicator OWNER TO %I', role_name);
    FOR r IN
        SELECT c.oid::regclass AS rel
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'replicator'::regnamespace AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', r.rel, role_name);
    END LOOP;
END
$$;

RESET replicator.role;
RESET replicator.tables;
