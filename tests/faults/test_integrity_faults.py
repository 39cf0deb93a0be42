"""No false alarm: events ingested normally, through the real stream and two sealing consumers,
with a consumer SIGKILLed (the checkpointer among them, when it leads) and Postgres restarted in
between, verify clean, and every seal is under a published checkpoint within the sealing bound."""

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from app.audit.integrity.checkpoints import published_checkpoints
from app.audit.integrity.verify import Window, verify
from app.core.db import connect
from tests.helpers import SCALE, SteadyProducer, report, settle, wait_for

pytestmark = pytest.mark.faults


async def test_50000_sealed_events_through_a_sigkill_and_a_postgres_restart_verify_clean(
    database_url, redis_url, consumers, postgres_server, signing_key, signer, capsys
):
    sealing = {"audit_signing_key_file": str(signing_key), "audit_checkpoint_interval_s": "1"}
    running = {name: await consumers(name, **sealing) for name in ("c0", "c1")}
    producer = SteadyProducer(redis_url, rate=2500)
    flowing = asyncio.create_task(producer.run_for(20 * SCALE))  # 50,000 events
    await asyncio.sleep(5)
    running["c0"].kill()
    running["c0"] = await consumers("c0", **sealing)
    await asyncio.sleep(4)
    postgres_server.stop()
    await asyncio.sleep(5)
    postgres_server.start()
    await flowing

    db = await connect(database_url)
    client = aioredis.from_url(redis_url)
    try:
        figures = await settle(db, redis_url, producer.acknowledged)
        settled_at = time.monotonic()

        async def head_checkpointed() -> bool:
            head = await db.fetchval("SELECT max(chain_index) FROM audit_seals")
            published = await published_checkpoints(client, count=1)
            return bool(published) and published[-1].chain_index == head

        await wait_for(head_checkpointed, 10, "a published checkpoint of the chain head (the sealing bound)")
        checkpoint_seconds = time.monotonic() - settled_at
        started = time.monotonic()
        result = await verify(db, signer.verifier, await published_checkpoints(client), Window())
        verify_seconds = time.monotonic() - started
        unsealed = await db.fetchval("SELECT count(*) FROM audit_events WHERE seal_id IS NULL")
    finally:
        await client.aclose()
        await db.close()
    report(capsys, "sealed ingestion through a SIGKILL and a Postgres restart", {
        **figures, "seals": result.seals, "checkpoints": result.checkpoints, "verified_rows": result.rows,
        "findings": len(result.findings), "head_checkpointed_after_s": round(checkpoint_seconds, 1),
        "verify_seconds": round(verify_seconds, 1),
    })  # fmt: skip
    assert len(producer.acknowledged) >= 50_000 * SCALE * 0.95
    assert (figures["lost"], figures["duplicated"], figures["dead_lettered"], figures["pending"]) == (0, 0, 0, 0)
    assert unsealed == 0
    assert result.intact, [f for f in result.findings][:10]
    assert (result.rows, result.pending) == (figures["rows"], 0)
