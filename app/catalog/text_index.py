"""The text signal's term statistics: BM25 weights of the searchable playbooks, held in memory.

Postgres does the text analysis: `search_document` (schema/004) is each playbook's weighted
tsvector (name A, description B, labels C, content D) and a query's lexemes come from the same
configuration and expansion. What Postgres has no operator for is BM25, a rank that weighs a term
by how rare it is in the catalog; ranking the whole catalog by it in SQL costs 9-29 ms at 10,000
rows (ops/bench/playbook_search.py), so the weights are precomputed here, per (playbook, lexeme):

    tf  = sum over the lexeme's positions of the field weight (A 3, B 2, C 1, D 1)
    w   = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / average length))
    idf = ln(1 + (N - df + 0.5) / (df + 0.5))

and a query's BM25 is the sum of the weights of its distinct lexemes (about 0.1 ms at 10,000
rows). The index is reloaded whenever `playbook_search_generation` moved, which the catalog's
trigger does in the same transaction as any change to what is searched. The same reload builds
the signal index of the same rows (`app/catalog/signals.py`).
"""

import asyncio
import math
from dataclasses import dataclass

import asyncpg
import numpy as np
import orjson
import structlog

from app.catalog import signals
from app.catalog.labels import filter_mask
from app.catalog.playbook import SEARCHABLE_VERSION

log = structlog.get_logger(__name__)

# BM25 constants, chosen on the tune half of ops/bench/data/incident_reports.yaml (flat around
# these values: k1 1.2-3, b 0.5-0.9 and other field weights move recall@1 by at most 0.01).
K1 = 2.0
B = 0.75
FIELD_WEIGHTS = {"A": 3.0, "B": 2.0, "C": 1.0, "D": 1.0}  # name, description, labels, content

_LOAD = f"""
SELECT (SELECT generation FROM playbook_search_generation) AS generation,
       coalesce(array_agg(playbook_id ORDER BY playbook_id), '{{}}') AS playbook_ids,
       coalesce(array_agg(labels::text ORDER BY playbook_id), '{{}}') AS labels,
       coalesce(array_agg(terms ORDER BY playbook_id), '{{}}') AS terms,
       coalesce(array_agg(name ORDER BY playbook_id), '{{}}') AS names,
       coalesce(array_agg(description ORDER BY playbook_id), '{{}}') AS descriptions,
       coalesce(array_agg(content ORDER BY playbook_id), '{{}}') AS contents
FROM (
    SELECT playbook_id, labels, name, description, content,
           (SELECT coalesce(string_agg(
                u.lexeme || ' ' || (SELECT coalesce(sum(CASE w WHEN 'A' THEN $1::float8 WHEN 'B' THEN $2::float8
                                                              WHEN 'C' THEN $3::float8 ELSE $4::float8 END), $4::float8)
                                    FROM unnest(u.weights) AS w),
                E'\\n'), '')
            FROM unnest(search_document) AS u) AS terms
    FROM playbook_catalog WHERE {SEARCHABLE_VERSION}
) AS searchable
"""


@dataclass(frozen=True)
class TextScores:
    """BM25 of every indexed row for one query, and which of the query's lexemes each row has."""

    bm25: np.ndarray
    lexemes: list[str]
    postings: list[tuple[np.ndarray, np.ndarray]]

    def matched_terms(self, row: int) -> list[str]:
        return [lexeme for lexeme, (rows, _) in zip(self.lexemes, self.postings, strict=True) if row in rows]


class TextIndex:
    """BM25 weights of one catalog state: row n is `playbook_ids[n]`, the latest active version."""

    def __init__(
        self,
        generation: int,
        playbook_ids: list[str],
        labels: list[dict],
        terms: list[dict[str, float]],
        texts: list[tuple[str, str, str]] | None = None,
    ):
        """`texts`: each row's (name, description, content), for the signal index (none: no
        signal terms)."""
        self.generation = generation
        self.playbook_ids = playbook_ids
        self.row_of = {playbook_id: n for n, playbook_id in enumerate(playbook_ids)}
        rows = len(playbook_ids)
        self.label_values: dict[str, np.ndarray] = {}
        for n, row_labels in enumerate(labels):
            for name, value in row_labels.items():
                self.label_values.setdefault(name, np.full(rows, None, dtype=object))[n] = value
        lengths = np.array([sum(t.values()) for t in terms], dtype=np.float64)
        average = float(lengths.mean()) if rows else 1.0
        gathered: dict[str, tuple[list[int], list[float]]] = {}
        for n, row_terms in enumerate(terms):
            for lexeme, tf in row_terms.items():
                postings = gathered.setdefault(lexeme, ([], []))
                postings[0].append(n)
                postings[1].append(tf)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for lexeme, (row_list, tf_list) in gathered.items():
            df = len(row_list)
            idf = math.log(1 + (rows - df + 0.5) / (df + 0.5))
            at = np.array(row_list, dtype=np.int64)
            frequency = np.array(tf_list, dtype=np.float64)
            norm = K1 * (1 - B + B * lengths[at] / average)
            self.postings[lexeme] = (at, idf * frequency * (K1 + 1) / (frequency + norm))
        # The weight of a term found in one playbook only: the unit in which text evidence is
        # measured (confidence), so that it does not grow with the catalog's size.
        self.idf_max = math.log(1 + (rows - 0.5) / 1.5) if rows else 1.0
        self.signals = signals.SignalIndex(
            signals.playbook_fields(name, description, row_labels, content)
            for (name, description, content), row_labels in zip(texts or [("", "", "")] * rows, labels, strict=True)
        )

    @classmethod
    async def load(cls, conn: asyncpg.Connection) -> "TextIndex":
        row = await conn.fetchrow(_LOAD, *FIELD_WEIGHTS.values())
        terms = []
        for text in row["terms"]:
            row_terms: dict[str, float] = {}
            for line in text.split("\n") if text else ():
                lexeme, _, tf = line.rpartition(" ")
                row_terms[lexeme] = float(tf)
            terms.append(row_terms)
        texts = list(zip(row["names"], row["descriptions"], row["contents"], strict=True))
        labels = [orjson.loads(t) for t in row["labels"]]
        # Reading the signal terms of every text is pure Python (about 1 s per 1,000 long playbooks,
        # ops/bench/playbook_search.py): off the event loop, which keeps answering meanwhile.
        return await asyncio.to_thread(cls, row["generation"], list(row["playbook_ids"]), labels, terms, texts)

    def score(self, lexemes: list[str]) -> TextScores:
        bm25 = np.zeros(len(self.playbook_ids))
        found, postings = [], []
        for lexeme in dict.fromkeys(lexemes):
            posting = self.postings.get(lexeme)
            if posting is not None:
                bm25[posting[0]] += posting[1]
                found.append(lexeme)
                postings.append(posting)
        return TextScores(bm25, found, postings)

    def mask(self, requested: dict[str, str]) -> np.ndarray:
        return filter_mask(self.label_values, len(self.playbook_ids), requested)


class TextIndexCache:
    """The current TextIndex of one database, reloaded when the catalog's generation moves;
    concurrent searches share one reload."""

    def __init__(self) -> None:
        self._index: TextIndex | None = None
        self._lock = asyncio.Lock()

    async def current(self, pool: asyncpg.Pool, generation: int) -> TextIndex:
        index = self._index
        if index is not None and index.generation >= generation:
            return index
        async with self._lock:
            if self._index is None or self._index.generation < generation:
                async with pool.acquire() as conn:
                    self._index = await TextIndex.load(conn)
                log.info("text_index_loaded", playbooks=len(self._index.playbook_ids), generation=generation)
            return self._index
