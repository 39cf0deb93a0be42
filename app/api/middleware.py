"""Request metrics, an ASGI middleware (auth: app/api/auth.py; rate limits: app/api/ratelimit.py)."""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics


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
