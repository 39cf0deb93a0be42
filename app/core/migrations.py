"""Applies the plain SQL files of `schema/` in order, each once.

A file `NNN_name.sql` is one migration, applied in one transaction and recorded in
`schema_migrations` with the checksum of its text. A session-level advisory lock makes concurrent
runs (several pods starting at once) take turns: the second finds everything applied. An applied
file whose text has changed since is an error, never silently re-run.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from app.audit.partitions import ensure_upcoming_partitions
from app.core.db import connect
from app.core.requirements import check_server

log = structlog.get_logger(__name__)

# Any fixed 64-bit number, unique to this purpose within the database.
MIGRATION_LOCK_ID = 0x64617461_6D696772  # "datamigr"

_FILE_NAME = re.compile(r"^(\d+)_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   CHAR(64) NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(schema_dir: Path) -> list[Migration]:
    migrations = []
    for path in sorted(schema_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {schema_dir}")
    return sorted(migrations, key=lambda m: m.version)


async def apply_migrations(conn: asyncpg.Connection, schema_dir: Path) -> list[Migration]:
    """Applies what is not applied yet; returns those it applied (empty when up to date)."""
    migrations = discover(schema_dir)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} was changed after it was "
                        "applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                # No arguments: asyncpg sends the file as one simple query, so it may hold
                # several statements and $$-quoted function bodies.
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def pending_migrations(conn: asyncpg.Connection, schema_dir: Path) -> list[Migration]:
    """The migrations not yet applied: readiness checks use it to tell a migrated schema."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")} if exists else set()
    return [m for m in discover(schema_dir) if m.version not in applied]


async def migrate_database(url: str, schema_dir: Path, *, months_ahead: int) -> list[Migration]:
    """What `datastorage migrate` and every start-up do: apply the schema, then make sure the
    current month's partition and the next `months_ahead` exist."""
    conn = await connect(url)
    try:
        await check_server(conn)  # before anything is created: a clear refusal (RequirementError)
        applied = await apply_migrations(conn, schema_dir)
        await ensure_upcoming_partitions(conn, months_ahead)
        return applied
    finally:
        await conn.close()
