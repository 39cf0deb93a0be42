"""What every command does: read the settings, configure logging, open a client, close it."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import typer

from app.core.db import connect
from app.core.logs import configure_logging
from app.core.redis_client import RedisClient, create_redis
from app.core.settings import MissingSetting, Settings

T = TypeVar("T")


def load_settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def database_url(settings: Settings) -> str:
    try:
        return settings.require_database_url()
    except MissingSetting as error:
        raise typer.BadParameter(str(error), param_hint="environment") from None


def redis_url(settings: Settings) -> str:
    try:
        return settings.require_redis_url()
    except MissingSetting as error:
        raise typer.BadParameter(str(error), param_hint="environment") from None


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
