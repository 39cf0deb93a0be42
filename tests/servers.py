"""The servers the tests run against, by what the environment asks for:

* `DATASTORAGE_TEST_DATABASE_URL` / `DATASTORAGE_TEST_REDIS_URL`: servers you run yourself
  (the Postgres needs pgvector and the right to create databases);
* `DATASTORAGE_TEST_DOCKER=1` (and a Docker engine): testcontainers, pgvector/pgvector:pg16 and redis:7;
* otherwise (the default, and CI): a private embedded Postgres and a private redis-server,
  started once per test session in a temporary folder and removed at the end.

The tests of the sharded stream also get a Redis Cluster (three masters, a replica each: private,
or `DATASTORAGE_TEST_REDIS_CLUSTER_URL`), and those of read replicas a primary with a streaming
replica made by pg_basebackup from the embedded Postgres; both are started only when a test needs them.

Only the private servers can be stopped and started again; fault tests skip elsewhere, saying why.
"""

import os
from pathlib import Path

import pytest

from app.local.embedded import EmbeddedPostgres, LocalRedis
from app.local.redis_cluster import LocalRedisCluster


class PostgresUnderTest:
    """A Postgres server: `admin_url` reaches a database from which others can be created."""

    def __init__(self, admin_url: str, embedded: EmbeddedPostgres | None = None, close=None):
        self.admin_url = admin_url
        self._embedded = embedded
        self._close = close

    def stop(self, mode: str = "fast") -> None:
        self._controllable().stop(mode)

    def start(self) -> None:
        self._controllable().start()

    def ensure_running(self) -> None:
        """After a fault test: a no-op when the server runs (or is not ours to start)."""
        if self._embedded is not None:
            self._embedded.start()

    def close(self) -> None:
        if self._close:
            self._close()

    def _controllable(self) -> EmbeddedPostgres:
        if self._embedded is None:
            pytest.skip("this test stops Postgres: it needs the private embedded server")
        return self._embedded


class RedisUnderTest:
    def __init__(self, url: str, local: LocalRedis | None = None, close=None):
        self.url = url
        self._local = local
        self._close = close

    def stop(self, *, kill: bool = False) -> None:
        self._controllable().stop(kill=kill)

    def start(self) -> None:
        self._controllable().start()

    def ensure_running(self) -> None:
        """After a fault test: a no-op when the server runs (or is not ours to start)."""
        if self._local is not None and not self._local.running:
            self._local.start()

    def close(self) -> None:
        if self._close:
            self._close()

    def _controllable(self) -> LocalRedis:
        if self._local is None:
            pytest.skip("this test stops Redis: it needs the private redis-server")
        return self._local


def _docker_requested() -> bool:
    return os.environ.get("DATASTORAGE_TEST_DOCKER", "") not in ("", "0")


def start_postgres(tmp_dir: Path) -> PostgresUnderTest:
    if url := os.environ.get("DATASTORAGE_TEST_DATABASE_URL"):
        return PostgresUnderTest(url)
    if _docker_requested():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("pgvector/pgvector:pg16", driver=None).start()
        return PostgresUnderTest(container.get_connection_url(), close=container.stop)
    embedded = EmbeddedPostgres(tmp_dir / "pgdata", delete_on_close=True)
    embedded.start()
    return PostgresUnderTest(embedded.url(), embedded, close=embedded.close)


def start_redis(tmp_dir: Path) -> RedisUnderTest:
    if url := os.environ.get("DATASTORAGE_TEST_REDIS_URL"):
        return RedisUnderTest(url)
    if _docker_requested():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7").start()
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        return RedisUnderTest(f"redis://{host}:{port}/0", close=container.stop)
    # appendfsync always: a fault test that kills Redis loses nothing that was acknowledged.
    local = LocalRedis(tmp_dir / "redis", appendonly=True, appendfsync="always")
    local.start()
    return RedisUnderTest(local.url, local, close=local.stop)


class RedisClusterUnderTest:
    """A Redis Cluster of three masters with a replica each: the private one (whose nodes a fault
    test may kill, pause and start again), or yours (`DATASTORAGE_TEST_REDIS_CLUSTER_URL`)."""

    def __init__(self, url: str, local: LocalRedisCluster | None = None):
        self.url = url
        self._local = local

    @property
    def local(self) -> LocalRedisCluster:
        if self._local is None:
            pytest.skip("this test kills cluster nodes: it needs the private cluster")
        return self._local

    def ensure_healthy(self) -> None:
        """After a fault test: every node running again (a killed master comes back as a replica of
        the one promoted in its place) and the cluster healthy."""
        if self._local is None:
            return
        for node in self._local.nodes:
            self._local.resume(node)
            if not node.running:
                self._local.start_node(node)
        self._local.wait_healthy(timeout=60)

    def close(self) -> None:
        if self._local is not None:
            self._local.stop()


def start_redis_cluster(tmp_dir: Path) -> RedisClusterUnderTest:
    if url := os.environ.get("DATASTORAGE_TEST_REDIS_CLUSTER_URL"):
        return RedisClusterUnderTest(url)
    local = LocalRedisCluster(tmp_dir, masters=3, replicas_per_master=1)
    try:
        local.start()
    except Exception:
        local.stop()
        raise
    return RedisClusterUnderTest(local.url, local)
