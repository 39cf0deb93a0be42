"""The playbook catalog: importing versions, keeping embeddings fresh, versions, semantic search.

Search ranks the active, latest versions by cosine similarity to the query's embedding. Label
filters are exact matches (`labels @> {...}`, GIN). A filter that leaves few rows is ranked
exactly; otherwise the HNSW index ranks, with pgvector 0.8's iterative scan
(`hnsw.iterative_scan = strict_order`, set on every connection of the pool) so that it keeps
scanning until enough rows pass the filters instead of returning too few.
A row whose embedding is missing or older than its text is embedded on the fly before the search
ranks, so no active playbook is ever silently left out.
"""

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import semver
import structlog
from pgvector.asyncpg import register_vector
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import metrics
from app.db import asyncpg_dsn
from app.embedding import Embedder, playbook_text

log = structlog.get_logger(__name__)

MAX_RESULTS_LIMIT = 100
# Cosine similarity below which a playbook is not offered (ops/bench/playbook_search.py).
DEFAULT_MIN_CONFIDENCE = 0.3
# Rows embedded on the fly by one search at most; more is the worker's job (and logged).
ON_THE_FLY_LIMIT = 32
STALE = "(embedding IS NULL OR embedded_input_hash IS DISTINCT FROM embedding_input_hash)"
SEARCHABLE = "status = 'active' AND is_latest_version AND embedding IS NOT NULL"
# A label filter leaving at most this many rows is ranked exactly, not through the HNSW index.
EXACT_SEARCH_MAX_ROWS = 2000


async def create_pool(database_url: str, **kwargs) -> asyncpg.Pool:
    async def setup(conn: asyncpg.Connection) -> None:
        await register_vector(conn)
        # Keep scanning the HNSW graph until LIMIT rows pass the filters, in exact order; a wider
        # candidate list than the default 40 for better recall.
        await conn.execute("SET hnsw.iterative_scan = strict_order; SET hnsw.ef_search = 100")

    return await asyncpg.create_pool(asyncpg_dsn(database_url), init=setup, **kwargs)


def parse_version(version: str) -> semver.Version:
    return semver.Version.parse(version.removeprefix("v"))


def version_key(version: str) -> tuple:
    """Semantic-version order; a version that is not one sorts below every one that is."""
    try:
        return (1, parse_version(version))
    except ValueError:
        return (0, version)


class PlaybookEntry(BaseModel):
    """One version of a playbook, as the catalog file (and the import) carries it."""

    model_config = ConfigDict(extra="ignore")

    playbook_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=50)
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1)
    content: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    owner: str | None = Field(default=None, max_length=255)
    maintainer: str | None = Field(default=None, max_length=255)
    status: Literal["active", "disabled", "deprecated", "archived"] = "active"
    disabled_reason: str | None = None
    disabled_by: str | None = Field(default=None, max_length=255)
    deprecation_notice: str | None = None
    version_notes: str | None = None
    change_summary: str | None = None
    approved_by: str | None = Field(default=None, max_length=255)
    expected_success_rate: float | None = Field(default=None, ge=0, le=1)
    expected_duration_seconds: int | None = Field(default=None, ge=0)

    @field_validator("version")
    @classmethod
    def _semantic_version(cls, value: str) -> str:
        try:
            parse_version(value)
        except ValueError:
            raise ValueError("must be a semantic version such as v1.2.0") from None
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _label_values_as_text(cls, value: Any) -> Any:
        # YAML reads `priority: 1` as a number; label filters compare text.
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value


class CatalogError(ValueError):
    pass


UPSERT_COLUMNS = ("playbook_id", "version", "name", "description", "content", "labels", "owner",
                  "maintainer", "status", "disabled_reason", "disabled_by", "deprecation_notice",
                  "version_notes", "change_summary", "approved_by", "expected_success_rate",
                  "expected_duration_seconds")


