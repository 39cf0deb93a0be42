"""The fault-test harness really stops and restarts the private servers."""

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.core.db import connect


async def test_postgres_can_be_stopped_and_started_again(postgres_server, database_url):
    conn = await connect(database_url)
    await conn.execute("CREATE TABLE survives (id int)")
    await conn.execute("INSERT INTO survives VALUES (1)")
    postgres_server.stop()
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("SELECT 1")
    with pytest.raises(OSError):
        await connect(database_url, timeout=5)

    postgres_server.start()
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM survives") == 1
    finally:
        await conn.close()


async def test_redis_can_be_killed_and_keeps_what_it_acknowledged(redis_server, redis_url):
    client = aioredis.from_url(redis_url)
    await client.xadd("audit_events", {"event_type": "x"})
    redis_server.stop(kill=True)
    with pytest.raises(aioredis.ConnectionError):
        await client.ping()

    redis_server.start()
    # AOF with appendfsync always: the entry acknowledged before the SIGKILL is still there.
    assert await client.xlen("audit_events") == 1
    await client.aclose()
