-- Governance (issue 15): legal holds per correlation, the archive retention moves held rows to
-- before it drops their month, the view that reads both, and the record of retention runs.

-- A hold is placed and released once; released holds stay as rows (and in the self-audit trail),
-- so a correlation held again later gets a new row. At most one active hold per correlation.
CREATE TABLE audit_legal_holds (
    hold_id        BIGSERIAL PRIMARY KEY,
    correlation_id VARCHAR(255) NOT NULL,
    reason         TEXT NOT NULL CHECK (length(reason) > 0),
    placed_by      VARCHAR(255) NOT NULL,
    placed_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    released_by    VARCHAR(255),
    released_at    TIMESTAMP WITH TIME ZONE,
    CHECK ((released_by IS NULL) = (released_at IS NULL))
);

CREATE UNIQUE INDEX idx_audit_legal_holds_active ON audit_legal_holds (correlation_id)
    WHERE released_at IS NULL;

-- Held rows of a dropped month, moved here in the transaction that drops it: the same columns
-- (in the same order: LIKE), values, seal ids and salts, so they still verify against their seals.
-- One partition per held correlation: when its hold is released and its rows are past retention,
-- retention drops that partition, as it drops a month. A column added to audit_events later must
-- be added here and to the view below in the same migration.
CREATE TABLE audit_events_held (
    LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (correlation_id, event_id)
) PARTITION BY LIST (correlation_id);

CREATE INDEX idx_audit_events_held_event_id ON audit_events_held (event_id);
CREATE INDEX idx_audit_events_held_event_timestamp ON audit_events_held (event_timestamp DESC, event_id DESC);
CREATE INDEX idx_audit_events_held_event_date ON audit_events_held (event_date);

-- Append-only as audit_events is: only retention's DETACH and DROP of a whole partition remove rows.
CREATE TRIGGER audit_events_held_append_only
    BEFORE UPDATE OR DELETE ON audit_events_held
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_events_held_no_truncate
    BEFORE TRUNCATE ON audit_events_held
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change();

-- The archive partition of one correlation, created unless it exists; returns its name. The name
-- is a hash of the correlation id (any text may be one); the value goes in as a literal (%L).
-- Only retention calls it, under its own advisory lock.
CREATE FUNCTION audit_events_held_ensure_partition(held_correlation_id TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    name        TEXT := 'audit_events_held_'
                        || substr(encode(sha256(convert_to(held_correlation_id, 'UTF8')), 'hex'), 1, 24);
    schema_name TEXT := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = 'audit_events_held'::regclass);
BEGIN
    IF to_regclass(format('%I.%I', schema_name, name)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF audit_events_held FOR VALUES IN (%L)',
                       schema_name, name, held_correlation_id);
    END IF;
    RETURN name;
END;
$$;

-- What the read side queries: the trail and the held rows of dropped months, which the list and
-- get endpoints keep returning. Filters and time bounds reach both (and prune partitions).
CREATE VIEW audit_events_all AS
    SELECT * FROM audit_events
    UNION ALL
    SELECT * FROM audit_events_held;

-- One row per retention run that changed something or tried to (`retention apply`, the daily run
-- inside `datastorage run`, the CronJob, and `partitions drop`): the long-running pods export the
-- newest success as a metric, so the alert fires when no run succeeded for 48 h.
CREATE TABLE audit_retention_runs (
    run_id             BIGSERIAL PRIMARY KEY,
    command            VARCHAR(40) NOT NULL,
    actor              VARCHAR(255) NOT NULL,
    started_at         TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at        TIMESTAMP WITH TIME ZONE NOT NULL,
    succeeded          BOOLEAN NOT NULL,
    partitions_dropped INTEGER NOT NULL DEFAULT 0,
    rows_dropped       BIGINT NOT NULL DEFAULT 0,
    rows_archived      BIGINT NOT NULL DEFAULT 0,
    details            JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX idx_audit_retention_runs_success ON audit_retention_runs (finished_at DESC) WHERE succeeded;

COMMENT ON TABLE audit_legal_holds IS 'Legal holds per correlation: retention never loses a held event';
COMMENT ON TABLE audit_events_held IS
    'Held rows of months retention dropped, one partition per correlation; append-only';
COMMENT ON VIEW audit_events_all IS 'audit_events and the held rows of dropped months: what queries read';
COMMENT ON TABLE audit_retention_runs IS 'Retention runs and partition drops, with what they removed';
