"""`/healthz` (the process answers) and `/readyz` (its dependencies answer)."""

import asyncio

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.migrations import pending_migrations

CHECK_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _check_postgres(request: Request) -> str | None:
    async with request.app.state.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        pending = await pending_migrations(raw.driver_connection, request.app.state.settings.schema_dir)
        await conn.execute(text("SELECT 1"))
    return f"schema not migrated: {len(pending)} migration(s) pending" if pending else None


async def _check_redis(request: Request) -> str | None:
    await request.app.state.redis.ping()
    return None


async def readyz(request: Request) -> Response:
    """200 when every dependency answers in time; 503 naming the ones that do not."""
    checks = {"postgres": _check_postgres, "redis": _check_redis}
    checks.update(getattr(request.app.state, "extra_readiness_checks", {}))
    results = {}
    for name, check in checks.items():
        try:
            problem = await asyncio.wait_for(check(request), CHECK_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            problem = f"unreachable ({type(error).__name__})"
        results[name] = problem or "ok"
    failing = [name for name, result in results.items() if result != "ok"]
    if failing:
        return JSONResponse(
            {"type": "https://datastorage.dev/problems/not-ready", "title": "Service Unavailable",
             "status": 503, "detail": f"not ready: {', '.join(failing)}", "instance": "/readyz",
             "checks": results},
            status_code=503, media_type="application/problem+json",
        )
    return JSONResponse({"status": "ready", "checks": results})


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
