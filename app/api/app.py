"""The Starlette application: routes, middleware, error handlers and the resources they share."""

import asyncio
import contextlib

import orjson
import redis.asyncio as aioredis
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api import audit_routes, health, playbook_routes
from app.api.middleware import BearerAuth, RequestMetrics
from app.api.openapi import openapi_document
from app.api.problems import EXCEPTION_HANDLERS
from app.audit_store import AuditStore
from app.db import create_engine
from app.embedding import shared_loader
from app.embedding_worker import keep_embeddings_fresh
from app.playbooks import create_pool
from app.producer import AuditProducer
from app.settings import Settings

log = structlog.get_logger(__name__)


def create_app(settings: Settings) -> Starlette:
    tokens = settings.api_token_set()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state = app.state
        state.settings = settings
        state.engine = create_engine(
            settings.database_url, pool_size=settings.db_pool_size,
            json_deserializer=orjson.loads,
        )
        state.redis = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        state.producer = AuditProducer(state.redis, settings.stream)
        # asyncpg for the catalog (vectors) and for audit writes when Redis is down; SQLAlchemy
        # (the engine above) for audit queries built from filters.
        state.pool = await create_pool(settings.database_url, min_size=0, max_size=settings.db_pool_size)
        state.audit_store = AuditStore(state.pool)
        state.embedder_loader = shared_loader(settings.embedding_backend, settings.model_cache_dir)
        state.extra_readiness_checks = {"embedding_model": model_ready}
        stop_worker = asyncio.Event()
        worker = asyncio.create_task(keep_embeddings_fresh(
            settings.database_url, state.pool, state.embedder_loader, stop_worker,
            settings.embedding_sweep_interval_s))
        if not tokens:
            log.warning("api_auth_disabled", hint="set DATASTORAGE_API_TOKENS or DATASTORAGE_API_TOKENS_FILE")
        try:
            yield
        finally:
            stop_worker.set()
            await asyncio.wait([worker], timeout=10)
            worker.cancel()
            await state.pool.close()
            await state.redis.aclose()
            await state.engine.dispose()

    async def model_ready(request: Request) -> str | None:
        return None if request.app.state.embedder_loader.ready else "loading"

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(auth=bool(tokens)))

    return Starlette(
        routes=[*health.routes, Route("/openapi.json", openapi), *audit_routes.routes,
                *playbook_routes.routes],
        middleware=[Middleware(RequestMetrics), Middleware(BearerAuth, tokens=tokens)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
