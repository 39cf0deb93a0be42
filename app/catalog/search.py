"""Playbook search: hybrid ranking (vector + full text + labels), or labels alone.

Only active, latest versions are ever offered, and requested labels are hard filters in every mode
(a playbook's `*` matches any value: `app/catalog/labels.py`).

`mode=hybrid` (the default), for one query:
1. Postgres analyses the query (`playbook_search_expand`, text search configuration
   `playbook_search`) and the process scores the text and signals signals (2, 5) while the model
   encodes it, in parallel: one neural encode per query.
2. The text signal: BM25 of the query's lexemes over the catalog's `search_document`s, weights
   held in memory (`app/catalog/text_index.py`); its best rows passing the filters are candidates.
3. The vector signal: cosine similarity to the playbook's embedding, ranked by pgvector (exactly
   when the label filter leaves at most EXACT_SEARCH_MAX_ROWS rows, otherwise through the HNSW
   index with the iterative scan); its best rows are candidates too.
4. The candidates (at most CANDIDATES per signal, so every row of a catalog that small) are read
   in one statement, which also matches each against the query's tsquery (`search_document @@`):
   a row the tsquery does not match has no text signal (`why.text` null).
5. The signal signal (`app/catalog/signals.py`): the exact error strings, identifiers and signal
   names (phrases of the playbook's name and labels, its identifiers, its quoted or code spans) the
   query shares with the playbook, each weighed by its rarity in the catalog (1 for a term only
   one playbook has); `signals` is their sum, `why.signal_terms` the terms. Its best
   SIGNAL_CANDIDATES rows are candidates too.
6. Fusion, in absolute units so that a score means the same in any catalog and any candidate set:

       score = cosine + TEXT_WEIGHT * ln(1 + bm25 / idf_max) + SIGNAL_WEIGHT * ln(1 + signals)
               + LABEL_WEIGHT * (labels - 1)

   where idf_max is the weight of a term found in one playbook only, and `labels` is the label
   score (1 when every requested label matched exactly, less for `*` matches; the term is absent
   when no label was requested). Best first, ties by playbook_id.
7. confidence = sigmoid(CONFIDENCE_SLOPE * score + CONFIDENCE_OFFSET): the probability that the
   playbook is the right one, fitted on the tune half of the quality set (right first answers
   against queries no playbook fits); monotonic in the score, so best first is also most confident.

Without the model (still loading, or failed to load) the same ranking runs without the vector
signal, with its own confidence fit, and the answer says `degraded`.

`mode=labels` ranks the rows passing the filters by their label score alone (exact matches before
wildcard ones, then playbook_id): deterministic, no model, no query needed; the confidence is the
label score.

The constants were chosen on the tune half of ops/bench/data/incident_reports.yaml; the holdout
half reports them (README, ops/bench/playbook_search.py).
"""

import asyncio
import json
import math
import time
from typing import Literal, get_args

import asyncpg
import numpy as np
import structlog
from pydantic import BaseModel, Field

from app.catalog import labels as label_rules
from app.catalog.embedding import Embedder
from app.catalog.freshness import STALE, count_stale, embed_stale
from app.catalog.playbook import SEARCHABLE_VERSION
from app.catalog.text_index import TextIndexCache
from app.core import metrics

log = structlog.get_logger(__name__)

SearchMode = Literal["hybrid", "labels"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)

MAX_RESULTS_LIMIT = 100
DEFAULT_MAX_RESULTS = 10
MAX_QUERY_LENGTH = 2000

# Fusion (tune half; ops/bench/playbook_search.py prints each signal alone and fused).
TEXT_WEIGHT = 1.0
# Flat between 0.5 and 0.75 on the tune half (recall@1 0.884 -> 0.899 there); above 0.75 the
# shared phrases of neighbouring playbooks start to outweigh the meaning.
SIGNAL_WEIGHT = 0.5
LABEL_WEIGHT = 0.1
# confidence = sigmoid(slope * score + offset), fitted by logistic regression on the tune half:
# right first answers (1) against the best answer to queries no playbook fits (0).
CONFIDENCE = {"hybrid": (6.438, -9.347), "degraded": (7.027, -8.176)}
# Between the lowest confidence of a right first answer (0.83 tune, 0.86 holdout) and the highest
# of an unrelated query (0.17 tune, 0.25 holdout); without the model an unrelated query reaches
# 0.53 (holdout), so degraded answers are less sure to be relevant.
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MIN_CONFIDENCE_BY_MODE = {"hybrid": DEFAULT_MIN_CONFIDENCE, "labels": 0.0}

