-- Citus layout, step 2: the playbook catalog as a reference table, a full copy on every node.
-- It is small (thousands of rows), read by every search, and joined with nothing distributed;
-- a copy per node keeps a search on one node. Writes (imports, the embedding worker) become
-- writes to every placement, which is fine at the catalog's rate of change.
--
-- pgvector must be installed on every node (the HNSW index is built on each copy), and
-- sha256_hex() (schema/002), which the generated columns call, is propagated by Citus as a
-- dependency of the table.
--
-- The stale-embedding trigger (schema/003) runs where a placement is written. Whether its
-- NOTIFY reaches the API's LISTEN on the coordinator was not verified; the embedding worker's
-- sweep (every 30 s) and the search's own check do not depend on it.

SET citus.enable_unsafe_triggers = on;

SELECT create_reference_table('playbook_catalog');
