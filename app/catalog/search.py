"""Playbook search: the active, latest versions ranked by cosine similarity to the query's embedding.

Label filters are exact matches (`labels @> {...}`, GIN). A filter that leaves few rows is ranked
exactly; otherwise the HNSW index ranks, with pgvector 0.8's iterative scan
(`hnsw.iterative_scan = strict_order`, set on every connection of the pool, `app/catalog/store.py`)
so that it keeps scanning until enough rows pass the filters instead of returning too few.
A row whose embedding is missing or older than its text is embedded on the fly before the search
ranks, so no active playbook is ever silently left out.
"""

import json
import time
from decimal import Decimal

import asyncpg
import structlog
from pydantic import BaseModel, Field

from app.catalog.embedding import Embedder
from app.catalog.freshness import count_stale, embed_stale
from app.catalog.playbook import SEARCHABLE_VERSION
from app.core import metrics

log = structlog.get_logger(__name__)

MAX_RESULTS_LIMIT = 100
DEFAULT_MAX_RESULTS = 10
MAX_QUERY_LENGTH = 2000
# Cosine similarity below which a playbook is not offered (ops/bench/playbook_search.py).
DEFAULT_MIN_CONFIDENCE = 0.3
# Rows embedded on the fly by one search at most; more is the worker's job (and logged).
ON_THE_FLY_LIMIT = 32
SEARCHABLE = f"{SEARCHABLE_VERSION} AND embedding IS NOT NULL"
# A label filter leaving at most this many rows is ranked exactly, not through the HNSW index.
EXACT_SEARCH_MAX_ROWS = 2000


class SearchHit(BaseModel):
    """One ranked playbook, as the API returns it."""

    playbook_id: str
    version: str
    name: str
    description: str
    confidence: float = Field(ge=0, le=1)
    labels: dict[str, str]


async def search(
    pool: asyncpg.Pool,
    embedder: Embedder,
    query: str,
    *,
    labels: dict[str, str] | None = None,
    min_confidence: float = 0.0,
    max_results: int = 10,
    read_pool: asyncpg.Pool | None = None,
) -> list[SearchHit]:
    """The active, latest playbooks most similar to `query`, best first (ties by playbook_id).
    `read_pool`: a read replica to rank on; a search there leaves stale rows to the primary's
    embedding worker (a replica cannot write, and its copy of a row may be older than the primary's)."""
    started = time.perf_counter()
    stale = 0
    if read_pool is None:
        stale = await embed_stale(pool, embedder, limit=ON_THE_FLY_LIMIT, only_searchable=True, by="search")
    if stale == ON_THE_FLY_LIMIT:
        async with pool.acquire() as conn:
            left = await count_stale(conn)
        if left:
            log.warning(
                "search_with_stale_embeddings",
                rows=left,
                hint="the embedding worker is behind; these rows are ranked by an older text",
            )
    [vector] = await embedder.encode([query])
    async with (read_pool or pool).acquire() as conn:
        hits = await rank(conn, vector, labels=labels, min_confidence=min_confidence, max_results=max_results)
    metrics.PLAYBOOK_SEARCH_DURATION.observe(time.perf_counter() - started)
    return hits


async def rank(
    conn: asyncpg.Connection,
    vector,
    *,
    labels: dict[str, str] | None = None,
    min_confidence: float = 0.0,
    max_results: int = 10,
) -> list[SearchHit]:
    """The nearest active, latest playbooks to `vector` (cosine), above `min_confidence`.

    With a label filter that leaves few rows, the rows are ranked exactly (the filter through
    the GIN index, then every distance); otherwise through the HNSW index, approximate, with
    the iterative scan that keeps going until enough rows pass the filters."""
    filter_json = json.dumps(labels or {})
    exact = bool(labels) and await conn.fetchval(
        f"SELECT count(*) <= {EXACT_SEARCH_MAX_ROWS} FROM (SELECT 1 FROM playbook_catalog "
        f"WHERE {SEARCHABLE} AND labels @> $1::jsonb LIMIT {EXACT_SEARCH_MAX_ROWS + 1}) AS matching",
        filter_json,
    )
    # A materialized CTE cannot be read through the HNSW index: every distance is computed.
    candidates = (
        f"WITH candidates AS MATERIALIZED (SELECT * FROM playbook_catalog WHERE {SEARCHABLE} "
        f"AND labels @> $2::jsonb) SELECT playbook_id, version, name, description, labels, "
        f"embedding <=> $1 AS distance FROM candidates"
        if exact
        else f"SELECT playbook_id, version, name, description, labels, embedding <=> $1 AS distance "
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
        vector,
        filter_json,
        max_results,
        Decimal(str(min_confidence)),
    )
    return [
        SearchHit(
            playbook_id=r["playbook_id"],
            version=r["version"],
            name=r["name"],
            description=r["description"],
            confidence=max(0.0, min(1.0, r["confidence"])),
            labels=json.loads(r["labels"]),
        )
        for r in rows
    ]
