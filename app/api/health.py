"""`/healthz` (the process answers) and `/readyz` (this pod takes traffic).

`/readyz` is about this pod: 200 from the end of start-up until it drains (SIGTERM,
`app/api/server.py`), unless the schema, checked once Postgres is first reachable, is behind this
release. The state of Postgres, Redis and the embedding model is in the body and in gauges
(`datastorage_dependency_up`, `datastorage_embedding_model_state`), never in the status: every pod
shares the same stores, and the write path falls back from one to the other (Redis away: written
to Postgres, 201; Postgres away: queued in Redis, 202), while search answers without the model.
Taking every pod out of the Service when a store is away would turn those fallbacks into
connection errors.

The checks are given by the app (`app/api/app.py`): a coroutine function of the API's resources
returning None when all is well, or a short text saying what is not.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import structlog
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.openapi import Operation, Reply
from app.api.resources import Resources, resources
from app.core import metrics

log = structlog.get_logger(__name__)

Check = Callable[[Resources], Awaitable[str | None]]

# Checks run side by side, each within this: /readyz answers within the kubelet's timeout (3 s)
# even when a store does not answer at all.
CHECK_TIMEOUT_S = 1.5
# How often the dependencies' gauges are refreshed when no probe asks.
REFRESH_INTERVAL_S = 10.0
# The checks whose state is a gauge of `datastorage_dependency_up` (the model has its own).
STORES = ("postgres", "redis")


class PodReadiness:
    """This pod's state (started, draining, schema) and the last word of each dependency check."""

    def __init__(self, checks: Mapping[str, Check], schema_check: Check):
        self.checks = checks
        self.schema_check = schema_check
        self.started = False
        self.draining = False
        # None: not known yet (Postgres not reached since start); checked until it is migrated.
        self.schema_problem: str | None = None
        self.schema_migrated = False
        self._publish()

    def drain(self) -> None:
        """From now on /readyz answers 503: the Service stops sending new requests here."""
        if not self.draining:
            self.draining = True
            log.info("api_draining")
            self._publish()

    def reasons(self) -> list[str]:
        """Why this pod does not take traffic (empty: it does)."""
        reasons = []
        if not self.started:
            reasons.append("starting")
        if self.draining:
            reasons.append("draining")
        if self.schema_problem:
            reasons.append(f"postgres ({self.schema_problem})")
        return reasons

    async def probe(self, found: Resources) -> dict[str, str]:
        """Runs every check side by side; returns each one's result ("ok" or what is wrong)."""
        names = list(self.checks)
        problems = await asyncio.gather(*(self._run(self.checks[name], found) for name in names))
        results = {name: problem or "ok" for name, problem in zip(names, problems, strict=True)}
        if results.get("postgres") == "ok" and not self.schema_migrated:
            self.schema_problem = await self._run(self.schema_check, found)
            if self.schema_problem is None:
                self.schema_migrated = True
                log.info("schema_checked", migrated=True)
        if self.schema_problem and results.get("postgres") == "ok":
            results["postgres"] = self.schema_problem
        for name in STORES:
            if name in results:
                metrics.DEPENDENCY_UP.labels(name).set(1 if results[name] == "ok" else 0)
        self._publish()
        return results

    async def keep_refreshing(self, found: Resources, stop: asyncio.Event) -> None:
        """Probes every REFRESH_INTERVAL_S, so that the gauges (and the schema check) do not wait
        for a probe."""
        while not stop.is_set():
            try:
                await self.probe(found)
            except Exception:  # a check's own failure is its result: this is a bug
                log.exception("readiness_refresh_failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_INTERVAL_S)

    def _publish(self) -> None:
        metrics.API_READY.set(0 if self.reasons() else 1)
        metrics.DEPENDENCY_UP.labels("schema").set(1 if self.schema_migrated else 0)

    @staticmethod
    async def _run(check: Check, found: Resources) -> str | None:
        try:
            return await asyncio.wait_for(check(found), CHECK_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - any failure is the dependency's state
            return f"unreachable ({type(error).__name__})"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def health_routes(readiness: PodReadiness) -> list[Route]:
    async def readyz(request: Request) -> Response:
        """200 while this pod takes traffic; 503 while it starts, drains or runs ahead of its
        schema. The dependencies' state is reported either way."""
        results = await readiness.probe(resources(request))
        reasons = readiness.reasons()
        if reasons:
            body: dict[str, Any] = {
                "type": "https://datastorage.dev/problems/not-ready",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"not ready: {', '.join(reasons)}",
                "instance": "/readyz",
                "checks": results,
            }
            return JSONResponse(body, status_code=503, media_type="application/problem+json")
        return JSONResponse({"status": "ready", "checks": results})

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """`checks`: postgres, redis and embedding_model, each "ok" or what is wrong (unreachable,
    schema not migrated, loading, failed: the cause). They do not make the pod unready."""

    status: Literal["ready"]
    checks: dict[str, str]


operations = [
    Operation("GET /healthz", "healthz", "The process is alive", {200: Reply("alive", Health)}, public=True),
    Operation(
        "GET /readyz",
        "readyz",
        "This pod takes traffic: started, not draining, schema not behind",
        {
            200: Reply("ready; the dependencies' state (Postgres, Redis, the model) is in checks", Readiness),
            503: Reply("starting, draining (SIGTERM) or the schema is not migrated (in detail); checks as for 200"),
        },
        public=True,
        description=(
            "A store that is down or a model that is loading or failed does not make the pod unready: "
            "writes fall back from Redis to Postgres and back, and search answers without the model. "
            "Their state is in `checks` and in the gauges datastorage_dependency_up and "
            "datastorage_embedding_model_state."
        ),
    ),
]
