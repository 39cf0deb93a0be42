"""Consumers killed, Postgres stopped, connections cut, Redis restarted: every event Redis
acknowledged ends up exactly once in Postgres, nothing stays pending, nothing is dead-lettered."""

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from app.core.db import connect
from tests.helpers import SCALE, SteadyProducer, report, settle

pytestmark = pytest.mark.faults


async def test_20_consumer_kills_while_20000_events_flow(database_url, db, redis_url, consumers, capsys):
    names = ["c0", "c1"]
    running = {name: await consumers(name) for name in names}
    producer = SteadyProducer(redis_url, rate=2000)
    kills = int(20 * SCALE)
    flowing = asyncio.create_task(producer.run_for(10 * SCALE))
    rng = random.Random(20)
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.1, 0.5 * (10 * SCALE) / kills * 2))
        name = rng.choice(names)
        running[name].kill()
        running[name] = await consumers(name)  # restarted under its name: takes back its pending entries
    await flowing
    assert producer.failed == 0
    figures = await settle(db, redis_url, producer.acknowledged)
    report(capsys, "consumer SIGKILLs", {"kills": kills, **figures})
    assert len(producer.acknowledged) >= 20_000 * SCALE * 0.95
    assert (figures["lost"], figures["duplicated"], figures["dead_lettered"], figures["pending"]) == (0, 0, 0, 0)


async def test_postgres_stopped_for_30_seconds_under_steady_load(database_url, redis_url, consumers,
                                                                 postgres_server, capsys):
    await consumers("c0")
    await consumers("c1")
    producer = SteadyProducer(redis_url, rate=1000)
    flowing = asyncio.create_task(producer.run_for(40 * SCALE))
    await asyncio.sleep(5)
    postgres_server.stop()
    await asyncio.sleep(30 * SCALE)
    postgres_server.start()
    backlog = set(producer.acknowledged)
    db = await connect(database_url)
    try:
        # Recovery: from the restart until everything acknowledged during the outage is stored.
        recovery = await settle(db, redis_url, backlog, require_idle=False)
        await flowing
        figures = await settle(db, redis_url, producer.acknowledged)
    finally:
        await db.close()
    figures.update(backlog_at_restart=len(backlog), recovery_seconds=recovery["settle_seconds"])
    report(capsys, "Postgres stopped 30 s", figures)
    assert (figures["lost"], figures["duplicated"], figures["dead_lettered"], figures["pending"]) == (0, 0, 0, 0)


async def test_connections_killed_mid_transaction_again_and_again(database_url, db, redis_url, consumers,
                                                                   capsys):
    await consumers("c0")
    await consumers("c1")
    producer = SteadyProducer(redis_url, rate=2000)
    flowing = asyncio.create_task(producer.run_for(10 * SCALE))
    terminated = 0
    while not flowing.done():
        terminated += await db.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()) AS killed")
        await asyncio.sleep(0.3)
    figures = await settle(db, redis_url, producer.acknowledged)
    report(capsys, "pg_terminate_backend", {"connections_terminated": terminated, **figures})
    assert terminated >= 10
    assert (figures["lost"], figures["duplicated"], figures["dead_lettered"], figures["pending"]) == (0, 0, 0, 0)


async def test_redis_restarted_while_producers_and_consumers_run(db, redis_url, redis_server, consumers,
                                                                   settings, capsys):
    """AOF with appendfsync always (the test Redis): what Redis acknowledged survives a SIGKILL."""
    from tests.conftest import client_for

    await consumers("c0")
    await consumers("c1")
    producer = SteadyProducer(redis_url, rate=1000)
    flowing = asyncio.create_task(producer.run_for(20 * SCALE))
    restarts = int(2 * SCALE)
    async with client_for(settings) as api:
        for _ in range(restarts):
            await asyncio.sleep(4)
            redis_server.stop(kill=True)
            await asyncio.sleep(1)
            redis_server.start()
        await flowing
        # The API's connection pool reconnects by itself.
        from tests.helpers import body_of, event
        response = await api.post("/api/v1/audit-events", json=body_of(event(1)))
        assert response.status_code == 202, response.text
    figures = await settle(db, redis_url, producer.acknowledged)
    report(capsys, "Redis SIGKILL and restart", {"restarts": restarts, "xadd_failed": producer.failed, **figures})
    assert (figures["lost"], figures["duplicated"], figures["pending"]) == (0, 0, 0)
    client = aioredis.from_url(redis_url)
    assert {c["name"] for c in await client.xinfo_consumers("audit_events", "datastorage")} >= {b"c0", b"c1"}
    await client.aclose()
