-- Full-text search over the playbook catalog (issue 11): the text signal of the hybrid search.
--
-- * The text search configuration `playbook_search` (today a copy of `english`: English stemming
--   and stop words for words; numbers, hosts, paths and versions kept whole), named so that it can
--   change without touching the column's definition.
-- * playbook_search_expand(text) appends the parts of identifiers, so that both the whole and its
--   parts match: CamelCase (ImagePullBackOff -> Image Pull Back Off, OOMKilled -> OOM Killed) and
--   dotted, slashed or colon names (nvidia.com/gpu -> nvidia com gpu). Documents and queries go
--   through the same function, so they meet on the same lexemes.
-- * search_document: name (weight A), description (B), labels (C) and the whole content (D), kept
--   by Postgres itself (a generated column), with a GIN index for tsquery matches.
-- * playbook_search_generation: a counter bumped in the same transaction as any change to what
--   is searched (text, labels, status, latest flag, rows added or removed), so that a process
--   holding term statistics in memory knows, in one cheap read, when to reload them.

CREATE TEXT SEARCH CONFIGURATION playbook_search (COPY = english);

CREATE FUNCTION playbook_search_expand(value TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT value || coalesce(' ' || (
        SELECT string_agg(part, ' ') FROM (
            SELECT regexp_replace(regexp_replace(m[1], '([a-z0-9])([A-Z])', '\1 \2', 'g'),
                                  '([A-Z])([A-Z][a-z])', '\1 \2', 'g') AS part
            FROM regexp_matches(value, '([A-Za-z0-9]*[a-z0-9][A-Z][A-Za-z0-9]*|[A-Z]{2,}[a-z][A-Za-z0-9]*)', 'g') AS m
            UNION ALL
            SELECT regexp_replace(m[1], '[./:]+', ' ', 'g')
            FROM regexp_matches(value, '([A-Za-z0-9_-]*[A-Za-z][A-Za-z0-9_-]*(?:[./:][A-Za-z0-9_-]+)+)', 'g') AS m
        ) AS parts), '')
$$;

-- Labels as text, `name: value` in name order (the form the embedded text uses too).
CREATE FUNCTION playbook_label_text(labels JSONB) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT coalesce(string_agg(key || ': ' || value, ', ' ORDER BY key), '') FROM jsonb_each_text(labels)
$$;

CREATE FUNCTION playbook_search_document(name TEXT, description TEXT, labels JSONB, content TEXT)
RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT setweight(to_tsvector('playbook_search', playbook_search_expand(name)), 'A')
        || setweight(to_tsvector('playbook_search', playbook_search_expand(description)), 'B')
        || setweight(to_tsvector('playbook_search', playbook_search_expand(playbook_label_text(labels))), 'C')
        || setweight(to_tsvector('playbook_search', playbook_search_expand(content)), 'D')
$$;

-- The query's side: the same analysis, as an OR of its lexemes (any one matches).
CREATE FUNCTION playbook_search_query(query TEXT) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT coalesce(string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', ' | '), '')::tsquery
    FROM unnest(to_tsvector('playbook_search', playbook_search_expand(query)))
$$;

ALTER TABLE playbook_catalog ADD COLUMN search_document tsvector
    GENERATED ALWAYS AS (playbook_search_document(name, description, labels, content)) STORED;

CREATE INDEX idx_playbook_catalog_search ON playbook_catalog USING GIN (search_document);

CREATE TABLE playbook_search_generation (
    only_row   BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    generation BIGINT NOT NULL
);
INSERT INTO playbook_search_generation (generation) VALUES (1);

CREATE FUNCTION playbook_search_bump_generation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE playbook_search_generation SET generation = generation + 1;
    RETURN NULL;
END;
$$;

-- Statement-level: one bump per statement however many rows it touches. Writing embeddings
-- (the worker's UPDATE of the embedding columns) changes nothing searched by text: no bump.
CREATE TRIGGER playbook_search_changed
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF name, description, labels, content, status, is_latest_version
    ON playbook_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION playbook_search_bump_generation();

COMMENT ON COLUMN playbook_catalog.search_document IS
    'Weighted full-text document: name A, description B, labels C, content D (configuration playbook_search)';
