"""The Starlette application: routes, middleware, error handlers and the resources they share."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api import audit, health, integrity, legal_holds, playbooks
from app.api.access import PUBLIC, Requirement, RouteAccess
from app.api.auth import Authenticator, Authorization, authenticator_for
from app.api.denials import DeniedRequests
from app.api.health import PodReadiness, health_routes
from app.api.middleware import LongUrls, RequestContext, RequestMetrics, UnexpectedErrors
from app.api.openapi import openapi_document
from app.api.problems import EXCEPTION_HANDLERS
from app.api.ratelimit import RateLimit, token_buckets
from app.api.resources import Resources
from app.api.tokens import load_grants
from app.audit import retention
from app.audit.integrity.keys import Signer
from app.audit.record import record_json_schema
from app.audit.store import AuditStore
from app.audit.writer import AuditWriter, configured_producer
from app.catalog.embedding import EmbedderLoader, shared_loader
from app.catalog.freshness import keep_embeddings_fresh
from app.catalog.store import create_pool
from app.catalog.text_index import TextIndexCache
from app.core import metrics
from app.core.db import create_engine
from app.core.migrations import pending_migrations
from app.core.read_replicas import ReadRouter, ReadSource
from app.core.redis_client import create_redis
from app.core.settings import Settings
from app.core.upkeep import keep_gauges_fresh
from app.ui import viewer_mount

log = structlog.get_logger(__name__)

OPERATIONS = [
    *health.operations,
    *audit.operations,
    *integrity.operations,
    *legal_holds.operations,
    *playbooks.operations,
]
# Routes outside the OpenAPI document declare their scope here (`METHOD /template`, `*` for any
# method, a trailing `*` for every route below a path); the others on their Operation.
# The viewer (/ui) is public here: a browser sends its login cookie, not a bearer token, and the
# viewer checks the cookie's token and its audit:read scope itself (app/ui/auth.py).
ROUTE_ACCESS: dict[str, Requirement] = {"GET /openapi.json": PUBLIC, "* /ui*": PUBLIC}


@cache
def api_document(auth: bool) -> dict[str, Any]:
    return openapi_document(OPERATIONS, auth=auth, extra_schemas={"AuditEventRecord": record_json_schema()})


def create_app(settings: Settings, signer: Signer | None = None) -> Starlette:
    """The API; `signer` seals what the write-through path stores (unsealed without one)."""
    authenticator = authenticator_for(settings)
    denials = DeniedRequests(settings.audit_denied_threshold, settings.audit_denied_window_s)
    loader = shared_loader(settings.embedding_backend, settings.model_cache_dir)
    readiness = PodReadiness(
        {"postgres": check_postgres, "redis": check_redis, "embedding_model": check_model}, schema_check=check_schema
    )
    routes = [
        *health_routes(readiness),
        Route("/openapi.json", openapi),
        # Before the audit routes: /audit-events/export is not an event id.
        *integrity.routes,
        *audit.routes,
        *legal_holds.routes,
        *playbooks.routes,
        # The audit viewer at /ui/: it checks the same static tokens itself, from its login cookie.
        viewer_mount(settings, load_grants(settings.api_tokens, settings.api_tokens_file)),
    ]
    access = RouteAccess.of(routes, OPERATIONS, ROUTE_ACCESS)
    app = Starlette(
        routes=routes,
        # Outermost first: metrics see every answer, auth says who asks, the limit counts per identity.
        middleware=[
            Middleware(RequestContext),
            Middleware(RequestMetrics),
            Middleware(UnexpectedErrors),
            Middleware(LongUrls),
            Middleware(Authorization, access=access, authenticator=authenticator, denials=denials),
            Middleware(RateLimit, buckets=token_buckets(settings.rate_limit_per_s, settings.rate_limit_burst)),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lambda app: lifespan(app, settings, loader, signer, authenticator, denials),
    )
    app.state.auth = authenticator is not None
    app.state.readiness = readiness  # the server drains it on SIGTERM (app/api/server.py)
    if authenticator is None:
        log.warning("api_auth_disabled", hint="set DATASTORAGE_API_TOKENS or DATASTORAGE_API_TOKENS_FILE")
    return app


@contextlib.asynccontextmanager
async def lifespan(
    app: Starlette,
    settings: Settings,
    loader: EmbedderLoader,
    signer: Signer | None,
    authenticator: Authenticator | None,
    denials: DeniedRequests,
) -> AsyncIterator[None]:
    # Nothing here connects: a pod starts (and is ready) while Postgres or Redis is down. Every wait
    # for a connection is bounded (db_pool_timeout_s), so a request fails in time (503) instead.
    database_url = settings.require_database_url()
    engine = create_engine(
        database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_s,
        connect_args={"timeout": settings.db_pool_timeout_s},
        json_deserializer=orjson.loads,
    )
    client = create_redis(settings, socket_timeout=5, socket_connect_timeout=2)
    pool = await create_pool(
        database_url,
        min_size=0,
        max_size=settings.db_pool_size,
        acquire_timeout=settings.db_pool_timeout_s,
        timeout=settings.db_pool_timeout_s,
    )
    metrics.count_connections("api_pool", lambda: pool.get_size() - pool.get_idle_size())
    metrics.count_connections("api_engine", engine.pool.checkedout)  # type: ignore[attr-defined]
    writer = AuditWriter(configured_producer(settings, client), AuditStore(pool, signer))
    reads = await read_router(settings, ReadSource("primary", engine, pool, is_primary=True))
    verifier = signer.verifier if signer else None
    found = Resources(settings, engine, pool, client, writer, loader, reads, TextIndexCache(), verifier)
    app.state.resources = found
    stop = asyncio.Event()
    readiness: PodReadiness = app.state.readiness
    workers = [
        asyncio.create_task(
            keep_embeddings_fresh(database_url, pool, loader, stop, settings.embedding_sweep_interval_s)
        ),
        asyncio.create_task(readiness.keep_refreshing(found, stop)),
        asyncio.create_task(denials.run(writer, stop)),
        # The retention gauges: the alert needs them from pods that live, not from the CronJob's.
        asyncio.create_task(retention.export_figures(pool, stop)),
        asyncio.create_task(keep_gauges_fresh(pool, stop)),
    ]
    if reads.replicas:
        workers.append(asyncio.create_task(reads.keep_measuring(stop, settings.read_replica_check_interval_s)))
    readiness.started = True
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait(workers, timeout=10)
        for worker in workers:
            worker.cancel()
        await found.checked_chain.close()
        for replica in reads.replicas:
            await replica.pool.close()
            await replica.engine.dispose()
        if authenticator is not None:
            await authenticator.aclose()
        metrics.count_connections("api_pool", None)
        metrics.count_connections("api_engine", None)
        await pool.close()
        await client.aclose()
        await engine.dispose()


async def read_router(settings: Settings, primary: ReadSource) -> ReadRouter:
    """The primary and a source per `DATASTORAGE_DATABASE_READ_URL` (none: every read on the primary).
    Connections to a replica give up quickly, so that a dead one costs a read little time."""
    replicas = []
    for n, url in enumerate(settings.database_read_urls()):
        engine = create_engine(
            url, pool_size=settings.db_pool_size, json_deserializer=orjson.loads, connect_args={"timeout": 2}
        )
        pool = await create_pool(url, min_size=0, max_size=settings.db_pool_size, timeout=2)
        replicas.append(ReadSource(f"replica-{n}", engine, pool))
        log.info("read_replica_configured", replica=f"replica-{n}", host=urlsplit(url).hostname or "socket")
    return ReadRouter(primary, replicas, max_lag_bytes=settings.read_replica_max_lag_bytes)


async def check_postgres(resources: Resources) -> str | None:
    async with resources.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return None


async def check_schema(resources: Resources) -> str | None:
    async with resources.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        pending = await pending_migrations(raw.driver_connection, resources.settings.schema_dir)
    return f"schema not migrated: {len(pending)} migration(s) pending" if pending else None


async def check_redis(resources: Resources) -> str | None:
    await resources.redis.ping()
    return None


async def check_model(resources: Resources) -> str | None:
    loader = resources.embedder_loader
    degraded = "(playbook search answers degraded: text and labels only)"
    return {"ready": None, "loading": f"loading {degraded}"}.get(loader.state, f"failed: {loader.error} {degraded}")


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(api_document(request.app.state.auth))
