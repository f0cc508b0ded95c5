-- replicator: pause and resume a pipeline, on its TARGET database.
--
-- Usage (as a superuser), in the target database, after sql/target/roles.sql (or after the
-- daemon or `replicator setup` created the control schema):
--
--   psql -d smart_citizen -f sql/target/pause.sql
--   psql -d smart_citizen -v operator=ops_oncall -f sql/target/pause.sql
--
--   operator  (optional) a role that may call the two functions without being superuser
--
-- Then:
--
--   SELECT replicator.pause_pipeline('warehouse_to_citizen');
--   SELECT replicator.resume_pipeline('warehouse_to_citizen');
--   SELECT pipeline, state, paused, paused_at FROM replicator.pipelines;
--
-- The contract with the daemon: the pipeline's row in replicator.pipelines carries
-- `paused` (boolean) and `paused_at` (when it was paused; NULL while running). Both
-- functions change that row and send NOTIFY on channel `replicator_control` with the
-- pipeline name as payload; NOTIFY is delivered at COMMIT, after the row is visible. The
-- daemon listens on that channel and re-reads the row (and reads it at every start and
-- reconnect, so a notification missed while it was down changes nothing). A paused
-- pipeline finishes the target transaction it is in, applies nothing more and confirms
-- nothing more to its slot, without restarting the daemon: its source slot keeps the WAL
-- from there (watch replicator.slot_health on the source), and it resumes exactly where it
-- stopped. A pipeline only has a row after its first run; pausing one that never ran fails.
--
-- Both functions run with the caller's privileges (UPDATE on replicator.pipelines).
-- Idempotent: run the script again at any time; pausing twice is harmless.

\set ON_ERROR_STOP on

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute
                    WHERE attrelid = to_regclass('replicator.pipelines')
                      AND attname = 'paused' AND NOT attisdropped) THEN
        RAISE EXCEPTION 'replicator.pipelines.paused does not exist in database %',
            current_database()
            USING HINT = 'run sql/target/roles.sql (or sql/target/control.sql) first';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION replicator.pause_pipeline(pipeline_name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    was_paused boolean;
    since timestamptz;
BEGIN
    SELECT p.paused, p.paused_at INTO was_paused, since
      FROM replicator.pipelines p
     WHERE p.pipeline = pipeline_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pipeline "%" applies into database %', pipeline_name,
            current_database()
            USING ERRCODE = 'undefined_object',
                  HINT = 'known here: ' || coalesce(
                      (SELECT string_agg(pipeline, ', ' ORDER BY pipeline)
                         FROM replicator.pipelines), 'none (a pipeline has a row after its first run)');
    END IF;
    IF NOT was_paused THEN
        UPDATE replicator.pipelines SET paused = true, paused_at = now()
         WHERE pipeline = pipeline_name;
    END IF;
    -- always: a daemon that somehow missed the first one re-reads the row
    PERFORM pg_notify('replicator_control', pipeline_name);
    RETURN CASE WHEN was_paused THEN format('%s: already paused since %s', pipeline_name, since)
                ELSE format('%s: paused', pipeline_name) END;
END
$fn$;

COMMENT ON FUNCTION replicator.pause_pipeline(text) IS
    'Stop applying a pipeline into this database (sets replicator.pipelines.paused, '
    'NOTIFY replicator_control)';

CREATE OR REPLACE FUNCTION replicator.resume_pipeline(pipeline_name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    was_paused boolean;
BEGIN
    SELECT p.paused INTO was_paused
      FROM replicator.pipelines p
     WHERE p.pipeline = pipeline_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no pipeline "%" applies into database %', pipeline_name,
            current_database()
            USING ERRCODE = 'undefined_object';
    END IF;
    IF was_paused THEN
        UPDATE replicator.pipelines SET paused = false, paused_at = NULL
         WHERE pipeline = pipeline_name;
    END IF;
    PERFORM pg_notify('replicator_control', pipeline_name);
    RETURN CASE WHEN was_paused THEN format('%s: resumed', pipeline_name)
                ELSE format('%s: was not paused', pipeline_name) END;
END
$fn$;

COMMENT ON FUNCTION replicator.resume_pipeline(text) IS
    'Resume a paused pipeline (clears replicator.pipelines.paused, NOTIFY replicator_control)';

REVOKE ALL ON FUNCTION replicator.pause_pipeline(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION replicator.resume_pipeline(text) FROM PUBLIC;

\if :{?operator}
GRANT USAGE ON SCHEMA replicator TO :"operator";
GRANT EXECUTE ON FUNCTION replicator.pause_pipeline(text) TO :"operator";
GRANT EXECUTE ON FUNCTION replicator.resume_pipeline(text) TO :"operator";
GRANT SELECT, UPDATE (paused, paused_at) ON replicator.pipelines TO :"operator";
\endif
