-- replicator control schema on a target database. Idempotent: safe to run again.
--
-- The daemon runs this file at every start (`replicator setup` too), as its apply role.
-- This file (replicator/sql/control.sql, packaged with the daemon) is the source of truth;
-- sql/target/control.sql is a byte-identical copy for DBAs, kept so by a unit test
-- (tests/unit/test_sql_files.py).
--
-- Privileges and locks: once everything exists, a run needs only USAGE and CREATE on the
-- schema (CREATE TABLE IF NOT EXISTS checks CREATE first) and takes no table lock. That is
-- why the statements that check ownership, or lock, before they look for their object
-- (CREATE SCHEMA, COMMENT, CREATE INDEX, ALTER TABLE) sit behind catalog checks below.
-- sql/target/roles.sql makes the apply role the owner of the schema and its tables.

DO $$
BEGIN
    -- not CREATE SCHEMA IF NOT EXISTS: it wants CREATE on the database even when the
    -- schema exists, and the apply role has no such privilege
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'replicator') THEN
        CREATE SCHEMA replicator;
        COMMENT ON SCHEMA replicator IS 'State of the replicator daemon: pipelines, '
            'initial copy progress, dead letters, conflicts';
    END IF;
END
$$;

-- One row per pipeline that applies into this database.
CREATE TABLE IF NOT EXISTS replicator.pipelines (
    pipeline        text PRIMARY KEY,
    slot            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('copying', 'streaming')),
    consistent_lsn  pg_lsn,                       -- where the slot's snapshot was taken
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Pause/resume (sql/target/pause.sql): replicator.pause_pipeline(name) sets paused and
-- paused_at, then NOTIFY replicator_control, '<pipeline>'; resume clears both. The daemon
-- does not apply into this database while its pipeline's row says paused.
DO $$
BEGIN
    -- guarded: ALTER TABLE locks the table ACCESS EXCLUSIVE even when the column exists
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'replicator.pipelines'::regclass
                      AND attname = 'paused' AND NOT attisdropped) THEN
        ALTER TABLE replicator.pipelines
            ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS paused_at timestamptz;
    END IF;
END
$$;

-- Where the pipeline's applied data ends, written in the same transaction as the data. It,
-- not origin progress, is where a restart resumes: from PostgreSQL 16 an aborted transaction
-- that had called pg_replication_origin_xact_setup moves the origin past what it rolled back.
DO $$
BEGIN
    -- guarded: ALTER TABLE locks the table ACCESS EXCLUSIVE even when the column exists
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'replicator.pipelines'::regclass
                      AND attname = 'applied_lsn' AND NOT attisdropped) THEN
        ALTER TABLE replicator.pipelines ADD COLUMN IF NOT EXISTS applied_lsn pg_lsn;
    END IF;
END
$$;

-- The id of the masking key the pipeline's hashed columns were written with (keyfile.key_id:
-- an HMAC of a constant, nothing of the key): when it changes, the daemon re-copies every
-- table with a `hash` mask under the new key (key rotation, README).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'replicator.pipelines'::regclass
                      AND attname = 'key_id' AND NOT attisdropped) THEN
        ALTER TABLE replicator.pipelines ADD COLUMN IF NOT EXISTS key_id text;
    END IF;
END
$$;

-- Per table: copy state, and the source position from which its changes apply.
CREATE TABLE IF NOT EXISTS replicator.tables (
    pipeline        text NOT NULL,
    source_schema   text NOT NULL,
    source_table    text NOT NULL,
    state           text NOT NULL CHECK (state IN ('copying', 'resync', 'ready')),
    -- changes of transactions that committed before this LSN are in the copy already
    skip_until      pg_lsn,
    rows_copied     bigint NOT NULL DEFAULT 0,
    bytes_copied    bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_schema, source_table)
);

