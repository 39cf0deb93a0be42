-- The unified audit trail (ADR-034), partitioned by month on event_date.
--
-- Differences from the plan's SQL, each on purpose:
-- * PRIMARY KEY (event_id, event_date): a partitioned table's key must contain the partition key.
-- * event_date has no default and must be the UTC date of event_timestamp (a CHECK says so); a
--   generated column cannot be a partition key, so the writer computes it.
-- * No default partition: a row for a month with no partition fails loudly (23514) instead of
--   piling up in a catch-all that must be scanned when the month is created later.
-- * GIN on event_data uses jsonb_path_ops: it serves @> containment, the only JSON filter the
--   service offers, and costs less per insert than jsonb_ops (ops/bench/gin_opclass.py).
-- * The keyset-pagination and correlation-timeline indexes carry event_timestamp (and event_id)
--   so that those reads are index-ordered.

CREATE TABLE audit_events (
    -- Event identity
    event_id        UUID                     NOT NULL,
    event_type      VARCHAR(100)             NOT NULL,
    event_category  VARCHAR(50)              NOT NULL,
    event_outcome   VARCHAR(20)              NOT NULL,
    event_timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
    event_date      DATE                     NOT NULL,

    -- Service context
    service_name    VARCHAR(100) NOT NULL,
    service_version VARCHAR(50),

    -- Actor (who)
    actor_type VARCHAR(50) NOT NULL,
    actor_id   VARCHAR(255),
    actor_name VARCHAR(255),

    -- Resource (what)
    resource_type VARCHAR(100) NOT NULL,
    resource_id   VARCHAR(255) NOT NULL,
    resource_name VARCHAR(255),

    -- Event payload
    event_data JSONB NOT NULL DEFAULT '{}'::jsonb,

    -- Correlation (signal flow)
    correlation_id  VARCHAR(255),
    parent_event_id UUID,
    trace_id        VARCHAR(255),
    span_id         VARCHAR(255),

    metadata JSONB DEFAULT '{}'::jsonb,

    CONSTRAINT audit_events_pkey PRIMARY KEY (event_id, event_date),
    CONSTRAINT audit_events_event_outcome_check
        CHECK (event_outcome IN ('success', 'failure', 'pending', 'skipped')),
    CONSTRAINT audit_events_actor_type_check
        CHECK (actor_type IN ('system', 'user', 'service', 'operator', 'controller')),
    CONSTRAINT audit_events_event_date_check
        CHECK (event_date = (event_timestamp AT TIME ZONE 'UTC')::date),
    CONSTRAINT audit_events_event_data_check CHECK (jsonb_typeof(event_data) = 'object'),
    CONSTRAINT audit_events_metadata_check
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object')
) PARTITION BY RANGE (event_date);

CREATE INDEX idx_audit_events_event_type ON audit_events (event_type, event_timestamp DESC);
CREATE INDEX idx_audit_events_event_category ON audit_events (event_category);
CREATE INDEX idx_audit_events_correlation_id ON audit_events (correlation_id, event_timestamp)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX idx_audit_events_service_name ON audit_events (service_name);
CREATE INDEX idx_audit_events_event_timestamp ON audit_events (event_timestamp DESC, event_id DESC);
CREATE INDEX idx_audit_events_resource ON audit_events (resource_type, resource_id);
CREATE INDEX idx_audit_events_actor ON audit_events (actor_type, actor_id) WHERE actor_id IS NOT NULL;
CREATE INDEX idx_audit_events_parent_event_id ON audit_events (parent_event_id)
    WHERE parent_event_id IS NOT NULL;
CREATE INDEX idx_audit_events_trace_id ON audit_events (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX idx_audit_events_event_data ON audit_events USING GIN (event_data jsonb_path_ops);

-- Append-only: the service never changes a stored event, and nobody else may either.
-- Retention detaches and drops whole partitions, which these triggers do not stop.
CREATE FUNCTION audit_events_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Retention drops whole monthly partitions (datastorage partitions drop).';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change();

-- Creates the partition of the month holding `day` unless it exists; returns its name.
-- Safe under concurrent inserts and concurrent callers: a transaction-scoped advisory lock
-- serialises creators, pg_class is checked again under the lock, and lock_timeout keeps a
-- creator from queueing behind a long query (and every insert from queueing behind it);
-- a timeout surfaces as 55P03, which callers treat as transient and retry.
CREATE FUNCTION audit_events_ensure_partition(day DATE) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start DATE := date_trunc('month', day)::date;
    month_end   DATE := (date_trunc('month', day) + INTERVAL '1 month')::date;
    name        TEXT := 'audit_events_' || to_char(month_start, 'YYYY_MM');
    schema_name TEXT := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = 'audit_events'::regclass);
BEGIN
    IF to_regclass(format('%I.%I', schema_name, name)) IS NOT NULL THEN
        RETURN name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('datastorage.audit_events.partitions', 0));
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relname = name AND n.nspname = schema_name) THEN
        PERFORM set_config('lock_timeout', '5s', true);
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                       schema_name, name, month_start, month_end);
    END IF;
    RETURN name;
END;
$$;

COMMENT ON TABLE audit_events IS
    'Unified audit events (ADR-034): append-only, one row per event, monthly partitions on event_date';
COMMENT ON COLUMN audit_events.event_date IS 'UTC date of event_timestamp: the partition key';
COMMENT ON COLUMN audit_events.event_data IS 'Event-specific payload: a JSON object';
COMMENT ON COLUMN audit_events.correlation_id IS 'Remediation id or other key linking events across services';
