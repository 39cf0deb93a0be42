"""The Starlette application: routes, middleware, error handlers and the resources they share."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api import audit, health, playbooks
from app.api.health import health_routes
from app.api.middleware import BearerAuth, RequestMetrics
from app.api.openapi import openapi_document
from app.api.problems import EXCEPTION_HANDLERS
from app.api.resources import Resources
from app.audit.record import record_json_schema
from app.audit.store import AuditStore
from app.audit.writer import AuditWriter
from app.catalog.embedding import EmbedderLoader, shared_loader
from app.catalog.freshness import keep_embeddings_fresh
from app.catalog.store import create_pool
from app.core.db import create_engine
from app.core.migrations import pending_migrations
from app.core.settings import Settings
from app.producer import AuditProducer
from app.ui import viewer_mount

log = structlog.get_logger(__name__)

OPERATIONS = [*health.operations, *audit.operations, *playbooks.operations]


@cache
def api_document(auth: bool) -> dict[str, Any]:
    return openapi_document(OPERATIONS, auth=auth, extra_schemas={"AuditEventRecord": record_json_schema()})


def create_app(settings: Settings) -> Starlette:
    tokens = settings.api_token_set()
    loader = shared_loader(settings.embedding_backend, settings.model_cache_dir)
    app = Starlette(
        routes=[
            *health_routes({"postgres": check_postgres, "redis": check_redis, "embedding_model": check_model}),
            Route("/openapi.json", openapi),
            *audit.routes,
            *playbooks.routes,
            viewer_mount(settings, tokens),  # the audit viewer at /ui/
        ],
        middleware=[Middleware(RequestMetrics), Middleware(BearerAuth, tokens=tokens)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lambda app: lifespan(app, settings, loader),
    )
    app.state.auth = bool(tokens)
    if not tokens:
        log.warning("api_auth_disabled", hint="set DATASTORAGE_API_TOKENS or DATASTORAGE_API_TOKENS_FILE")
    return app


@contextlib.asynccontextmanager
async def lifespan(app: Starlette, settings: Settings, loader: EmbedderLoader) -> AsyncIterator[None]:
    database_url = settings.require_database_url()
    engine = create_engine(database_url, pool_size=settings.db_pool_size, json_deserializer=orjson.loads)
    client = aioredis.from_url(settings.require_redis_url(), socket_timeout=5, socket_connect_timeout=2)
    pool = await create_pool(database_url, min_size=0, max_size=settings.db_pool_size)
    writer = AuditWriter(AuditProducer(client, settings.stream), AuditStore(pool))
    app.state.resources = Resources(settings, engine, pool, client, writer, loader)
    stop_worker = asyncio.Event()
    worker = asyncio.create_task(
        keep_embeddings_fresh(database_url, pool, loader, stop_worker, settings.embedding_sweep_interval_s)
    )
    try:
        yield
    finally:
        stop_worker.set()
        await asyncio.wait([worker], timeout=10)
        worker.cancel()
        await pool.close()
        await client.aclose()
        await engine.dispose()


async def check_postgres(resources: Resources) -> str | None:
    async with resources.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        pending = await pending_migrations(raw.driver_connection, resources.settings.schema_dir)
        await conn.execute(text("SELECT 1"))
    return f"schema not migrated: {len(pending)} migration(s) pending" if pending else None


async def check_redis(resources: Resources) -> str | None:
    await resources.redis.ping()
    return None


async def check_model(resources: Resources) -> str | None:
    return None if resources.embedder_loader.ready else "loading"


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(api_document(request.app.state.auth))