-- The source table's relation OID, as last seen: a table renamed on the source is still
-- found by it (pgoutput names the same OID under its new name), across restarts too.
DO $$
BEGIN
    -- guarded: ALTER TABLE locks the table ACCESS EXCLUSIVE even when the column exists
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'replicator.tables'::regclass
                      AND attname = 'relation_id' AND NOT attisdropped) THEN
        ALTER TABLE replicator.tables ADD COLUMN IF NOT EXISTS relation_id oid;
    END IF;
END
$$;

-- Ranges of the initial copy: a crash mid-copy resumes with the ranges still missing.
-- Block ranges (ctid), so no value of the table is stored here; lower_key/upper_key are
-- the key bounds of earlier versions (read when such a copy resumes, never written).
CREATE TABLE IF NOT EXISTS replicator.copy_ranges (
    pipeline        text NOT NULL,
    source_schema   text NOT NULL,
    source_table    text NOT NULL,
    range_no        int NOT NULL,
    lower_key       text,                          -- inclusive; NULL: from the first row
    upper_key       text,                          -- exclusive; NULL: to the last row
    done            boolean NOT NULL DEFAULT false,
    rows_copied     bigint,
    bytes_copied    bigint,
    snapshot_lsn    pg_lsn,
    finished_at     timestamptz,
    PRIMARY KEY (pipeline, source_schema, source_table, range_no)
);
DO $$
BEGIN
    -- guarded: ALTER TABLE locks the table ACCESS EXCLUSIVE even when the column exists
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'replicator.copy_ranges'::regclass
                      AND attname = 'snapshot_xmin' AND NOT attisdropped) THEN
        ALTER TABLE replicator.copy_ranges
            ADD COLUMN IF NOT EXISTS lower_block bigint,   -- inclusive; NULL: block 0
            ADD COLUMN IF NOT EXISTS upper_block bigint,   -- exclusive; NULL: to the end
            -- xmin of the snapshot the range was copied under (catch-up on resume)
            ADD COLUMN IF NOT EXISTS snapshot_xmin xid8;
    END IF;
END
$$;

-- Rows the target rejected; masked exactly as they would have been applied.
CREATE TABLE IF NOT EXISTS replicator.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline        text NOT NULL,
    source_table    text NOT NULL,
    target_table    text NOT NULL,
    operation       text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    key             jsonb,                         -- masked key values
    row_data        jsonb,                         -- masked row values (NULL for deletes)
    old_key         jsonb,                         -- masked old key of an update
    error_class     text NOT NULL,                 -- SQLSTATE
    error_message   text NOT NULL,                 -- primary message only: no row values
    source_lsn      pg_lsn NOT NULL,
    source_xid      bigint,
    source_commit_time timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    retried_at      timestamptz,
    retry_count     int NOT NULL DEFAULT 0,
    resolved        text CHECK (resolved IN ('applied', 'discarded'))
);
DO $$
BEGIN
    -- guarded: CREATE INDEX IF NOT EXISTS checks ownership and locks the table first
    IF to_regclass('replicator.dead_letters_open') IS NULL THEN
        CREATE INDEX dead_letters_open
            ON replicator.dead_letters (pipeline, id) WHERE resolved IS NULL;
    END IF;
END
$$;

-- Conflicts the apply resolved by the table's rule.
CREATE TABLE IF NOT EXISTS replicator.conflicts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline        text NOT NULL,
    target_table    text NOT NULL,
    key             jsonb,                         -- masked key values
    kind            text NOT NULL,                 -- insert_exists, update_missing, update_older, ...
    winner          text NOT NULL CHECK (winner IN ('source', 'target')),
    source_lsn      pg_lsn,
    source_commit_time timestamptz,
    local_commit_time timestamptz NOT NULL DEFAULT now()
);
DO $$
BEGIN
    IF to_regclass('replicator.conflicts_recent') IS NULL THEN
        CREATE INDEX conflicts_recent ON replicator.conflicts (pipeline, id);
    END IF;
END
$$;
