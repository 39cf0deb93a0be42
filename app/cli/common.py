"""What every command does: read the settings, configure logging, open a client, close it."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import asyncpg
import structlog
import typer

from app.core.db import connect
from app.core.logs import configure_logging, register_secrets
from app.core.redis_client import RedisClient, create_redis
from app.core.settings import MissingSetting, Settings

T = TypeVar("T")

log = structlog.get_logger(__name__)


def load_settings(*, find_run: bool = True) -> Settings:
    """The settings of this command; with `find_run`, the URLs not given are those of a
    `datastorage run` up on the same data folder (app/local/state.py)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if find_run and (settings.database_url is None or settings.redis_url is None):
        settings = settings_of_running_service(settings)
    register_secrets(settings.secret_values())
    return settings


def settings_of_running_service(settings: Settings) -> Settings:
    from app.local.state import read_state, state_path

    state = read_state(settings.data_dir)
    if state is None:
        return settings
    if not state.alive():
        log.warning(
            "stale_run_state_ignored",
            path=str(state_path(settings.data_dir)),
            pid=state.pid,
            detail="left by a `datastorage run` that is no longer running",
        )
        return settings
    update: dict = {}
    if settings.database_url is None:
        update["database_url"] = state.database_url
    if settings.redis_url is None:
        update["redis_url"] = state.redis_url
    if settings.audit_signing_key_file is None and state.audit_signing_key_file:
        update["audit_signing_key_file"] = Path(state.audit_signing_key_file)
    return settings.model_copy(update=update)


def missing(error: MissingSetting) -> NoReturn:
    """A usage error (exit 2) in plain words: what to run or which variables to set."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


def database_url(settings: Settings) -> str:
    try:
        return settings.require_database_url()
    except MissingSetting as error:
        missing(error)


def redis_url(settings: Settings) -> str:
    try:
        return settings.require_redis_url()
    except MissingSetting as error:
        missing(error)


def with_postgres(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Runs `work` with a connection to the configured Postgres, closed afterwards."""
    url = database_url(settings)

    async def main() -> T:
        conn = await connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def with_redis(settings: Settings, work: Callable[[RedisClient], Awaitable[T]]) -> T:
    """Runs `work` with a client of the configured Redis (or Redis Cluster), closed afterwards."""
    redis_url(settings)  # a usage error when it is not set

    async def main() -> T:
        client = create_redis(settings)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())
