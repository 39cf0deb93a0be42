"""Keeps playbook embeddings fresh: rows whose embedding is missing or older than their text are
embedded by a worker (in the API process) and, at the last moment, by a search. The worker sweeps
at start, then whenever Postgres announces a stale row (LISTEN playbook_embeddings_stale, from the
trigger of schema/003), and every `sweep_interval_s` in case an announcement was missed
(notifications are lost while the listener is disconnected)."""

import asyncio
import contextlib
import json

import asyncpg
import structlog

from app.catalog.embedding import Embedder, EmbedderLoader, playbook_text
from app.catalog.playbook import SEARCHABLE_VERSION
from app.core import metrics
from app.core.db import connect

log = structlog.get_logger(__name__)

CHANNEL = "playbook_embeddings_stale"
STALE = "(embedding IS NULL OR embedded_input_hash IS DISTINCT FROM embedding_input_hash)"


async def embed_stale(
    pool: asyncpg.Pool, embedder: Embedder, *, limit: int = 64, only_searchable: bool = False, by: str = "worker"
) -> int:
    """Embeds up to `limit` rows whose embedding is missing or stale; returns how many."""
    searchable = f"AND {SEARCHABLE_VERSION}" if only_searchable else ""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT playbook_id, version, name, description, labels, content, embedding_input_hash "
            f"FROM playbook_catalog WHERE {STALE} {searchable} "
            f"ORDER BY playbook_id, version LIMIT $1",
            limit,
        )
    if not rows:
        return 0
    vectors = await embedder.encode(
        [playbook_text(r["name"], r["description"], json.loads(r["labels"]), r["content"]) for r in rows]
    )
    async with pool.acquire() as conn:
        # The input hash guards against an edit made while we were embedding: then the row stays
        # stale and is announced again.
        await conn.executemany(
            "UPDATE playbook_catalog SET embedding = $3, embedded_input_hash = $4, embedding_model = $5, "
            "embedded_at = now() WHERE playbook_id = $1 AND version = $2 AND embedding_input_hash = $4",
            [
                (r["playbook_id"], r["version"], vector, r["embedding_input_hash"], embedder.model_name)
                for r, vector in zip(rows, vectors, strict=True)
            ],
        )
    metrics.PLAYBOOKS_EMBEDDED.labels(by).inc(len(rows))
    return len(rows)


async def count_stale(conn: asyncpg.Connection) -> int:
    count = await conn.fetchval(f"SELECT count(*) FROM playbook_catalog WHERE {STALE}")
    metrics.PLAYBOOK_STALE_EMBEDDINGS.set(count)
    return count


async def keep_embeddings_fresh(
    database_url: str, pool: asyncpg.Pool, loader: EmbedderLoader, stop: asyncio.Event, sweep_interval_s: float = 30.0
) -> None:
    loading = asyncio.ensure_future(loader.get())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        loading.cancel()
        return
    if loading.exception() is not None:
        return  # the model failed to load: the loader logged why, and readiness reports it
    embedder = loading.result()
    announced = asyncio.Event()
    listener: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if listener is None or listener.is_closed():
                listener = await connect(database_url)
                await listener.add_listener(CHANNEL, lambda *_: announced.set())
            announced.clear()
            while await embed_stale(pool, embedder):
                pass
            async with pool.acquire() as conn:
                await count_stale(conn)
        except Exception as error:  # noqa: BLE001 - Postgres may be away; try again later
            log.warning("embedding_worker_failed", error=f"{type(error).__name__}: {error}")
            listener = None
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(announced.wait())]
        await asyncio.wait(waits, timeout=sweep_interval_s, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
    if listener is not None:
        with contextlib.suppress(Exception):
            await listener.close()
