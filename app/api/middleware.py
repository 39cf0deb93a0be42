"""Small ASGI middlewares: request metrics, answers to unexpected errors, long URLs (auth:
app/api/auth.py; rate limits: app/api/ratelimit.py)."""

import re
import time
import urllib.parse

import structlog
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import Problem, handle_unexpected, problem_response
from app.core import metrics

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


class RequestMetrics:
    """Counts and times every request by method, route template (not the raw path: ids would
    make a label per event) and status."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            labels = (scope["method"], getattr(route, "path", "unmatched"), str(status))
            metrics.HTTP_REQUESTS.labels(*labels).inc()
            metrics.HTTP_REQUEST_DURATION.labels(*labels).observe(time.perf_counter() - started)


class RequestContext:
    """Binds the request's `trace_id` (W3C traceparent) and `correlation_id` (the query parameter,
    or an X-Correlation-ID header) to every log line written while it is handled (structlog
    contextvars); a write of events with one correlation id binds it in its handler."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        context = {}
        trace = trace_context(request.headers.get("traceparent", ""))
        if trace:
            context["trace_id"] = trace["trace_id"]
        correlation_id = request.query_params.get("correlation_id") or request.headers.get("x-correlation-id")
        if correlation_id:
            context["correlation_id"] = correlation_id[:255]
        with structlog.contextvars.bound_contextvars(**context):
            await self.app(scope, receive, send)


def trace_context(traceparent: str) -> dict[str, str]:
    """trace_id and span_id from a W3C `traceparent` header, if it is well formed."""
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if not match or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return {}
    return {"trace_id": match[1], "span_id": match[2]}


class UnexpectedErrors:
    """Answers an error no handler took with a 500 problem document and keeps the connection.

    Starlette's own last-resort handler answers too, but then re-raises, and uvicorn closes the
    client's keep-alive connection. Only a response already under way is given up (re-raised)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as error:
            if started:
                raise
            response = await handle_unexpected(Request(scope), error)
            await response(scope, receive, send)


# URLs longer than this are refused (400) naming their longest parameter; the connection protocol
# lets them reach the app (app/api/connections.py).
MAX_URL_BYTES = 64 * 1024


class LongUrls:
    """A URL over MAX_URL_BYTES is a 400 problem naming its longest parameter (in the query, or in
    the path of the route it would take)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(scope["raw_path"]) + len(scope["query_string"]) <= MAX_URL_BYTES:
            await self.app(scope, receive, send)
            return
        name = _longest_parameter(scope)
        problem = Problem(400, f"{name}: the URL is longer than {MAX_URL_BYTES} bytes", parameter=name)
        await problem_response(Request(scope), problem)(scope, receive, send)


def _longest_parameter(scope: Scope) -> str:
    sizes: dict[str, int] = {}
    for name, value in urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        sizes[name] = max(sizes.get(name, 0), len(value))
    for route in getattr(scope.get("app"), "routes", ()):
        match, child = route.matches(scope)
        if match is not Match.NONE:
            sizes.update({name: len(str(value)) for name, value in child.get("path_params", {}).items()})
            break
    return max(sizes, key=lambda name: sizes[name]) if sizes else "path"
