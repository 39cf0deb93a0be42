"""Serving the API with uvicorn, on its own (`serve`) or inside `datastorage run`."""

import contextlib

import uvicorn

from app.api.app import create_app
from app.audit.integrity.keys import Signer
from app.core.settings import Settings


def uvicorn_config(settings: Settings, signer: Signer | None) -> uvicorn.Config:
    # log_config=None: uvicorn logs through the root logger, in the service's format.
    return uvicorn.Config(
        create_app(settings, signer),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


class InProcessServer(uvicorn.Server):
    """uvicorn in a process that handles SIGINT/SIGTERM itself (`datastorage run` stops the
    parts in order); set `should_exit` to stop it."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def serve(settings: Settings, signer: Signer | None) -> None:
    uvicorn.Server(uvicorn_config(settings, signer)).run()
