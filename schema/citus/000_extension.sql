-- Citus layout, step 0 (docs/SCALING.md). On the coordinator, once, in the service's database,
-- right after `datastorage migrate` has created the plain schema (schema/*.sql) and before any
-- audit event is written. These files are NOT migrations: the runner reads schema/*.sql only.
--
-- Every node needs `shared_preload_libraries = 'citus'`, the pgvector package, and the workers
-- added with citus_add_node(); CREATE EXTENSION on the coordinator then reaches the workers.

CREATE EXTENSION IF NOT EXISTS citus;