async def upsert_entries(conn: asyncpg.Connection, entries: list[PlaybookEntry], *, force: bool = False) -> int:
    """Writes the versions (one transaction); returns how many rows changed. A version whose
    content differs from the stored one is refused unless `force`: a published version is a
    promise about what runs."""
    keys = [(e.playbook_id, e.version) for e in entries]
    if len(set(keys)) != len(keys):
        raise CatalogError("the same playbook version appears twice")
    stored = {
        (r["playbook_id"], r["version"]): r["content_hash"]
        for r in await conn.fetch(
            "SELECT playbook_id, version, content_hash FROM playbook_catalog "
            "WHERE (playbook_id, version) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys], [k[1] for k in keys])
    }
    for entry in entries:
        known = stored.get((entry.playbook_id, entry.version))
        if known and known != hashlib.sha256(entry.content.encode()).hexdigest() and not force:
            raise CatalogError(f"{entry.playbook_id} {entry.version}: the content differs from the stored "
                               "version; publish a new version, or pass --force")
    assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in UPSERT_COLUMNS[2:])
    changed_rows = ", ".join(f"playbook_catalog.{c}" for c in UPSERT_COLUMNS[2:])
    excluded = ", ".join(f"EXCLUDED.{c}" for c in UPSERT_COLUMNS[2:])
    placeholders = ", ".join(f"${n}" for n in range(1, len(UPSERT_COLUMNS) + 1))
    statement = (
        f"INSERT INTO playbook_catalog ({', '.join(UPSERT_COLUMNS)}, disabled_at) "
        f"VALUES ({placeholders}, CASE WHEN $9::varchar = 'disabled' THEN now() END) "
        f"ON CONFLICT (playbook_id, version) DO UPDATE SET {assignments}, "
        f"disabled_at = CASE WHEN EXCLUDED.status = 'disabled' "
        f"THEN coalesce(playbook_catalog.disabled_at, now()) END "
        f"WHERE ({changed_rows}) IS DISTINCT FROM ({excluded})"
    )
    changed = 0
    async with conn.transaction():
        for entry in entries:
            values = entry.model_dump()
            values["labels"] = json.dumps(values["labels"])
            status = await conn.execute(statement, *(values[c] for c in UPSERT_COLUMNS))
            changed += int(status.rsplit(" ", 1)[-1])
        await refresh_latest(conn, {e.playbook_id for e in entries})
    return changed


async def refresh_latest(conn: asyncpg.Connection, playbook_ids: Iterable[str]) -> None:
    """Marks the highest semantic version of each playbook as its latest (and only that one)."""
    for playbook_id in playbook_ids:
        versions = [r["version"] for r in await conn.fetch(
            "SELECT version FROM playbook_catalog WHERE playbook_id = $1", playbook_id)]
        if not versions:
            continue
        latest = max(versions, key=version_key)
        # Two statements: the one-latest unique index is checked row by row.
        await conn.execute("UPDATE playbook_catalog SET is_latest_version = false "
                           "WHERE playbook_id = $1 AND is_latest_version AND version <> $2", playbook_id, latest)
        await conn.execute("UPDATE playbook_catalog SET is_latest_version = true, previous_version = "
                           "coalesce(previous_version, $3) WHERE playbook_id = $1 AND version = $2 "
                           "AND NOT is_latest_version", playbook_id, latest, _previous(versions, latest))


def _previous(versions: list[str], version: str) -> str | None:
    older = sorted((v for v in versions if version_key(v) < version_key(version)), key=version_key)
    return older[-1] if older else None


async def embed_stale(pool: asyncpg.Pool, embedder: Embedder, *, limit: int = 64,
                      only_searchable: bool = False, by: str = "worker") -> int:
    """Embeds up to `limit` rows whose embedding is missing or stale; returns how many."""
    searchable = "AND status = 'active' AND is_latest_version" if only_searchable else ""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT playbook_id, version, name, description, labels, content, embedding_input_hash "
            f"FROM playbook_catalog WHERE {STALE} {searchable} "
            f"ORDER BY playbook_id, version LIMIT $1", limit)
    if not rows:
        return 0
    vectors = await embedder.encode([
        playbook_text(r["name"], r["description"], json.loads(r["labels"]), r["content"]) for r in rows])
    async with pool.acquire() as conn:
        # The input hash guards against an edit made while we were embedding: then the row stays
        # stale and is announced again.
        await conn.executemany(
            "UPDATE playbook_catalog SET embedding = $3, embedded_input_hash = $4, embedding_model = $5, "
            "embedded_at = now() WHERE playbook_id = $1 AND version = $2 AND embedding_input_hash = $4",
            [(r["playbook_id"], r["version"], vector, r["embedding_input_hash"], embedder.model_name)
             for r, vector in zip(rows, vectors)])
    metrics.PLAYBOOKS_EMBEDDED.labels(by).inc(len(rows))
    return len(rows)


async def count_stale(conn: asyncpg.Connection) -> int:
    count = await conn.fetchval(f"SELECT count(*) FROM playbook_catalog WHERE {STALE}")
    metrics.PLAYBOOK_STALE_EMBEDDINGS.set(count)
    return count


@dataclass(frozen=True)
class SearchHit:
    playbook_id: str
    version: str
    name: str
    description: str
    confidence: float
    labels: dict[str, str]


