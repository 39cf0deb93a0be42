-- Citus layout, step 1: audit_events distributed by remediation, so that one correlation's
-- timeline lives on one shard (one worker answers `?correlation_id=…&order=asc`, and one
-- remediation's writes are one shard's).
--
-- * The distribution column cannot be correlation_id itself: Citus refuses a NULL distribution
--   value ("cannot perform an INSERT with NULL in the partition column") and events without a
--   correlation are allowed. It cannot be a generated column either ("Distribution column must not
--   use GENERATED ALWAYS AS (...) STORED"). So shard_key is a plain column the writer fills with
--   coalesce(correlation_id, event_id::text), and a CHECK holds it to that (like event_date).
-- * Citus requires every PRIMARY KEY and UNIQUE constraint to contain the distribution column, and
--   Postgres requires the partition key: the key becomes (shard_key, event_id, event_date).
--   event_id is then unique per correlation, no longer across the table: a redelivered event has
--   the same correlation and still hits ON CONFLICT, but one event_id reused under two
--   correlations would be two rows. Global uniqueness would need a second table distributed by
--   event_id written in the same (two-phase, cross-shard) transaction; see docs/SCALING.md.
-- * Lookups by event_id alone (GET /api/v1/audit-events/{id}) go to every shard; each answers
--   from idx_audit_events_event_id.
-- * Monthly partitions stay (range on event_date): partitions of a distributed table are
--   distributed with it, and create_time_partitions keeps months ready ahead.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_events) THEN
        RAISE EXCEPTION 'audit_events holds rows: distribute an empty table, then COPY the rows in '
                        'with shard_key = coalesce(correlation_id, event_id::text) (docs/SCALING.md)';
    END IF;
END;
$$;

ALTER TABLE audit_events ADD COLUMN shard_key VARCHAR(255) NOT NULL;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_shard_key_check
    CHECK (shard_key = coalesce(correlation_id, event_id::text));

ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_pkey PRIMARY KEY (shard_key, event_id, event_date);
-- What the old key's index did for lookups by event_id alone. (A correlation's timeline keeps
-- idx_audit_events_correlation_id on its shard, once the query names the shard: docs/SCALING.md.)
CREATE INDEX idx_audit_events_event_id ON audit_events (event_id);

-- The append-only triggers only raise: safe to run on every shard. Citus creates triggers on
-- distributed tables only when told so.
SET citus.enable_unsafe_triggers = on;

-- 32 shards: several per worker for a handful of workers, so that adding workers later moves
-- whole shards (citus_rebalance_start) instead of splitting them.
SELECT create_distributed_table('audit_events', 'shard_key', shard_count => 32);

-- The months `datastorage migrate` created are distributed with the table; these are the next.
-- (Citus names them audit_events_pYYYY_MM; the service's own audit_events_ensure_partition keeps
-- working too, and a new partition of a distributed table is distributed automatically.)
SELECT create_time_partitions(
    table_name         := 'audit_events',
    partition_interval := INTERVAL '1 month',
    start_from         := date_trunc('month', now()),
    end_at             := date_trunc('month', now()) + INTERVAL '7 months'
);

-- Colocated tables keyed by correlation (legal holds, for one) should be distributed with
-- colocate_with => 'audit_events' on a VARCHAR(255) column holding the same key, so that a
-- join on it stays on one shard.
