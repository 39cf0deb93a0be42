-- Operator and plan compatibility (issue 13): the playbook catalog managed in SQL (item 7), and
-- the record of upkeep runs (item 9).
--
-- * content_hash becomes the plan's plain NOT NULL column that an operator's INSERT may fill in:
--   a trigger computes it when absent (or when an UPDATE changes the content and leaves the hash
--   as it was) and refuses a supplied hash that does not match the content. So a row can still
--   never carry a hash that is not its content's.
-- * v1.0.0, 1.0.0 and 1.0.0+build.7 are one version (semantic versioning ignores a leading v and
--   build metadata): version_canonical says which, and a unique index keeps one row per playbook
--   and canonical version, whoever writes it. The row keeps the spelling it was first written with.
--


ALTER TABLE playbook_catalog ALTER COLUMN content_hash DROP EXPRESSION;

CREATE FUNCTION playbook_catalog_content_hash() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    expected VARCHAR(64) := sha256_hex(NEW.content);
BEGIN
    IF NEW.content_hash IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.content IS DISTINCT FROM OLD.content
           AND NEW.content_hash IS NOT DISTINCT FROM OLD.content_hash) THEN
        NEW.content_hash := expected;
    ELSIF lower(NEW.content_hash) = expected THEN
        NEW.content_hash := expected;
    ELSE
        RAISE EXCEPTION 'content_hash does not match the content of playbook % version %',
            NEW.playbook_id, NEW.version
            USING ERRCODE = 'check_violation',
                  COLUMN = 'content_hash',
                  TABLE = 'playbook_catalog',
                  HINT = 'leave content_hash out (it is computed) or give the hex SHA-256 of content';
    END IF;
    RETURN NEW;
END;
$$;

-- Named to run before the other row triggers (alphabetical order), which may read the hash.
CREATE TRIGGER playbook_catalog_a_content_hash
    BEFORE INSERT OR UPDATE ON playbook_catalog
    FOR EACH ROW EXECUTE FUNCTION playbook_catalog_content_hash();

CREATE FUNCTION playbook_version_canonical(version TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT regexp_replace(regexp_replace(version, '^[vV]', ''), '\+.*$', '') $$;

ALTER TABLE playbook_catalog
    ADD COLUMN version_canonical VARCHAR(50) NOT NULL
        GENERATED ALWAYS AS (playbook_version_canonical(version)) STORED;

CREATE UNIQUE INDEX idx_playbook_catalog_canonical_version
    ON playbook_catalog (playbook_id, version_canonical);

COMMENT ON COLUMN playbook_catalog.content_hash IS
    'SHA-256 of content (hex); computed when left out, a mismatching value is refused';
COMMENT ON COLUMN playbook_catalog.version_canonical IS
    'The version without a leading v and build metadata: one row per playbook and canonical version';

-- Upkeep that runs as a Kubernetes CronJob (partitions ensure) cannot be scraped once finished:
-- each success is recorded here, and the long-running pods export it as a gauge to alert on.
CREATE TABLE upkeep_runs (
    task            VARCHAR(100) PRIMARY KEY,
    last_success_at TIMESTAMP WITH TIME ZONE NOT NULL,
    detail          JSONB NOT NULL DEFAULT '{}'::jsonb
);

COMMENT ON TABLE upkeep_runs IS 'The last success of each periodic upkeep task (exported as datastorage_upkeep_last_success_timestamp_seconds)';
