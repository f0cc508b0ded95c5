-- replicator: the publication of one pipeline, on its SOURCE database.
--
-- Usage (as a superuser or the owner of the tables), in the source database:
--
--   psql -d smart_warehouse -v pipeline=warehouse_to_citizen \
--        -v tables='eligibility.scheme_master, public.citizens' \
--        -f sql/source/publication.sql
--
--   pipeline     the pipeline's `name` in replicator.toml; the publication is named
--                replicator_<pipeline>, the name the daemon uses when the pipeline sets no
--                `publication`
--   publication  (instead of pipeline) an explicit name; set the same `publication = "..."`
--                on the pipeline in replicator.toml
--   tables       comma-separated `source` tables of the pipeline's [[pipeline.table]]
--                entries; a name without a schema means public.*
--
-- The publication ends up with exactly the listed tables (a second run with another list
-- adds and removes tables), publishes inserts, updates, deletes and truncates, and sets
-- publish_via_partition_root, so a partitioned table arrives under its own name whatever
-- partition a row lives in.
--
-- Refuses a table without a replica identity (no primary key and REPLICA IDENTITY DEFAULT,
-- or REPLICA IDENTITY NOTHING): once a publication publishes updates and deletes of such a
-- table, every UPDATE and DELETE on it fails on the source. Give it a primary key, or
-- ALTER TABLE ... REPLICA IDENTITY USING INDEX <unique index> (or FULL) first.
--
-- Idempotent: run it again at any time. `replicator setup` finds the publication and leaves
-- it alone when its tables match the config (`replicator check` says when they do not).

\set ON_ERROR_STOP on

\if :{?publication}
\elif :{?pipeline}
\set publication replicator_ :pipeline
\else
\echo 'usage: psql -d DB -v pipeline=NAME -v tables=''schema.table, ...'' -f sql/source/publication.sql'
DO $$ BEGIN RAISE EXCEPTION 'psql variable "pipeline" (or "publication") is not set'; END $$;
\endif

\if :{?tables}
\else
\echo 'usage: psql -d DB -v pipeline=NAME -v tables=''schema.table, ...'' -f sql/source/publication.sql'
DO $$ BEGIN RAISE EXCEPTION 'psql variable "tables" is not set'; END $$;
\endif

-- psql does not substitute variables inside DO blocks: pass them as session settings
SELECT set_config('replicator.publication', :'publication', false) AS _publication,
       set_config('replicator.tables', :'tables', false) AS _tables \gset

DO $$
DECLARE
    pub text := current_setting('replicator.publication');
    item text;
    parts text[];
    rel regclass;
    rels text[] := '{}';
    ident "char";
    has_key boolean;
    all_tables boolean;
BEGIN
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
        SELECT c.relreplident,
               EXISTS (SELECT FROM pg_catalog.pg_index i
                        WHERE i.indrelid = c.oid
                          AND ((c.relreplident = 'd' AND i.indisprimary)
                               OR (c.relreplident = 'i' AND i.indisreplident)))
          INTO ident, has_key
          FROM pg_catalog.pg_class c
         WHERE c.oid = rel AND c.relkind IN ('r', 'p');
        IF NOT FOUND THEN
            RAISE EXCEPTION '% is not a table (views and foreign tables cannot be published)', rel;
        END IF;
        IF ident = 'n' OR (ident IN ('d', 'i') AND NOT has_key) THEN
            RAISE EXCEPTION '% has no replica identity: once published, UPDATE and DELETE on it '
                'would fail on this database', rel
                USING HINT = format('add a primary key, or ALTER TABLE %s REPLICA IDENTITY '
                                    'USING INDEX <unique index> (or FULL)', rel);
        END IF;
        rels := rels || rel::text;  -- regclass text: schema-qualified and quoted as needed
    END LOOP;
    IF cardinality(rels) = 0 THEN
        RAISE EXCEPTION 'no tables given (-v tables=...)';
    END IF;

    SELECT p.puballtables INTO all_tables FROM pg_catalog.pg_publication p WHERE p.pubname = pub;
    IF NOT FOUND THEN
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish = %L, '
                       'publish_via_partition_root = true)',
                       pub, array_to_string(rels, ', '), 'insert, update, delete, truncate');
        RAISE NOTICE 'created publication % with % table(s)', pub, cardinality(rels);
    ELSIF all_tables THEN
        RAISE EXCEPTION 'publication % exists and is FOR ALL TABLES; not changing it', pub
            USING HINT = 'pick another name with -v publication=... and set it in the config';
    ELSE
        -- SET TABLE replaces the whole list: tables not given here leave the publication
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', pub, array_to_string(rels, ', '));
        EXECUTE format('ALTER PUBLICATION %I SET (publish = %L, publish_via_partition_root = true)',
                       pub, 'insert, update, delete, truncate');
        RAISE NOTICE 'publication % now has exactly % table(s)', pub, cardinality(rels);
    END IF;
END
$$;

RESET replicator.publication;
RESET replicator.tables;
