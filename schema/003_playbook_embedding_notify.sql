-- Keeping playbook embeddings fresh when rows arrive by plain SQL (the plan's way of managing the
-- catalog): every row written without a matching embedding is announced on the channel
-- `playbook_embeddings_stale`, where the service's embedding worker listens, and a partial index
-- finds such rows at once for the worker's sweep and the search's last-moment check.

CREATE FUNCTION playbook_catalog_announce_stale() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.embedding IS NULL OR NEW.embedded_input_hash IS DISTINCT FROM NEW.embedding_input_hash THEN
        PERFORM pg_notify('playbook_embeddings_stale', NEW.playbook_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER playbook_catalog_announce_stale
    AFTER INSERT OR UPDATE ON playbook_catalog
    FOR EACH ROW EXECUTE FUNCTION playbook_catalog_announce_stale();

CREATE INDEX idx_playbook_catalog_stale ON playbook_catalog (playbook_id, version)
    WHERE embedding IS NULL OR embedded_input_hash IS DISTINCT FROM embedding_input_hash;
