"""The catalog's rows: the connection pool, writing versions (with the latest-version flags), and
reading versions back."""

import hashlib
import inspect
import json
from collections.abc import Iterable

import asyncpg
from pgvector.asyncpg import register_vector

from app.catalog.playbook import (
    ENTRY_COLUMNS,
    SELECT_RECORD,
    CatalogError,
    PlaybookEntry,
    canonical_version,
    version_key,
)
from app.core.db import asyncpg_dsn


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose `acquire()` waits at most `acquire_timeout` seconds unless told
    otherwise: a pool with every connection in use, or a Postgres that does not answer, is an
    error (asyncio's TimeoutError) in bounded time rather than a request waiting for ever."""

    def __init__(self, *args, acquire_timeout: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None):
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


# asyncpg.create_pool's defaults: a BoundedPool is created as create_pool would create a Pool.
_POOL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(asyncpg.create_pool).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY
}


async def create_pool(database_url: str, *, acquire_timeout: float | None = None, **kwargs) -> asyncpg.Pool:
    async def setup(conn: asyncpg.Connection) -> None:
        await register_vector(conn)
        # Keep scanning the HNSW graph until LIMIT rows pass the filters, in exact order; a wider
        # candidate list than the default 40 for better recall.
        await conn.execute("SET hnsw.iterative_scan = strict_order; SET hnsw.ef_search = 100")

    options = {**_POOL_DEFAULTS, "init": setup, **kwargs}
    return await BoundedPool(asyncpg_dsn(database_url), acquire_timeout=acquire_timeout, **options)


# Bind parameters by column name: `$n` of each column of the entry, in ENTRY_COLUMNS order.
_PARAMETER = {column: f"${n}" for n, column in enumerate(ENTRY_COLUMNS, 1)}
_UPDATED = ENTRY_COLUMNS[2:]  # everything but the key (playbook_id, version)
UPSERT = (
    f"INSERT INTO playbook_catalog ({', '.join(ENTRY_COLUMNS)}, disabled_at) "
    f"VALUES ({', '.join(_PARAMETER.values())}, "
    f"CASE WHEN {_PARAMETER['status']}::varchar = 'disabled' THEN now() END) "
    f"ON CONFLICT (playbook_id, version) DO UPDATE SET "
    f"{', '.join(f'{c} = EXCLUDED.{c}' for c in _UPDATED)}, "
    "disabled_at = CASE WHEN EXCLUDED.status = 'disabled' "
    "THEN coalesce(playbook_catalog.disabled_at, now()) END "
    f"WHERE ({', '.join(f'playbook_catalog.{c}' for c in _UPDATED)}) "
    f"IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in _UPDATED)})"
)


async def upsert_entries(conn: asyncpg.Connection, entries: list[PlaybookEntry], *, force: bool = False) -> int:
    """Writes the versions (one transaction); returns how many rows changed. A version whose
    content differs from the stored one is refused unless `force`: a published version is a
    promise about what runs."""
    keys = [(e.playbook_id, canonical_version(e.version)) for e in entries]
    if len(set(keys)) != len(keys):
        raise CatalogError("the same playbook version appears twice")
    # Stored versions by canonical spelling: v1.0.0 and 1.0.0 are one row, kept as first written.
    stored = {
        (r["playbook_id"], r["version_canonical"]): (r["version"], r["content_hash"])
        for r in await conn.fetch(
            "SELECT playbook_id, version, version_canonical, content_hash FROM playbook_catalog "
            "WHERE (playbook_id, version_canonical) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
    }
    written = []
    for entry, key in zip(entries, keys, strict=True):
        known = stored.get(key)
        if known is None:
            written.append(entry)
            continue
        spelling, content_hash = known
        if content_hash != hashlib.sha256(entry.content.encode()).hexdigest() and not force:
            raise CatalogError(
                f"{entry.playbook_id} {entry.version}: the content differs from the stored "
                f"version {spelling}; publish a new version, or pass --force"
            )
        written.append(entry.model_copy(update={"version": spelling}))
    entries = written
    changed = 0
    async with conn.transaction():
        for entry in entries:
            values = entry.model_dump()
            values["labels"] = json.dumps(values["labels"])
            status = await conn.execute(UPSERT, *(values[c] for c in ENTRY_COLUMNS))
            changed += int(status.rsplit(" ", 1)[-1])
        await refresh_latest(conn, {e.playbook_id for e in entries})
    return changed


async def refresh_latest(conn: asyncpg.Connection, playbook_ids: Iterable[str]) -> None:
    """Marks the highest semantic version of each playbook as its latest (and only that one)."""
    for playbook_id in playbook_ids:
        versions = [
            r["version"]
            for r in await conn.fetch("SELECT version FROM playbook_catalog WHERE playbook_id = $1", playbook_id)
        ]
        if not versions:
            continue
        latest = max(versions, key=version_key)
        # Two statements: the one-latest unique index is checked row by row.
        await conn.execute(
            "UPDATE playbook_catalog SET is_latest_version = false "
            "WHERE playbook_id = $1 AND is_latest_version AND version <> $2",
            playbook_id,
            latest,
        )
        await conn.execute(
            "UPDATE playbook_catalog SET is_latest_version = true, previous_version = "
            "coalesce(previous_version, $3) WHERE playbook_id = $1 AND version = $2 "
            "AND NOT is_latest_version",
            playbook_id,
            latest,
            _previous(versions, latest),
        )


def _previous(versions: list[str], version: str) -> str | None:
    older = sorted((v for v in versions if version_key(v) < version_key(version)), key=version_key)
    return older[-1] if older else None


async def versions(conn: asyncpg.Connection, playbook_id: str) -> list[asyncpg.Record]:
    """Every version of a playbook, newest semantic version first."""
    rows = await conn.fetch(f"SELECT {SELECT_RECORD} FROM playbook_catalog WHERE playbook_id = $1", playbook_id)
    return sorted(rows, key=lambda r: version_key(r["version"]), reverse=True)


async def latest_active(conn: asyncpg.Connection, playbook_id: str) -> asyncpg.Record | None:
    active = [r for r in await versions(conn, playbook_id) if r["status"] == "active"]
    return active[0] if active else None


async def latest_version(conn: asyncpg.Connection, playbook_id: str) -> asyncpg.Record | None:
    """The playbook's latest version (`is_latest_version`, the plan's meaning), whatever its
    status: the body says the status; search offers it only while it is active."""
    return await conn.fetchrow(
        f"SELECT {SELECT_RECORD} FROM playbook_catalog WHERE playbook_id = $1 AND is_latest_version", playbook_id
    )


async def one_version(conn: asyncpg.Connection, playbook_id: str, version: str) -> asyncpg.Record | None:
    """A version under any spelling of it (v1.0.0, 1.0.0, 1.0.0+build.7)."""
    return await conn.fetchrow(
        f"SELECT {SELECT_RECORD} FROM playbook_catalog WHERE playbook_id = $1 "
        "AND version_canonical = playbook_version_canonical($2)",
        playbook_id,
        version,
    )
