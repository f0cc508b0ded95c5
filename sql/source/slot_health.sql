-- replicator: slot health on a SOURCE database, and dropping an abandoned slot safely.
--
-- Usage (as a superuser), in each source database:
--
--   psql -d smart_warehouse -f sql/source/slot_health.sql
--   psql -d smart_warehouse -v monitor=pg_monitor -f sql/source/slot_health.sql
--
--   monitor  (optional, default pg_monitor) the role that may read replicator.slot_health
--
-- Creates, in schema `replicator` (created if missing):
--
--   replicator.slot_health                  one row per logical slot of this cluster
--   replicator.drop_abandoned_slot(slot)    drop a replicator slot that nobody streams
--
--   SELECT slot, active, wal_status, pg_size_pretty(retained_wal_bytes) AS retained
--     FROM replicator.slot_health ORDER BY retained_wal_bytes DESC;
--
-- A slot keeps every WAL segment from its restart_lsn on: an abandoned slot fills the
-- disk. Watch retained_wal_bytes and wal_status ('reserved' fine, 'extended' beyond
-- max_wal_size, 'unreserved' about to be invalidated, 'lost' invalidated: that pipeline
-- needs `replicator resync --all`). safe_wal_size is how many more bytes can be written
-- before the slot is at risk (NULL when max_slot_wal_keep_size = -1: no limit at all).
--
-- Pausing a pipeline is done on its TARGET database (sql/target/pause.sql), where the
-- daemon keeps its control state and listens: a paused pipeline still holds its slot here,
-- so retained WAL grows while it is paused.
--
-- Idempotent: run it again at any time (e.g. after a PostgreSQL upgrade).

\set ON_ERROR_STOP on

\if :{?monitor}
\else
\set monitor pg_monitor
\endif

DO $$
BEGIN
    -- not CREATE SCHEMA IF NOT EXISTS: it wants CREATE on the database even when the
    -- schema exists (harmless for a superuser; kept like sql/target/control.sql)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'replicator') THEN
        CREATE SCHEMA replicator;
    END IF;
END
$$;

-- Positions are measured against the server's current WAL position (the last replayed
-- one on a standby, where logical slots can live since PostgreSQL 16).
CREATE OR REPLACE VIEW replicator.slot_health AS
WITH here AS (
    SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END AS lsn
)
SELECT s.slot_name                                        AS slot,
       s.database,
       s.plugin,
       s.slot_name LIKE 'replicator\_%' AND s.plugin = 'pgoutput' AS replicator_slot,
       s.temporary,
       s.active,
       s.active_pid,
       s.wal_status,
       s.safe_wal_size,
       -- WAL this slot keeps on disk
       pg_catalog.pg_wal_lsn_diff(here.lsn, s.restart_lsn)::bigint         AS retained_wal_bytes,
       s.restart_lsn,
       s.confirmed_flush_lsn,
       -- how far the consumer's confirmed position trails the server
       pg_catalog.pg_wal_lsn_diff(here.lsn, s.confirmed_flush_lsn)::bigint AS confirmed_lag_bytes,
       here.lsn                                           AS current_lsn
  FROM pg_catalog.pg_replication_slots s, here
 WHERE s.slot_type = 'logical';

COMMENT ON VIEW replicator.slot_health IS
    'Logical replication slots: retained WAL, wal_status, safe_wal_size, confirmed lag';

-- Drop a slot the daemon no longer uses (a removed pipeline, a database gone), safely:
-- refuses unless the slot is a pgoutput slot named replicator_* (a slot with a custom
-- `slot` name from the config: drop it with pg_drop_replication_slot after checking), and
-- refuses when it is active. PostgreSQL re-checks "active" atomically when it drops, so a
-- daemon that grabs the slot in between makes the drop fail, never the stream.
-- The caller needs the REPLICATION attribute (or superuser), as for pg_drop_replication_slot.
CREATE OR REPLACE FUNCTION replicator.drop_abandoned_slot(slot_name name)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s record;
BEGIN
    SELECT r.slot_name, r.plugin, r.slot_type, r.active, r.active_pid, r.database,
           r.temporary, r.wal_status
      INTO s
      FROM pg_catalog.pg_replication_slots r
     WHERE r.slot_name = drop_abandoned_slot.slot_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'replication slot "%" does not exist', slot_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF s.slot_type <> 'logical' OR s.plugin IS DISTINCT FROM 'pgoutput'
       OR s.slot_name NOT LIKE 'replicator\_%' OR s.temporary THEN
        RAISE EXCEPTION 'slot "%" is not a replicator slot (plugin %, type %); not dropping it',
            slot_name, coalesce(s.plugin, '-'), s.slot_type
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'use pg_drop_replication_slot() if you are sure nothing needs it';
    END IF;
    IF s.active THEN
        RAISE EXCEPTION 'slot "%" is active (walsender pid %): a daemon is streaming it',
            slot_name, s.active_pid
            USING ERRCODE = 'object_in_use',
                  HINT = 'stop that pipeline first (or remove it from the config and restart)';
    END IF;
    PERFORM pg_catalog.pg_drop_replication_slot(s.slot_name);
    RETURN format('dropped slot %s (database %s, wal_status %s); a pipeline that still '
                  'used it needs `replicator resync --all`',
                  s.slot_name, s.database, coalesce(s.wal_status, '-'));
END
$fn$;

COMMENT ON FUNCTION replicator.drop_abandoned_slot(name) IS
    'Drop an inactive replicator_* pgoutput slot; refuses active or foreign slots';

-- Reading slot health is for monitoring; dropping slots is not.
REVOKE ALL ON FUNCTION replicator.drop_abandoned_slot(name) FROM PUBLIC;
GRANT USAGE ON SCHEMA replicator TO :"monitor";
GRANT SELECT ON replicator.slot_health TO :"monitor";
