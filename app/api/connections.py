"""HTTP/1.1 connections with bounds on slow and idle clients: uvicorn's httptools protocol, plus
what uvicorn does not have.

uvicorn arms no timer until a first response is sent, so a client that opens a connection and
sends half a request head is held for ever, and enough of them exhaust the process's file
descriptors: new connections, the kubelet's /healthz among them, are then not even accepted.
This protocol adds, per server:

* a header timeout: a request's head (request line and headers) must be complete within
  `header_timeout_s` of the connection opening, or of the first byte of the next request on a
  keep-alive connection; otherwise the connection is closed. (Idle keep-alive connections are
  closed by uvicorn's own `timeout_keep_alive`.)
* a connection cap: beyond `max_connections`, the connection that has waited longest without a
  request in progress (half a head, or idle keep-alive) is closed to make room, so a new client
  is always accepted while the descriptors last;
* a cap on requests in flight: beyond `max_requests_in_flight` a request is answered 503 at once.
  uvicorn's own `limit_concurrency` counts connections too, so idle connections would make
  /healthz a 503; this one counts requests only;
* long URLs reach the app: httptools refuses to split a URL over 65,535 bytes and uvicorn then
  answers a plain-text 400 and closes the connection. Here such a URL is split as httptools
  would (path, query) and the app answers a problem document naming the parameter
  (`app/api/middleware.py`), on a connection that stays open. A request head over
  MAX_HEAD_BYTES closes the connection (what a client could make the server hold is bounded).

It is uvicorn's fast path otherwise (httptools parser, uvloop): `ops/bench/http_server.py`
measures both.
"""

import asyncio
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core import metrics

log = structlog.get_logger(__name__)


# httptools.parse_url refuses longer URLs.
URL_PARSER_LIMIT = 65_535
# A request line or the headers beyond this close the connection (uvicorn has no such bound).
MAX_HEAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_connections: int = 10_000
    max_requests_in_flight: int = 1_000


class BoundedHttpProtocol(HttpToolsProtocol):
    """One connection. Use `protocol_class(limits)`: each server needs a class of its own."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Connections with no request in progress, longest waiting first: the ones to close first.
    waiting: ClassVar["OrderedDict[BoundedHttpProtocol, None]"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        if len(self.connections) > self.limits.max_connections:
            self._close_longest_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_HEAD_BYTES and not self.transport.is_closing():
            metrics.HTTP_SHED.labels("head_too_large").inc()
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            metrics.HTTP_SHED.labels("head_too_large").inc()
            self.transport.close()

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        super().on_message_begin()
        if self.header_timer is None:  # the next request on a keep-alive connection
            self._wait_for_head()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
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
            self.waiting[self] = None  # idle keep-alive: uvicorn's keep-alive timer runs

    # --- helpers ---------------------------------------------------------------------------------

    def _wait_for_head(self) -> None:
        self.waiting[self] = None
        self.waiting.move_to_end(self)
        self.header_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _head_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            metrics.HTTP_SHED.labels("header_timeout").inc()
            self.transport.close()

    def _close_longest_waiting(self) -> None:
        for connection in self.waiting:
            if connection is not self:
                self.waiting.pop(connection)
                metrics.HTTP_SHED.labels("max_connections").inc()
                connection.transport.close()
                return


def protocol_class(limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
    """A protocol class for one server: its limits, and its own list of waiting connections."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"limits": limits, "waiting": OrderedDict()})
