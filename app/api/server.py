"""Serving the API with uvicorn, on its own (`serve`) or inside `datastorage run`.

Slow clients are bounded by the connection protocol (`app/api/connections.py`). SIGTERM drains:
/readyz answers 503 for `http_drain_s` while every request is still served (the Service and the
ingress stop sending new ones here), then uvicorn's graceful shutdown stops accepting, closes idle
connections and lets requests in flight finish (up to `http_shutdown_timeout_s`). A second
SIGTERM or a SIGINT skips the drain.
"""

import contextlib
import resource
import signal
import time
from types import FrameType

import structlog
import uvicorn
from starlette.applications import Starlette

from app.api.app import create_app
from app.api.connections import ConnectionLimits, protocol_class
from app.api.health import PodReadiness
from app.audit.integrity.keys import Signer
from app.core.settings import Settings

log = structlog.get_logger(__name__)

# Descriptors kept for everything but client connections (pools, Redis, files, /metrics).
RESERVED_DESCRIPTORS = 256


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    limits = ConnectionLimits(
        header_timeout_s=settings.http_header_timeout_s,
        max_connections=min(settings.http_max_connections, _descriptors() - RESERVED_DESCRIPTORS),
        max_requests_in_flight=settings.http_max_requests_in_flight,
    )
    log.debug("api_connection_limits", **vars(limits))
    # log_config=None: uvicorn logs through the root logger, in the service's format.
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        http=protocol_class(limits),
        timeout_keep_alive=settings.http_keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.http_shutdown_timeout_s,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        lifespan="on",
    )


def _descriptors() -> int:
    """This process's limit of open files, raised to the hard limit: a connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on the first SIGTERM (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, readiness: PodReadiness, drain_s: float):
        super().__init__(config)
        self.readiness = readiness
        self.drain_s = drain_s
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_until is None and self.drain_s > 0:
            self.readiness.drain()
            self.drain_until = time.monotonic() + self.drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


class InProcessServer(uvicorn.Server):
    """uvicorn in a process that handles SIGINT/SIGTERM itself (`datastorage run` stops the
    parts in order); set `should_exit` to stop it."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def serve(settings: Settings, signer: Signer | None) -> None:
    app = create_app(settings, signer)
    DrainingServer(uvicorn_config(settings, app), app.state.readiness, settings.http_drain_s).run()