async def search(pool: asyncpg.Pool, embedder: Embedder, query: str, *, labels: dict[str, str] | None = None,
                 min_confidence: float = 0.0, max_results: int = 10) -> list[SearchHit]:
    """The active, latest playbooks most similar to `query`, best first (ties by playbook_id)."""
    started = time.perf_counter()
    stale = await embed_stale(pool, embedder, limit=ON_THE_FLY_LIMIT, only_searchable=True, by="search")
    if stale == ON_THE_FLY_LIMIT:
        async with pool.acquire() as conn:
            left = await count_stale(conn)
        if left:
            log.warning("search_with_stale_embeddings", rows=left,
                        hint="the embedding worker is behind; these rows are ranked by an older text")
    [vector] = await embedder.encode([query])
    async with pool.acquire() as conn:
        hits = await rank(conn, vector, labels=labels, min_confidence=min_confidence, max_results=max_results)
    metrics.PLAYBOOK_SEARCH_DURATION.observe(time.perf_counter() - started)
    return hits


async def rank(conn: asyncpg.Connection, vector, *, labels: dict[str, str] | None = None,
               min_confidence: float = 0.0, max_results: int = 10) -> list[SearchHit]:
    """The nearest active, latest playbooks to `vector` (cosine), above `min_confidence`.

    With a label filter that leaves few rows, the rows are ranked exactly (the filter through
    the GIN index, then every distance); otherwise through the HNSW index, approximate, with
    the iterative scan that keeps going until enough rows pass the filters."""
    filter_json = json.dumps(labels or {})
    exact = bool(labels) and await conn.fetchval(
        f"SELECT count(*) <= {EXACT_SEARCH_MAX_ROWS} FROM (SELECT 1 FROM playbook_catalog "
        f"WHERE {SEARCHABLE} AND labels @> $1::jsonb LIMIT {EXACT_SEARCH_MAX_ROWS + 1}) AS matching",
        filter_json)
    # A materialized CTE cannot be read through the HNSW index: every distance is computed.
    candidates = (
        f"WITH candidates AS MATERIALIZED (SELECT * FROM playbook_catalog WHERE {SEARCHABLE} "
        f"AND labels @> $2::jsonb) SELECT playbook_id, version, name, description, labels, "
        f"embedding <=> $1 AS distance FROM candidates"
        if exact else
        f"SELECT playbook_id, version, name, description, labels, embedding <=> $1 AS distance "
        f"FROM playbook_catalog WHERE {SEARCHABLE} AND labels @> $2::jsonb"
    )
    rows = await conn.fetch(
        f"""
        SELECT playbook_id, version, name, description, labels,
               round(greatest(1 - distance, 0)::numeric, 6)::float8 AS confidence
        FROM ({candidates} ORDER BY distance LIMIT $3) AS nearest
        -- Cosine similarity clamped to [0, 1]: an unrelated playbook is 0, never negative.
        WHERE round(greatest(1 - distance, 0)::numeric, 6) >= $4
        ORDER BY confidence DESC, playbook_id
        """,
        vector, filter_json, max_results, Decimal(str(min_confidence)))
    return [SearchHit(r["playbook_id"], r["version"], r["name"], r["description"],
                      max(0.0, min(1.0, r["confidence"])), json.loads(r["labels"])) for r in rows]


RECORD_COLUMNS = ("playbook_id, version, name, description, owner, maintainer, content, content_hash, "
                  "labels, status, disabled_at, disabled_by, disabled_reason, is_latest_version, "
                  "previous_version, deprecation_notice, version_notes, change_summary, approved_by, "
                  "approved_at, expected_success_rate, expected_duration_seconds, actual_success_rate, "
                  "total_executions, successful_executions, created_at, updated_at, created_by, updated_by")


def playbook_json(row: asyncpg.Record) -> dict:
    out = {}
    for name, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = float(value)
        elif name == "labels":
            value = json.loads(value)
        out[name] = value
    return out


async def versions(conn: asyncpg.Connection, playbook_id: str) -> list[asyncpg.Record]:
    """Every version of a playbook, newest semantic version first."""
    rows = await conn.fetch(f"SELECT {RECORD_COLUMNS} FROM playbook_catalog WHERE playbook_id = $1", playbook_id)
    return sorted(rows, key=lambda r: version_key(r["version"]), reverse=True)


async def latest_active(conn: asyncpg.Connection, playbook_id: str) -> asyncpg.Record | None:
    active = [r for r in await versions(conn, playbook_id) if r["status"] == "active"]
    return active[0] if active else None


async def one_version(conn: asyncpg.Connection, playbook_id: str, version: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {RECORD_COLUMNS} FROM playbook_catalog "
                               "WHERE playbook_id = $1 AND version = $2", playbook_id, version)
