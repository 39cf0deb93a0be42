"""What the fault tests share: their size, a steady producer that remembers what Redis
acknowledged, and the settled state they all end in."""

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from app.producer import new_audit_event
from app.wire import encode_event
from tests.consumers import wait_for

# DATASTORAGE_FAULT_SCALE=5 makes every fault test five times longer and larger.
SCALE = float(os.environ.get("DATASTORAGE_FAULT_SCALE", "1"))
STREAM, DLQ, GROUP = "audit_events", "audit_dlq", "datastorage"


@dataclass
class SteadyProducer:
    """XADDs `rate` events/s in small pipelines; keeps the event_id of every XADD Redis answered
    OK, and counts the ones that failed (those were never acknowledged to the producer)."""

    redis_url: str
    rate: int = 2000
    acknowledged: set = field(default_factory=set)
    failed: int = 0

    async def run_for(self, seconds: float) -> None:
        client = aioredis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=1)
        per_tick = max(1, self.rate // 50)  # 50 pipelines a second
        started = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - started < seconds:
                batch = [new_audit_event("workflow.step", "workflow", "success", service_name="fault-test",
                                         actor_type="controller", resource_type="workflow",
                                         resource_id=f"wf-{random.randrange(10_000)}",
                                         event_data={"n": sent + i})
                         for i in range(per_tick)]
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for event in batch:
                            pipe.xadd(STREAM, encode_event(event))
                        await pipe.execute()
                    self.acknowledged.update(event.event_id for event in batch)
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    self.failed += len(batch)
                    await asyncio.sleep(0.1)
                sent += per_tick
                delay = started + sent / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await client.aclose()


async def stored_ids(db) -> tuple[set, int]:
    rows = await db.fetch("SELECT event_id FROM audit_events")
    return {r["event_id"] for r in rows}, len(rows)


async def settle(db, redis_url: str, expected: set, timeout: float = 120, require_idle: bool = True) -> dict:
    """Waits until every expected event is a row and (unless not `require_idle`) nothing is
    pending or unread; returns the figures."""
    client = aioredis.from_url(redis_url)
    started = time.monotonic()
    try:
        async def done() -> bool:
            ids, _ = await stored_ids(db)
            groups = await client.xinfo_groups(STREAM)
            idle = bool(groups) and groups[0]["pending"] == 0 and not groups[0]["lag"]
            return expected <= ids and (idle or not require_idle)

        await wait_for(done, timeout, "every acknowledged event stored and nothing pending", interval=0.5)
        ids, rows = await stored_ids(db)
        return {
            "sent_acknowledged": len(expected), "stored": len(ids & expected), "rows": rows,
            "duplicated": rows - len(ids), "lost": len(expected - ids),
            "dead_lettered": await client.xlen(DLQ),
            "pending": (await client.xinfo_groups(STREAM))[0]["pending"],
            "settle_seconds": round(time.monotonic() - started, 1),
        }
    finally:
        await client.aclose()


def report(capsys, name: str, figures: dict) -> None:
    with capsys.disabled():
        print(f"\n[fault] {name}: {json.dumps(figures)}")
