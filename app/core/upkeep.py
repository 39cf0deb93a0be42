"""The last success of each periodic upkeep task, kept in Postgres (`upkeep_runs`, schema/007).

A Kubernetes CronJob (`datastorage partitions ensure`) finishes before Prometheus could scrape
it, so its success is recorded in the database, and every long-running process (API, consumer)
reads the record periodically and exports it as
`datastorage_upkeep_last_success_timestamp_seconds{task}`: an alert fires when it grows old.
"""

import asyncio
import contextlib
import json
from typing import Any

import asyncpg
import structlog

from app.core import metrics

log = structlog.get_logger(__name__)

PARTITIONS_ENSURE = "partitions_ensure"
TASKS = (PARTITIONS_ENSURE,)
REFRESH_INTERVAL_S = 60.0


async def record_success(conn: asyncpg.Connection, task: str, **detail: Any) -> None:
    """Records that `task` succeeded now (a no-op on a schema older than schema/007)."""
    if not await conn.fetchval("SELECT to_regclass('upkeep_runs') IS NOT NULL"):
        return
    await conn.execute(
        "INSERT INTO upkeep_runs (task, last_success_at, detail) VALUES ($1, now(), $2::jsonb) "
        "ON CONFLICT (task) DO UPDATE SET last_success_at = EXCLUDED.last_success_at, detail = EXCLUDED.detail",
        task,
        json.dumps(detail),
    )


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """Sets the gauge of every task from the database (0: never succeeded, so the alert fires)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task, extract(epoch FROM last_success_at)::float8 AS at FROM upkeep_runs "
            "WHERE task = ANY($1::text[])",
            list(TASKS),
        )
    found = {row["task"]: row["at"] for row in rows}
    for task in TASKS:
        metrics.UPKEEP_LAST_SUCCESS.labels(task).set(found.get(task, 0.0))


async def keep_gauges_fresh(pool: asyncpg.Pool, stop: asyncio.Event, interval_s: float = REFRESH_INTERVAL_S) -> None:
    """Refreshes the gauges at once, then every `interval_s`, until `stop`; a failed read (Postgres
    away, schema not migrated yet) leaves the last values and is tried again."""
    while not stop.is_set():
        try:
            await refresh_gauges(pool)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.debug("upkeep_gauges_not_refreshed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