# Candidates per signal: the fusion sees every row of a catalog this small.
CANDIDATES = 50
# The signals signal's own candidates: its words count in BM25 too, so its best rows are nearly
# always among the text's already; a few more bound what each search reads.
SIGNAL_CANDIDATES = 10
# Rows embedded on the fly by one search at most; more is the worker's job (and logged).
ON_THE_FLY_LIMIT = 32
SEARCHABLE = f"{SEARCHABLE_VERSION} AND embedding IS NOT NULL"
# A label filter leaving at most this many rows is ranked exactly, not through the HNSW index.
EXACT_SEARCH_MAX_ROWS = 2000

_QUERY_TERMS = f"""
SELECT (SELECT generation FROM playbook_search_generation) AS generation,
       ARRAY(SELECT lexeme FROM unnest(to_tsvector('playbook_search', playbook_search_expand($1)))) AS lexemes,
       -- In the order of the partial index of stale rows, so that the planner reads that index
       -- (it cannot estimate how few rows are stale).
       (SELECT true FROM playbook_catalog WHERE {STALE} AND {SEARCHABLE_VERSION}
        ORDER BY playbook_id, version LIMIT 1) AS stale
"""


class Why(BaseModel):
    """The signals that ranked a playbook; null where a signal did not apply."""

    vector: float | None = Field(description="cosine similarity of the query's and the playbook's embeddings")
    text: float | None = Field(description="BM25 of the query's terms in the playbook's text (null: no term matched)")
    matched_terms: list[str] = Field(description="the query's terms (lexemes) found in the playbook's text")
    signals: float | None = Field(
        description="sum of the rarity weights of the exact error strings, identifiers and signal names the query "
        "shares with the playbook (null: none)"
    )
    signal_terms: list[str] = Field(
        description="those strings, normalised (lower case, CamelCase split, longest matches only)"
    )
    labels: float | None = Field(
        description="label score: mean over the requested labels of 1 (exact match) or 0.5 (the playbook's `*`)"
    )
    score: float = Field(description="the fused score the ranking is ordered by")


class SearchHit(BaseModel):
    """One ranked playbook, as the API returns it."""

    playbook_id: str
    version: str
    name: str
    description: str
    confidence: float = Field(ge=0, le=1)
    labels: dict[str, str]
    why: Why


def default_min_confidence(mode: str) -> float:
    return DEFAULT_MIN_CONFIDENCE_BY_MODE[mode]


def is_degraded(mode: str, embedder: Embedder | None) -> bool:
    """A hybrid search without the model ranks by text and labels alone."""
    return mode == "hybrid" and embedder is None


