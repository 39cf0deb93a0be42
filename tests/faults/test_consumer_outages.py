"""Restarts are not failures: a consumer stopped cleanly (SIGTERM, a rollout) and started again
under its name while Postgres is down re-reads its pending entries, and Redis counts each re-read
as a delivery. Only deliveries that ended in a failure count toward max_deliveries: rollouts
during an outage dead-letter nothing, while a consumer killed (SIGKILL, OOM) while holding entries
does count, so an entry that kills every consumer that reads it ends in the DLQ, not in a loop."""

import asyncio

import pytest

from app.core.db import connect
from tests.helpers import GROUP, STREAM, dead_letters, events, pending, publish, settled, wait_for

pytestmark = pytest.mark.faults

RESTARTS = 7  # more than max_deliveries (5)


async def _held_by(client, consumer: str, count: int) -> bool:
    """`count` entries are pending to `consumer`, each delivered at least once."""
    rows = await client.xinfo_consumers(STREAM, GROUP) if await client.exists(STREAM) else []
    for row in rows:
        if row["name"].decode() == consumer:
            return row["pending"] >= count
    return False


async def test_clean_restarts_during_a_postgres_outage_dead_letter_nothing(
        database_url, redis_url, client, consumers, postgres_server):
    postgres_server.stop()
    await publish(client, events(100))
    for _ in range(RESTARTS):
        consumer = await consumers("rolling", retry_initial_s=0.2, retry_max_s=0.5)
        await wait_for(lambda: _held_by(client, "rolling", 100), 30, "the entries in hand")
        await wait_for(lambda: "batch_write_retry" in consumer.log(), 30,
                       "a failed attempt against the stopped Postgres")
        assert consumer.terminate() == 0, consumer.log()
    [oldest] = await client.xpending_range(STREAM, GROUP, "-", "+", 1)
    assert oldest["times_delivered"] >= RESTARTS, "Redis counted every re-read as a delivery"
    postgres_server.start()
    await consumers("rolling")
    db = await connect(database_url)
    try:
        await settled(db, client, rows=100, timeout=90)
    finally:
        await db.close()
    assert await dead_letters(client) == []


async def test_a_consumer_killed_while_holding_entries_counts_toward_max_deliveries(
        database_url, db, client, consumers):
    """An entry whose write kills the process: each SIGKILL during the attempt is a failure, so the
    sixth consumer dead-letters instead of dying too. (The write hangs here on a table lock; a
    kill while a batch only waits out an outage between attempts counts nothing.)"""
    await publish(client, events(20))
    blocker = await connect(database_url)
    blocked = blocker.transaction()
    await blocked.start()
    await blocker.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
    try:
        for _ in range(5):
            consumer = await consumers("doomed")
            await wait_for(lambda: _held_by(client, "doomed", 20), 30, "the entries in hand")
            await asyncio.sleep(1)  # inside the attempt: the COPY waits for the lock
            consumer.kill()
    finally:
        await blocked.rollback()
        await blocker.close()
    await consumers("doomed")
    await wait_for(lambda: _dlq_at_least(client, 20), 60, "the entries dead-lettered")
    letters = await dead_letters(client)
    assert {letter["dlq_reason"] for letter in letters} == {"max_deliveries"}
    assert await pending(client) == 0
    assert (await db.fetchval("SELECT count(*) FROM audit_events")) == 0


async def _dlq_at_least(client, count: int) -> bool:
    return len(await dead_letters(client)) >= count
