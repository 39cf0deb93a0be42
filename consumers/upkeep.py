"""What FastStream's group subscriber does not do (docs/FASTSTREAM.md), done with redis-py:

* re-read this consumer's own pending entries at start (the subscriber only reads `>`);
* claim other consumers' entries idle longer than `claim_idle_ms` (XAUTOCLAIM, whole batches);
* keep the stream bounded: trim below the oldest entry any group still needs, never further;
* publish the stream's lag, pending count, oldest pending age and DLQ depth as gauges;
* forget consumers that left long ago with nothing pending (pid-named consumers pile up).
"""

import asyncio
import contextlib
import time

import redis
import redis.asyncio as aioredis
import structlog

from app.core import metrics
from app.core.settings import Settings
from app.streams.ids import as_text, entry_id_key, entry_id_time
from consumers.ingestor import AuditIngestor, Entry, entries_from_redis

log = structlog.get_logger(__name__)

# A consumer with nothing pending that has not read for this long is gone for good.
DEPARTED_CONSUMER_IDLE_MS = 3_600_000


async def ensure_group(client: aioredis.Redis, settings: Settings) -> None:
    """Creates the group at the stream's start, so entries XADDed before any consumer ever ran are
    read too (FastStream would create it at `$`, skipping them)."""
    try:
        await client.xgroup_create(settings.stream, settings.consumer_group, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def recover_own_pending(ingestor: AuditIngestor) -> int:
    """Processes the entries this consumer name read but never acknowledged (a crash, a kill)."""
    settings, client = ingestor.settings, ingestor.redis
    after = "0"
    total = 0

    async def read_page() -> list[Entry]:
        nonlocal after
        response = await client.xreadgroup(
            settings.consumer_group, settings.consumer_name, {settings.stream: after}, count=settings.batch_max_records
        )
        entries = entries_from_redis(response[0][1]) if response else []
        if entries:
            after = entries[-1].id
        return entries

    while count := await ingestor.read_and_process(read_page):
        total += count
    if total:
        log.info("own_pending_recovered", entries=total, consumer=settings.consumer_name)
    return total


async def claim_idle_entries(ingestor: AuditIngestor) -> int:
    """Claims and processes entries other consumers left pending longer than claim_idle_ms."""
    settings, client = ingestor.settings, ingestor.redis
    start = "0-0"
    done = False
    total = 0

    async def claim_page() -> list[Entry]:
        nonlocal start, done
        next_start, claimed, *rest = await client.xautoclaim(
            settings.stream,
            settings.consumer_group,
            settings.consumer_name,
            min_idle_time=settings.claim_idle_ms,
            start_id=start,
            count=settings.batch_max_records,
        )
        start = as_text(next_start)
        done = start == "0-0"
        # Redis drops ids whose entry was deleted from the pending list itself and names them.
        deleted = [Entry(as_text(i), None) for i in (rest[0] if rest else [])]
        return entries_from_redis(claimed) + deleted

    while not done:
        total += await ingestor.read_and_process(claim_page)
    if total:
        log.info("idle_entries_claimed", entries=total, consumer=settings.consumer_name)
    return total


async def upkeep_stream(client: aioredis.Redis, settings: Settings) -> None:
    """Gauges, trimming and departed consumers: one round."""
    needed_from = []
    for group in await client.xinfo_groups(settings.stream):
        name = as_text(group["name"])
        summary = await client.xpending(settings.stream, name)
        needed_from.append(_oldest_needed_id(group, summary))
        if name == settings.consumer_group:
            metrics.STREAM_LAG.set(group.get("lag") or 0)
            metrics.STREAM_PENDING.set(summary["pending"])
            metrics.STREAM_OLDEST_PENDING_AGE.set(
                time.time() - entry_id_time(as_text(summary["min"])).timestamp() if summary["pending"] else 0
            )
    metrics.STREAM_LENGTH.set(await client.xlen(settings.stream))
    metrics.DLQ_DEPTH.set(await client.xlen(settings.dlq_stream))

    if needed_from:
        # Approximate trimming removes whole nodes below the id only: never an entry at or above it.
        await client.xtrim(settings.stream, minid=min(needed_from, key=entry_id_key), approximate=True)

    for consumer in await client.xinfo_consumers(settings.stream, settings.consumer_group):
        name = as_text(consumer["name"])
        departed = consumer["pending"] == 0 and consumer["idle"] > DEPARTED_CONSUMER_IDLE_MS
        if departed and name != settings.consumer_name:
            await client.xgroup_delconsumer(settings.stream, settings.consumer_group, name)
            log.info("departed_consumer_removed", consumer=name)


def _oldest_needed_id(group: dict, pending_summary: dict) -> str:
    """The smallest id a group may still need: its oldest pending entry, else the one after the
    last it was given (everything up to that one is acknowledged)."""
    if pending_summary["pending"]:
        return as_text(pending_summary["min"])
    millis, sequence = as_text(group["last-delivered-id"]).split("-")
    return f"{millis}-{int(sequence) + 1}"


async def run_periodically(name: str, interval_s: float, stop: asyncio.Event, work) -> None:
    """Runs `work()` every `interval_s` until `stop`; a failed round is logged and tried again."""
    while not stop.is_set():
        try:
            await work()
        except Exception as error:  # noqa: BLE001 - a background loop must outlive any one failure
            log.warning(f"{name}_failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
