"""`/healthz` (the process answers) and `/readyz` (its dependencies answer).

The checks are given by the app (`app/api/app.py`): a name and a coroutine function of the
API's resources returning None when all is well, or a short text saying what is not.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.openapi import Operation, Reply
from app.api.resources import Resources, resources

Check = Callable[[Resources], Awaitable[str | None]]

CHECK_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def health_routes(checks: Mapping[str, Check]) -> list[Route]:
    async def readyz(request: Request) -> Response:
        """200 when every dependency answers in time; 503 naming the ones that do not."""
        results = {}
        found = resources(request)
        for name, check in checks.items():
            try:
                problem = await asyncio.wait_for(check(found), CHECK_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - any failure means not ready
                problem = f"unreachable ({type(error).__name__})"
            results[name] = problem or "ok"
        failing = [name for name, result in results.items() if result != "ok"]
        if failing:
            return JSONResponse(
                {
                    "type": "https://datastorage.dev/problems/not-ready",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": f"not ready: {', '.join(failing)}",
                    "instance": "/readyz",
                    "checks": results,
                },
                status_code=503,
                media_type="application/problem+json",
            )
        return JSONResponse({"status": "ready", "checks": results})

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


operations = [
    Operation("GET /healthz", "healthz", "The process is alive", {200: Reply("alive", Health)}, public=True),
    Operation(
        "GET /readyz",
        "readyz",
        "Postgres and Redis answer, the schema is migrated, the model is loaded",
        {200: Reply("ready", Readiness), 503: Reply("a dependency is not ready (named in detail and checks)")},
        public=True,
    ),
]
