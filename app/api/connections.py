"""HTTP/1.1 connections with bounds on slow and idle clients: uvicorn's httptools protocol, plus
what uvicorn does not have.

uvicorn arms no timer until a first response is sent, so a client that opens a connection and
sends half a request head is held for ever, and enough of them exhaust the process's file
descriptors: new connections, the kubelet's /healthz among them, are then not even accepted.
This protocol adds, per server:

* a header timeout: a connection may spend at most `header_timeout_s` without a request in
  progress, that is opening, sending a request head, or idle between requests; then it is closed.
  (uvicorn's own `timeout_keep_alive`, shorter, still closes idle keep-alive connections first.)
  One sweep a second closes the late ones, oldest first: no timer per request.
* a connection cap: beyond `max_connections`, the connection that has waited longest without a
  request in progress is closed to make room, so a new client is always accepted while the
  descriptors last;
* a cap on requests in flight: beyond `max_requests_in_flight` a request is answered 503 at once.
  uvicorn's own `limit_concurrency` counts connections too, so idle connections would make
  /healthz a 503; this one counts requests only;
* long URLs reach the app: httptools refuses to split a URL over 65,535 bytes and uvicorn then
  answers a plain-text 400 and closes the connection. Here such a URL is split as httptools
  would (path, query) and the app answers a problem document naming the parameter
  (`app/api/middleware.py`), on a connection that stays open. A request head over
  MAX_HEAD_BYTES closes the connection (what a client can make the server hold is bounded).

It is uvicorn's fast path otherwise (httptools parser, uvloop): `ops/bench/http_server.py`
measures both.
"""

import asyncio
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core import metrics

# httptools.parse_url refuses longer URLs.
URL_PARSER_LIMIT = 65_535
# A request line and headers beyond this close the connection (uvicorn has no such bound).
MAX_HEAD_BYTES = 1024 * 1024
SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_connections: int = 10_000
    max_requests_in_flight: int = 1_000


class BoundedHttpProtocol(HttpToolsProtocol):
    """One connection. Use `protocol_class(limits)`: each server needs a class of its own."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Connections with no request in progress and since when (loop time), longest waiting first:
    # the ones the sweep closes when late, and the ones closed first to make room.
    waiting: ClassVar["OrderedDict[BoundedHttpProtocol, float]"]
    sweeper: ClassVar[asyncio.TimerHandle | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting[self] = self.loop.time()
        if len(self.connections) > self.limits.max_connections:
            self._close_longest_waiting()
        self._ensure_sweeping()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self in self.waiting:  # a request head on its way
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                metrics.HTTP_SHED.labels("head_too_large").inc()
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.waiting.pop(self, None)
        self.head_bytes = 0
        # uvicorn answers 503 when limit_concurrency is reached; it is set here, per request, so
        # that only requests in flight count (not connections).
        busy = len(self.tasks) >= self.limits.max_requests_in_flight
        self.limit_concurrency = 0 if busy else None
        if busy:
            metrics.HTTP_SHED.labels("requests_in_flight").inc()
        long_url = self.url if len(self.url) > URL_PARSER_LIMIT else None
        if long_url is not None:
            self.url = b"/"  # what httptools can parse; the scope gets the real URL below
        super().on_headers_complete()
        if long_url is not None and "path" in self.scope:
            # The ASGI task has not run yet: its scope is this dict.
            raw_path, _, query = long_url.partition(b"#")[0].partition(b"?")
            self.scope["raw_path"] = raw_path
            self.scope["path"] = urllib.parse.unquote(raw_path.decode("ascii", "replace"))
            self.scope["query_string"] = query

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self.waiting[self] = self.loop.time()  # idle until the next request's head is complete
            self._ensure_sweeping()

    def _ensure_sweeping(self) -> None:
        cls = type(self)
        if cls.sweeper is None:
            cls.sweeper = self.loop.call_later(SWEEP_INTERVAL_S, cls._sweep, self.loop)

    def _close_longest_waiting(self) -> None:
        for connection in self.waiting:
            if connection is not self:
                del self.waiting[connection]
                metrics.HTTP_SHED.labels("max_connections").inc()
                connection.transport.close()
                return

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        late = loop.time() - cls.limits.header_timeout_s
        while cls.waiting:
            connection, since = next(iter(cls.waiting.items()))
            if since > late:
                break
            del cls.waiting[connection]
            metrics.HTTP_SHED.labels("header_timeout").inc()
            connection.transport.close()
        cls.sweeper = loop.call_later(SWEEP_INTERVAL_S, cls._sweep, loop) if cls.waiting else None


def protocol_class(limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
    """A protocol class for one server: its limits, and its own list of waiting connections."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"limits": limits, "waiting": OrderedDict()})
