"""Starting the service's own commands for a benchmark, as production runs them."""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.catalog.embedding import Embedder
from app.catalog.importer import ImportSummary, import_catalog
from app.core.db import create_database
from app.core.migrations import migrate_database
from app.core.settings import PROJECT_ROOT, Settings
from app.local.embedded import EmbeddedPostgres, LocalRedis, free_port

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")


def service_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """This process's environment without any DATASTORAGE_ setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({"DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": redis_url,
                "DATASTORAGE_METRICS_PORT": "0", "DATASTORAGE_LOG_FORMAT": "json"})
    env.update({f"DATASTORAGE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def start_api(
    database_url: str, redis_url: str, log_path: Path, timeout: float = 120, **settings: str
) -> tuple[subprocess.Popen, str]:
    """`datastorage serve` on a free port, once /readyz says ready; returns it and its base URL.
    `settings`: more DATASTORAGE_ settings by name (audit_signing_key_file=…)."""
    port = free_port()
    env = service_env(database_url, redis_url, http_host="127.0.0.1", http_port=str(port), **settings)
    process = subprocess.Popen([DATASTORAGE, "serve"], env=env, stdout=open(log_path, "w"),
                               stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz").status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the API did not become ready; see {log_path}")


@contextlib.contextmanager
def private_servers(prefix: str, *, redis_appendonly: bool = False):
    """A fresh embedded Postgres and redis-server in a temporary folder, gone at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp = Path(tmp)
        postgres = EmbeddedPostgres(tmp / "pgdata", delete_on_close=True)
        redis_server = LocalRedis(tmp / "redis", appendonly=redis_appendonly)
        postgres.start()
        try:
            redis_server.start()
            yield tmp, postgres, redis_server
        finally:
            redis_server.stop()
            postgres.close()


async def fresh_database(postgres: EmbeddedPostgres, name: str, *, months_ahead: int = 1) -> str:
    url = await create_database(postgres.url(), name)
    await migrate_database(url, PROJECT_ROOT / "schema", months_ahead=months_ahead)
    return url


def stop_all(processes) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)


def load_embedder(backend: str = "onnx") -> Embedder:
    """The service's model as a benchmark loads it (the default cache folder)."""
    return Embedder(backend, Settings().model_cache_dir)


# The project's own small catalog, for benchmarks that need some playbooks to search.
TEST_CATALOG = PROJECT_ROOT / "tests" / "data" / "catalog.yaml"


async def import_catalog_file(database_url: str, path: Path = TEST_CATALOG) -> ImportSummary:
    return await import_catalog(database_url, path, embedder=load_embedder)