async def search(
    pool: asyncpg.Pool,
    embedder: Embedder | None,
    query: str,
    *,
    labels: dict[str, str] | None = None,
    mode: str = "hybrid",
    min_confidence: float = 0.0,
    max_results: int = DEFAULT_MAX_RESULTS,
    text_index: TextIndexCache | None = None,
    read_pool: asyncpg.Pool | None = None,
) -> list[SearchHit]:
    """The active, latest playbooks for `query`, best first. `embedder` None: degraded (no vector
    signal). Callers that take a threshold from users default it by mode (default_min_confidence).
    `text_index`: the process's cache of term statistics (a fresh one is loaded when not given).
    `read_pool`: a read replica to rank on; a search there leaves stale rows to the primary's
    embedding worker (a replica cannot write, and its copy of a row may be older than the primary's)."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}")
    started = time.perf_counter()
    labels = labels or {}
    if mode == "labels":
        hits = await _rank_by_labels(read_pool or pool, labels, min_confidence, max_results)
    else:
        hits = await _rank_hybrid(
            pool, embedder, query, labels, min_confidence, max_results, text_index or TextIndexCache(), read_pool
        )
    metrics.PLAYBOOK_SEARCH_DURATION.observe(time.perf_counter() - started)
    metrics.PLAYBOOK_SEARCHES.labels(mode, str(is_degraded(mode, embedder)).lower()).inc()
    return hits


async def _rank_by_labels(
    pool: asyncpg.Pool, labels: dict[str, str], min_confidence: float, max_results: int
) -> list[SearchHit]:
    params: list = [max_results]
    condition = label_rules.sql_filter(labels, params)
    score = label_rules.sql_score(labels, params)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT playbook_id, version, name, description, labels, {score} AS label_score "
            f"FROM playbook_catalog WHERE {SEARCHABLE_VERSION} AND {condition} "
            f"ORDER BY label_score DESC NULLS LAST, playbook_id LIMIT $1",
            *params,
        )
    hits = []
    for r in rows:
        label_score = _rounded(r["label_score"])
        confidence = label_score or 0.0
        if confidence >= min_confidence:
            why = Why(
                vector=None,
                text=None,
                matched_terms=[],
                signals=None,
                signal_terms=[],
                labels=label_score,
                score=confidence,
            )
            hits.append(_hit(r, confidence, why))
    return hits


async def _rank_hybrid(
    pool: asyncpg.Pool,
    embedder: Embedder | None,
    query: str,
    labels: dict[str, str],
    min_confidence: float,
    max_results: int,
    text_index: TextIndexCache,
    read_pool: asyncpg.Pool | None = None,
) -> list[SearchHit]:
    reading = read_pool or pool
    # While the model encodes in its thread (ONNX Runtime lets go of the GIL), Postgres analyses
    # the text and this process scores it: the encode is the longest of the three.
    encoding = asyncio.ensure_future(embedder.encode([query])) if embedder is not None else None
    try:
        generation, lexemes, stale = await _query_terms(reading, query)
        index = await text_index.current(reading, generation)
        text = index.score(lexemes)
        found = index.signals.score(query)
    finally:
        vector = (await encoding)[0] if encoding is not None else None
    if stale and embedder is not None and read_pool is None:
        await _embed_stale_rows(pool, embedder)
    limit = max(CANDIDATES, max_results)
    mask = index.mask(labels)
    text_ids = [index.playbook_ids[n] for n in _best(text.bm25, mask, limit)]
    text_ids += [index.playbook_ids[n] for n in _best(found.score, mask, SIGNAL_CANDIDATES)]
    async with reading.acquire() as conn:
        rows = await _candidates(conn, vector, text_ids, query, labels, limit)

    slope, offset = CONFIDENCE["hybrid" if vector is not None else "degraded"]
    scored = []
    for r in rows:
        row = index.row_of.get(r["playbook_id"])
        bm25 = float(text.bm25[row]) if r["text_match"] and row is not None else None
        signal = float(found.score[row]) if row is not None and found.score[row] > 0 else None
        score = _fused(r["cosine"], bm25, signal, r["label_score"], index.idf_max)
        scored.append((score, r["playbook_id"], r, row, bm25, signal))
    scored.sort(key=lambda item: (-item[0], item[1]))
    hits = []
    for score, _, r, row, bm25, signal in scored[:max_results]:
        confidence = round(1 / (1 + math.exp(-(slope * score + offset))), 6)
        if confidence < min_confidence:
            break  # confidence falls with the score
        why = Why(
            vector=_rounded(r["cosine"]),
            text=_rounded(bm25),
            matched_terms=text.matched_terms(row) if bm25 is not None and row is not None else [],
            signals=_rounded(signal),
            signal_terms=found.matched_terms(row) if signal is not None and row is not None else [],
            labels=_rounded(r["label_score"]),
            score=round(score, 6),
        )
        hits.append(_hit(r, confidence, why))
    return hits


def _best(scores: np.ndarray, mask: np.ndarray, limit: int) -> np.ndarray:
    """The rows passing the filters with a positive score, at most `limit`, best first."""
    passing = np.flatnonzero(mask & (scores > 0))
    if len(passing) > limit:
        passing = passing[np.argpartition(-scores[passing], limit)[:limit]]
    return passing[np.argsort(-scores[passing], kind="stable")]


def _fused(
    cosine: float | None, bm25: float | None, signal: float | None, label_score: float | None, idf_max: float
) -> float:
    score = 0.0
    if cosine is not None:
        score += cosine
    if bm25 is not None:
        score += TEXT_WEIGHT * math.log1p(bm25 / idf_max)
    if signal is not None:
        score += SIGNAL_WEIGHT * math.log1p(signal)
    if label_score is not None:
        score += LABEL_WEIGHT * (label_score - 1)
    return score


async def rank(
    conn: asyncpg.Connection, vector, *, labels: dict[str, str] | None = None, max_results: int = DEFAULT_MAX_RESULTS
) -> list[SearchHit]:
    """The vector signal alone: the nearest active, latest playbooks to `vector` passing the label
    filters, read as the hybrid search reads its vector candidates; confidence is the cosine
    similarity clamped to [0, 1]."""
    rows = await _candidates(conn, vector, [], "", labels or {}, max_results)
    hits = [
        _hit(
            r,
            max(0.0, r["cosine"]),
            Why(
                vector=_rounded(r["cosine"]),
                text=None,
                matched_terms=[],
                signals=None,
                signal_terms=[],
                labels=None,
                score=round(r["cosine"], 6),
            ),
        )
        for r in rows
    ]
    return sorted(hits, key=lambda hit: (-hit.why.score, hit.playbook_id))


async def _query_terms(pool: asyncpg.Pool, query: str) -> tuple[int, list[str], bool]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_QUERY_TERMS, query)
    return row["generation"], list(row["lexemes"]), row["stale"]


async def _embed_stale_rows(pool: asyncpg.Pool, embedder: Embedder) -> None:
    """Rows inserted or edited since their embedding was computed are embedded before ranking."""
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


async def _candidates(
    conn: asyncpg.Connection, vector, text_ids: list[str], query: str, labels: dict[str, str], limit: int
) -> list[asyncpg.Record]:
    """The vector signal's best rows and the text signal's, with the cosine, the tsquery match and
    the label score of each."""
    params: list = [query, text_ids, limit, vector]
    condition = label_rules.sql_filter(labels, params)
    label_score = label_rules.sql_score(labels, params)
    passing = f"SELECT playbook_id, embedding FROM playbook_catalog WHERE {SEARCHABLE} AND {condition}"
    if vector is None:
        ctes = "vector_ids AS (SELECT NULL::varchar AS playbook_id WHERE false LIMIT $3)"
    elif labels and await _few_rows_pass(conn, labels):
        # A materialized CTE cannot be read through the HNSW index: every distance is computed.
        ctes = (
            f"passing AS MATERIALIZED ({passing}), "
            f"vector_ids AS (SELECT playbook_id FROM passing ORDER BY embedding <=> $4 LIMIT $3)"
        )
    else:
        ctes = f"vector_ids AS ({passing} ORDER BY embedding <=> $4 LIMIT $3)"
    # A NULL vector (degraded) gives NULL cosines.
    return await conn.fetch(
        f"""
        WITH {ctes},
             ids AS (SELECT playbook_id FROM vector_ids UNION SELECT unnest($2::varchar[])),
             query AS MATERIALIZED (SELECT playbook_search_query($1) AS tsquery)
        SELECT playbook_id, version, name, description, labels,
               (1 - (embedding <=> $4))::float8 AS cosine,
               search_document @@ query.tsquery AS text_match,
               {label_score} AS label_score
        FROM ids JOIN playbook_catalog USING (playbook_id) CROSS JOIN query
        WHERE {SEARCHABLE_VERSION} AND {condition}
        """,
        *params,
    )


async def _few_rows_pass(conn: asyncpg.Connection, labels: dict[str, str]) -> bool:
    params: list = []
    condition = label_rules.sql_filter(labels, params)
    return await conn.fetchval(
        f"SELECT count(*) <= {EXACT_SEARCH_MAX_ROWS} FROM (SELECT 1 FROM playbook_catalog "
        f"WHERE {SEARCHABLE} AND {condition} LIMIT {EXACT_SEARCH_MAX_ROWS + 1}) AS passing",
        *params,
    )


def _hit(row: asyncpg.Record, confidence: float, why: Why) -> SearchHit:
    return SearchHit(
        playbook_id=row["playbook_id"],
        version=row["version"],
        name=row["name"],
        description=row["description"],
        confidence=max(0.0, min(1.0, confidence)),
        labels=json.loads(row["labels"]),
        why=why,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
