"""Errors as RFC 7807 problem documents (`application/problem+json`), never a stack trace or SQL.

A store that is away (Postgres or Redis unreachable, a pool with no free connection in time, Redis
refusing writes) is a 503 with `Retry-After`, decided here for every route by
`app.core.sqlstate.store_unavailable`; any other failure is a 500, logged. Neither closes the
client's keep-alive connection (`app/api/middleware.py` answers what escapes the handlers).
"""

import asyncpg
import redis
import sqlalchemy.exc
import structlog
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.audit.writer import StoresUnavailable
from app.core.sqlstate import describe_store_error, store_unavailable

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "https://datastorage.dev/problems/"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Seconds a client is asked to wait before retrying after a 503.
RETRY_AFTER_S = 5
# What the stores' drivers raise: a store error is a 503 or a 500, never a dropped connection.
STORE_ERRORS = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlalchemy.exc.SQLAlchemyError,
    redis.RedisError,
)


class ProblemDocument(BaseModel):
    """An RFC 7807 problem document; `parameter`, `index`, `field` and others name what is wrong."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class Problem(Exception):
    def __init__(
        self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None, **extensions
    ):
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}
        self.extensions = extensions


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem_response(request: Request, problem: Problem) -> ProblemResponse:
    body = {
        "type": PROBLEM_TYPE_BASE + problem.kind,
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extensions,
    }
    return ProblemResponse(body, status_code=problem.status, headers=problem.headers)


async def handle_problem(request: Request, problem: Problem) -> ProblemResponse:
    return problem_response(request, problem)


async def handle_http_exception(request: Request, error: HTTPException) -> ProblemResponse:
    detail = {
        404: f"no resource at {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(error.status_code, error.detail)
    return problem_response(request, Problem(error.status_code, detail, headers=dict(error.headers or {})))


def unavailable(detail: str) -> Problem:
    return Problem(503, f"{detail}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})


async def handle_stores_unavailable(request: Request, error: StoresUnavailable) -> ProblemResponse:
    return problem_response(request, unavailable("neither Redis nor Postgres can take events now"))


async def handle_store_error(request: Request, error: Exception) -> ProblemResponse:
    if not store_unavailable(error):
        return await handle_unexpected(request, error)
    store = "Redis" if isinstance(error, redis.RedisError) else "Postgres"
    log.warning("store_unavailable", path=request.url.path, store=store, error=describe_store_error(error))
    return problem_response(request, unavailable(f"{store} is unavailable"))


async def handle_unexpected(request: Request, error: Exception) -> ProblemResponse:
    log.exception("unexpected_error", path=request.url.path, method=request.method)
    return problem_response(request, Problem(500, "the service failed to answer this request; it is logged"))


EXCEPTION_HANDLERS = {
    Problem: handle_problem,
    HTTPException: handle_http_exception,
    StoresUnavailable: handle_stores_unavailable,
    **dict.fromkeys(STORE_ERRORS, handle_store_error),
    Exception: handle_unexpected,
}
