-- Tamper evidence (docs/INTEGRITY.md): every transaction that stores audit events seals them in a
-- signed, hash-chained seal; checkpoints of the chain head are also kept outside the database.

-- The seal a row belongs to, and the row's salt for the commitments of its event_data keys.
ALTER TABLE audit_events ADD COLUMN seal_id BIGINT, ADD COLUMN integrity_salt BYTEA;

-- Unsealed rows are the exception (written without a key, or by someone else): found at once.
CREATE INDEX idx_audit_events_unsealed ON audit_events (event_timestamp) WHERE seal_id IS NULL;

CREATE SEQUENCE audit_seal_ids;

CREATE TABLE audit_seals (
    seal_id         BIGINT PRIMARY KEY,
    chain_index     BIGINT NOT NULL UNIQUE,
    kind            VARCHAR(20) NOT NULL CHECK (kind IN ('rows', 'retention')),
    prev_hash       BYTEA NOT NULL,
    merkle_root     BYTEA NOT NULL,
    row_count       INTEGER NOT NULL,
    rows_total      BIGINT NOT NULL,
    first_date      DATE,
    last_date       DATE,
    sealed_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    key_id          VARCHAR(16) NOT NULL,
    details         JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Per row: event_id (16 bytes), event_date as days since 1970-01-01 (4), leaf hash (32).
    leaves          BYTEA NOT NULL,
    correlation_ids TEXT[] NOT NULL,
    seal_hash       BYTEA NOT NULL,
    signature       BYTEA NOT NULL
);

CREATE INDEX idx_audit_seals_correlation_ids ON audit_seals USING GIN (correlation_ids);
CREATE INDEX idx_audit_seals_dates ON audit_seals (first_date, last_date);

CREATE TABLE audit_checkpoints (
    checkpoint_index BIGINT PRIMARY KEY,
    chain_index      BIGINT NOT NULL,
    seal_hash        BYTEA NOT NULL,
    rows_total       BIGINT NOT NULL,
    created_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    key_id           VARCHAR(16) NOT NULL,
    signature        BYTEA NOT NULL
);

COMMENT ON TABLE audit_seals IS
    'Signed, hash-chained seals of the audit rows, one per storing transaction (docs/INTEGRITY.md)';
COMMENT ON TABLE audit_checkpoints IS
    'Signed checkpoints of the seal chain head, also published to the Redis stream audit_checkpoints';
