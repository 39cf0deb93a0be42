"""Connections to Postgres: one URL in settings, in the two spellings the drivers want."""

import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def asyncpg_dsn(url: str) -> str:
    """`postgresql://…` for asyncpg, whatever driver suffix the URL carries."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://…")
    return urlunsplit(("postgresql",) + tuple(parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """`postgresql+asyncpg://…` for SQLAlchemy's async engine."""
    return "postgresql+asyncpg" + asyncpg_dsn(url)[len("postgresql") :]


async def connect(url: str, **kwargs) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(url), **kwargs)


def create_engine(url: str, **kwargs) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(url), pool_pre_ping=True, **kwargs)


_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def create_database(url: str, name: str, *, template: str | None = None) -> str:
    """Creates database `name` on the server of `url` unless it exists; returns its URL.

    CREATE DATABASE takes no bind parameters, so names are the code's own and anything but a
    plain identifier is refused rather than quoted.
    """
    for identifier in filter(None, (name, template)):
        if not _PLAIN_IDENTIFIER.match(identifier):
            raise ValueError(f"not a plain database name: {identifier!r}")
    conn = await connect(url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            template_clause = f' TEMPLATE "{template}"' if template else ""
            try:
                await conn.execute(f'CREATE DATABASE "{name}"{template_clause}')
            except asyncpg.DuplicateDatabaseError:
                pass  # created meanwhile by a concurrent caller: just as good
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    if not _PLAIN_IDENTIFIER.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    conn = await connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
