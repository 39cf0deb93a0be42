"""Keeps playbook embeddings fresh: a sweep at start, then whenever Postgres announces a stale row
(LISTEN playbook_embeddings_stale, from the trigger of schema/003), and every `sweep_interval_s`
in case an announcement was missed (notifications are lost while the listener is disconnected)."""

import asyncio
import contextlib

import asyncpg
import structlog

from app.db import connect
from app.embedding import EmbedderLoader
from app.playbooks import count_stale, embed_stale

log = structlog.get_logger(__name__)

CHANNEL = "playbook_embeddings_stale"


async def keep_embeddings_fresh(database_url: str, pool: asyncpg.Pool, loader: EmbedderLoader,
                                stop: asyncio.Event, sweep_interval_s: float = 30.0) -> None:
    loading = asyncio.ensure_future(loader.get())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        loading.cancel()
        return
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
