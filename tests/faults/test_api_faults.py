"""The API under store failures: Redis down → straight to Postgres (201); both down → 503 with
Retry-After; every event the API acknowledged (202 or 201) is stored exactly once."""

import asyncio
import time

import pytest

from app.core.db import connect
from tests.helpers import SCALE, body_of, client_for, event, report, settle

pytestmark = pytest.mark.faults


async def test_nothing_the_api_acknowledged_is_lost_when_redis_and_postgres_fail(
        database_url, redis_url, settings, consumers, redis_server, postgres_server, capsys):
    await consumers("c0")
    acknowledged, statuses = set(), {}

    async def post_for(api, seconds: float) -> None:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            batch = [event(n + i) for i in range(10)]
            n += 10
            response = await api.post("/api/v1/audit-events", json=[body_of(e) for e in batch])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code in (201, 202):
                acknowledged.update(e.event_id for e in batch)
            else:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "5"
            await asyncio.sleep(0.02)

    async with client_for(settings) as api:
        await post_for(api, 3 * SCALE)
        redis_server.stop()
        await post_for(api, 3 * SCALE)          # straight to Postgres
        postgres_server.stop()
        await post_for(api, 2 * SCALE)          # nowhere to go: 503
        postgres_server.start()
        redis_server.start()
        await post_for(api, 3 * SCALE)          # both back; the API reconnected by itself
    db = await connect(database_url)
    try:
        figures = await settle(db, redis_url, acknowledged)
    finally:
        await db.close()
    report(capsys, "API with Redis, then Postgres, down", {"responses": statuses, **figures})
    assert statuses.get(202) and statuses.get(201) and statuses.get(503)
    assert (figures["lost"], figures["duplicated"], figures["pending"]) == (0, 0, 0)
