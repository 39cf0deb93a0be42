"""Fixtures on real servers: a private Postgres with pgvector and a private Redis per test session.

Each test gets a database of its own, cloned from a migrated template (fast: a file copy), and a
flushed Redis. Tests that stop a server get it back running before the next test starts.
"""

import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.audit.integrity.keys import Signer, generate_key_pair
from app.catalog.embedding import shared_loader
from app.catalog.freshness import count_stale
from app.catalog.importer import import_catalog
from app.catalog.store import create_pool
from app.core.db import connect, create_database, drop_database
from app.core.migrations import migrate_database
from app.core.settings import Settings
from tests.helpers import CATALOG, SCHEMA_DIR, ConsumerProcess, client_for, wait_for
from tests.servers import start_postgres, start_redis, start_redis_cluster, start_replicated_postgres

TEMPLATE_DATABASE = "datastorage_test_template"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture(scope="session")
async def template_database(postgres_server) -> str:
    await drop_database(postgres_server.admin_url, TEMPLATE_DATABASE)
    url = await create_database(postgres_server.admin_url, TEMPLATE_DATABASE)
    await migrate_database(url, SCHEMA_DIR, months_ahead=3)
    yield TEMPLATE_DATABASE
    await drop_database(postgres_server.admin_url, TEMPLATE_DATABASE)


@pytest.fixture
async def empty_database_url(postgres_server) -> str:
    """A database of this test's own with nothing in it (not even the schema)."""
    postgres_server.ensure_running()
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = await create_database(postgres_server.admin_url, name)
    yield url
    await _drop_when_reachable(postgres_server, name)


@pytest.fixture
async def database_url(postgres_server, template_database) -> str:
    """A migrated database of this test's own."""
    postgres_server.ensure_running()
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = await create_database(postgres_server.admin_url, name, template=template_database)
    yield url
    await _drop_when_reachable(postgres_server, name)


async def _drop_when_reachable(postgres_server, name: str) -> None:
    postgres_server.ensure_running()
    await drop_database(postgres_server.admin_url, name)


@pytest.fixture
async def db(database_url):
    """An asyncpg connection to this test's migrated database."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def redis_url(redis_server) -> str:
    redis_server.ensure_running()
    client = aioredis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return redis_server.url


@pytest.fixture
async def client(redis_url):
    """A client of this test's (flushed) Redis."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory):
    """Three masters with a replica each, started the first time a test asks for them."""
    server = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield server
    server.close()


@pytest.fixture
async def redis_cluster_url(redis_cluster_server) -> str:
    """The cluster, healthy (after a fault test) and flushed on every master."""
    redis_cluster_server.ensure_healthy()
    client = aioredis.RedisCluster.from_url(redis_cluster_server.url)
    await client.flushall(target_nodes=aioredis.RedisCluster.PRIMARIES)
    await client.aclose()
    return redis_cluster_server.url


@pytest.fixture
async def cluster_client(redis_cluster_url):
    """A cluster client (redis-py's RedisCluster) of the flushed cluster."""
    client = aioredis.RedisCluster.from_url(redis_cluster_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def replicated_postgres(tmp_path_factory):
    """A private primary with a streaming replica (pg_basebackup), and a migrated template on it;
    started the first time a test asks for them."""
    pair = start_replicated_postgres(tmp_path_factory.mktemp("replicated"))
    await create_database(pair.primary.url(), TEMPLATE_DATABASE)
    await migrate_database(pair.primary.url(TEMPLATE_DATABASE), SCHEMA_DIR, months_ahead=3)
    yield pair
    pair.close()


@pytest.fixture
async def replicated_database(replicated_postgres) -> tuple[str, str]:
    """A migrated database of this test's own on the primary, and its URL on the replica once the
    replica has it: (primary_url, replica_url)."""
    replicated_postgres.ensure_running()
    name = f"test_{uuid.uuid4().hex[:16]}"
    primary_url = await create_database(
        replicated_postgres.primary.url(), name, template=TEMPLATE_DATABASE
    )
    replica_url = replicated_postgres.replica.url(name)

    async def replicated() -> bool:
        try:
            await (await connect(replica_url, timeout=2)).close()
        except (OSError, asyncpg.PostgresError):
            return False
        return True

    await wait_for(replicated, 30, "the new database on the replica")
    yield primary_url, replica_url
    replicated_postgres.ensure_running()
    await drop_database(replicated_postgres.primary.url(), name)


@pytest.fixture
def settings(database_url, redis_url) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, schema_dir=SCHEMA_DIR)


@pytest.fixture
def consumers(database_url, redis_url, tmp_path):
    started: list[ConsumerProcess] = []

    async def start(name: str = "c1", **settings) -> ConsumerProcess:
        consumer = ConsumerProcess(database_url, redis_url, name, tmp_path, **settings).start()
        started.append(consumer)
        await consumer.wait_started()
        return consumer

    yield start
    for consumer in started:
        if consumer.running:
            consumer.kill()


# --- the HTTP API in this process, and the playbook catalog ---------------------------------


@pytest.fixture
async def api(settings):
    async with client_for(settings) as client:
        yield client


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> Path:
    """An Ed25519 key pair for the session (audit-signing.key, .pub beside it)."""
    private_path, _ = generate_key_pair(tmp_path_factory.mktemp("keys"))
    return private_path


@pytest.fixture
def signer(signing_key) -> Signer:
    return Signer.from_file(signing_key)


@pytest.fixture(scope="session")
def embedder_loader():
    """The model, loaded once per session (in the default cache folder)."""
    defaults = Settings()
    return shared_loader(defaults.embedding_backend, defaults.model_cache_dir)


@pytest.fixture(scope="session")
async def embedder(embedder_loader):
    return await embedder_loader.get()


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def catalog(database_url, pool, embedder):
    summary = await import_catalog(database_url, CATALOG, embedder=lambda: embedder)
    assert summary.entries == 9
    async with pool.acquire() as conn:  # embedded by the import (or by a running service's worker)
        assert await count_stale(conn) == 0
    return summary
