"""What the service needs of its Postgres (the plan's BR-003): PostgreSQL 16 or later and pgvector
0.8 or later (HNSW iterative scans). Checked by `migrate` and at every start-up, so that a server
that cannot do the job is named at once with what to do, not at the first search.
"""

import asyncpg
import structlog

log = structlog.get_logger(__name__)

MIN_POSTGRES = 160000  # server_version_num
MIN_POSTGRES_TEXT = "16"
MIN_PGVECTOR = (0, 8)
MIN_PGVECTOR_TEXT = "0.8"


class RequirementError(RuntimeError):
    """The Postgres server cannot run the service; the message says what to do."""


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-", 1)[0].split(".") if part.isdigit())


def check_versions(
    server_version_num: int, server_version: str, vector_version: str | None, *, installed: bool
) -> None:
    """Raises RequirementError naming what is missing. `vector_version` is the installed
    extension's version (`installed`) or the newest the server offers (None: none)."""
    if server_version_num < MIN_POSTGRES:
        raise RequirementError(
            f"PostgreSQL {server_version} is too old: the service needs PostgreSQL {MIN_POSTGRES_TEXT} or later "
            f"with pgvector {MIN_PGVECTOR_TEXT} or later (e.g. the image pgvector/pgvector:pg16), or leave "
            "DATASTORAGE_DATABASE_URL unset for the embedded one"
        )
    if vector_version is None:
        raise RequirementError(
            f"the vector extension (pgvector {MIN_PGVECTOR_TEXT} or later) is not available on PostgreSQL "
            f"{server_version}: install pgvector on the server (e.g. the image pgvector/pgvector:pg16, or the "
            "postgresql-NN-pgvector package)"
        )
    if version_tuple(vector_version) < MIN_PGVECTOR:
        what = "installed in this database" if installed else "the newest this server offers"
        fix = "ALTER EXTENSION vector UPDATE" if installed else "upgrade the pgvector package on the server"
        raise RequirementError(
            f"pgvector {vector_version} is {what}; the service needs {MIN_PGVECTOR_TEXT} or later ({fix})"
        )


async def check_server(conn: asyncpg.Connection) -> None:
    """Checks the server and this database; raises RequirementError."""
    server_version_num = int(await conn.fetchval("SHOW server_version_num"))
    server_version = str(await conn.fetchval("SHOW server_version")).split()[0]
    installed = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if installed is None and server_version_num >= MIN_POSTGRES:
        available = await conn.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
    else:
        available = None
    check_versions(server_version_num, server_version, installed or available, installed=installed is not None)
    log.debug("postgres_checked", postgres=server_version, pgvector=installed or available)
