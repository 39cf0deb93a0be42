-- The remediation playbook catalog (DD-STORAGE-008) with semantic search (pgvector).
--
-- Additions to the plan's table, each on purpose:
-- * content_hash is computed by the database (sha256 of content, hex), so a row written with
--   plain SQL can never carry a hash that does not match its content.
-- * embedding_input_hash fingerprints every field the embedding is computed from; the embedder
--   records the fingerprint it embedded in embedded_input_hash, with the model in embedding_model.
--   A row needs (re-)embedding exactly when embedding IS NULL or the two hashes differ, whoever
--   inserted or edited it (the playbook_catalog_stale view lists them).

CREATE EXTENSION IF NOT EXISTS vector;

-- convert_to() is STABLE only because the database encoding could differ between databases; here
-- the target encoding is fixed, so the result depends on the argument alone.
CREATE FUNCTION sha256_hex(value TEXT) RETURNS VARCHAR(64)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT encode(sha256(convert_to(value, 'UTF8')), 'hex') $$;

CREATE TABLE playbook_catalog (
    -- Identity
    playbook_id VARCHAR(255) NOT NULL,
    version     VARCHAR(50)  NOT NULL,

    -- Metadata
    name        VARCHAR(255) NOT NULL,
    description TEXT         NOT NULL,
    owner       VARCHAR(255),
    maintainer  VARCHAR(255),

    -- Content
    content      TEXT        NOT NULL,
    content_hash VARCHAR(64) NOT NULL GENERATED ALWAYS AS (sha256_hex(content)) STORED,

    -- Labels (exact-match filters)
    labels JSONB NOT NULL,

    -- Semantic search
    embedding            vector(384),
    embedding_input_hash VARCHAR(64) NOT NULL GENERATED ALWAYS AS (
        sha256_hex(name || E'\n' || description || E'\n' || labels::text || E'\n' || content)
    ) STORED,
    embedded_input_hash  VARCHAR(64),
    embedding_model      VARCHAR(100),
    embedded_at          TIMESTAMP WITH TIME ZONE,

    -- Lifecycle
    status          VARCHAR(20) NOT NULL DEFAULT 'active',
    disabled_at     TIMESTAMP WITH TIME ZONE,
    disabled_by     VARCHAR(255),
    disabled_reason TEXT,

    -- Versions
    is_latest_version  BOOLEAN NOT NULL DEFAULT false,
    previous_version   VARCHAR(50),
    deprecation_notice TEXT,

    -- Version change metadata
    version_notes  TEXT,
    change_summary TEXT,
    approved_by    VARCHAR(255),
    approved_at    TIMESTAMP WITH TIME ZONE,

    -- Success metrics
    expected_success_rate     DECIMAL(4,3),
    expected_duration_seconds INTEGER,
    actual_success_rate       DECIMAL(4,3),
    total_executions          INTEGER DEFAULT 0,
    successful_executions     INTEGER DEFAULT 0,

    -- Audit trail
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    created_by VARCHAR(255),
    updated_by VARCHAR(255),

    CONSTRAINT playbook_catalog_pkey PRIMARY KEY (playbook_id, version),
    CONSTRAINT playbook_catalog_status_check
        CHECK (status IN ('active', 'disabled', 'deprecated', 'archived')),
    CONSTRAINT playbook_catalog_labels_check CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT playbook_catalog_expected_success_rate_check
        CHECK (expected_success_rate IS NULL OR (expected_success_rate >= 0 AND expected_success_rate <= 1)),
    CONSTRAINT playbook_catalog_actual_success_rate_check
        CHECK (actual_success_rate IS NULL OR (actual_success_rate >= 0 AND actual_success_rate <= 1)),
    CONSTRAINT playbook_catalog_total_executions_check CHECK (total_executions >= 0),
    CONSTRAINT playbook_catalog_successful_executions_check
        CHECK (successful_executions >= 0 AND successful_executions <= total_executions)
);

CREATE INDEX idx_playbook_catalog_status ON playbook_catalog (status);
CREATE INDEX idx_playbook_catalog_latest ON playbook_catalog (playbook_id, is_latest_version)
    WHERE is_latest_version = true;
-- At most one latest version per playbook.
CREATE UNIQUE INDEX idx_playbook_catalog_one_latest ON playbook_catalog (playbook_id)
    WHERE is_latest_version;
CREATE INDEX idx_playbook_catalog_labels ON playbook_catalog USING GIN (labels);
CREATE INDEX idx_playbook_catalog_embedding ON playbook_catalog
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX idx_playbook_catalog_created_at ON playbook_catalog (created_at DESC);
CREATE INDEX idx_playbook_catalog_success_rate ON playbook_catalog (actual_success_rate DESC)
    WHERE status = 'active';

CREATE FUNCTION update_playbook_catalog_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$;

CREATE TRIGGER playbook_catalog_updated_at
    BEFORE UPDATE ON playbook_catalog
    FOR EACH ROW EXECUTE FUNCTION update_playbook_catalog_updated_at();

-- Rows whose embedding is missing or was computed from other text than the row holds now.
CREATE VIEW playbook_catalog_stale AS
    SELECT playbook_id, version, embedding_input_hash
    FROM playbook_catalog
    WHERE embedding IS NULL OR embedded_input_hash IS DISTINCT FROM embedding_input_hash;

COMMENT ON TABLE playbook_catalog IS
    'Remediation playbook catalog with semantic search support (DD-STORAGE-008)';
COMMENT ON COLUMN playbook_catalog.embedding IS 'all-MiniLM-L6-v2 sentence embedding (384 dimensions, normalised)';
COMMENT ON COLUMN playbook_catalog.labels IS 'Labels for exact-match filtering (environment, priority, business_category, ...)';
COMMENT ON COLUMN playbook_catalog.embedding_input_hash IS 'Fingerprint of name, description, labels and content';
COMMENT ON COLUMN playbook_catalog.embedded_input_hash IS 'The embedding_input_hash the stored embedding was computed from';
