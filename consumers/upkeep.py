"""What a consumer group needs besides reading new entries (docs/FASTSTREAM.md), with redis-py:

* the group itself: created at the stream's start (entries XADDed before any consumer ran are
  read too), and created again, from the start, if someone deletes it under a running consumer
  (idempotent writes absorb the re-reads);
* this consumer's own pending entries, re-read at start (a crash, a kill, a clean stop mid-batch);
* other consumers' entries idle longer than `claim_idle_ms`, claimed in whole batches, after
  counting a failure for what a departed consumer was attempting when it died;
* the stream kept bounded: trimmed below the oldest entry any group still needs, never further;
* what others do to the stream made visible: entries trimmed before any consumer read them
  (counted, logged, and the group's read counter corrected so that its lag is right again), and
  entry ids ahead of this machine's clock (an explicit future id makes every later `*` id late);
* gauges of the stream's lag, pending entries, oldest pending age and the DLQ depth;
* consumers that left long ago with nothing pending forgotten (pid-named consumers pile up).
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial

import redis
import redis.asyncio as aioredis
import structlog

from app.core import metrics
from app.core.settings import Settings
from app.streams.attempts import marker_key
from app.streams.ids import as_text, entry_id_key, entry_id_seconds, entry_id_time
from consumers.ingestor import AuditIngestor
from consumers.reader import StreamReader

log = structlog.get_logger(__name__)

# A consumer with nothing pending that has not read for this long is gone for good.
DEPARTED_CONSUMER_IDLE_MS = 3_600_000


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> bool:
    """Creates the group at the stream's start unless it exists; returns whether it created it.

    The group starts having "read" what was trimmed before it existed (added − length), so its lag
    is exact from the start, and entries trimmed later before it read them show as lost (Redis
    leaves the counter unknown otherwise, and the lag with it)."""
    try:
        info = await client.xinfo_stream(stream)
    except redis.ResponseError:  # no stream yet
        info = {"entries-added": 0, "length": 0}
    already_gone = max(0, int(info.get("entries-added") or 0) - int(info["length"]))
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True, entries_read=already_gone)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
        return False
    return True


async def recreate_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """The group was deleted under us: back, from the start of what the stream still holds."""
    if await ensure_group(client, stream, group):
        metrics.STREAM_GROUP_RECREATED.inc()
        hint = "the group was deleted; entries still in the stream are read again (no-ops if stored)"
        log.error("consumer_group_recreated", stream=stream, group=group, hint=hint)


async def recover_own_pending(ingestor: AuditIngestor, reader: StreamReader) -> int:
    """Processes the entries this consumer name read but never acknowledged (a crash, a kill, a
    clean stop mid-batch), after counting a failure for what it was attempting if it died."""
    crashed = await ingestor.attempts.settle_crash_of(reader.consumer)
    if crashed:
        log.warning("previous_attempt_crashed", entries=crashed, consumer=reader.consumer)
    after = "0"
    total = 0
    # A stop (SIGTERM) during the recovery leaves the rest pending for the next start.
    while not ingestor.stopping.is_set():
        try:
            batch = await ingestor.read_and_process(partial(reader.read, "pending", after=after), redelivered=True)
        except redis.RedisError:
            if ingestor.stopping.is_set():  # the stop closed the connection under the read
                break
            raise
        if not batch.entries:
            break
        total += len(batch.entries)
        after = batch.entries[-1].id
    if total:
        log.info("own_pending_recovered", entries=total, consumer=reader.consumer)
    return total


async def claim_idle_entries(ingestor: AuditIngestor, reader: StreamReader, claim_idle_ms: int) -> int:
    """Claims and processes entries other consumers left pending longer than `claim_idle_ms`."""
    client, stream, group = reader.client, reader.stream, reader.group
    for consumer in await client.xinfo_consumers(stream, group):
        name = as_text(consumer["name"])
        if name != reader.consumer and consumer["pending"] and consumer["idle"] >= claim_idle_ms:
            crashed = await ingestor.attempts.settle_crash_of(name)
            if crashed:
                log.warning("departed_consumer_crashed", consumer=name, entries=crashed)
    start, total = "0-0", 0
    while True:
        batch = await ingestor.read_and_process(
            partial(reader.read, "claim", after=start, min_idle_ms=claim_idle_ms), redelivered=True
        )
        total += len(batch.entries)
        start = batch.next_claim_start
        if start == "0-0":
            break
    if total:
        log.info("idle_entries_claimed", entries=total, consumer=reader.consumer)
    return total


async def upkeep_stream(client: aioredis.Redis, settings: Settings) -> None:
    """Gauges, trimming, what others did to the stream, departed consumers: one round."""
    stream, group = settings.stream, settings.consumer_group
    groups = {as_text(g["name"]): g for g in await client.xinfo_groups(stream)}
    if group not in groups:
        await recreate_group(client, stream, group)
        return
    info = await client.xinfo_stream(stream)
    await correct_for_unread_trimmed(client, stream, group, info, groups[group])
    watch_entry_clock(info)

    needed_from = []
    lag = pending = 0
    oldest_age = 0.0
    for name, info_group in groups.items():
        summary = await client.xpending(stream, name)
        needed_from.append(_oldest_needed_id(info_group, summary))
        if name == group:
            lag, pending = info_group.get("lag") or 0, summary["pending"]
            oldest_age = time.time() - entry_id_seconds(as_text(summary["min"])) if pending else 0.0
    dlq_depth = await client.xlen(settings.dlq_stream)
    metrics.set_stream_figures(
        stream, settings.dlq_stream, metrics.StreamFigures(lag, pending, oldest_age, info["length"], dlq_depth)
    )
    if needed_from:
        # Approximate trimming removes whole nodes below the id only: never an entry at or above it.
        await client.xtrim(stream, minid=min(needed_from, key=entry_id_key), approximate=True)

    for consumer in await client.xinfo_consumers(stream, group):
        name = as_text(consumer["name"])
        departed = consumer["pending"] == 0 and consumer["idle"] > DEPARTED_CONSUMER_IDLE_MS
        if departed and name != settings.consumer_name:
            await client.xgroup_delconsumer(stream, group, name)
            await client.delete(marker_key(stream, name))
            log.info("departed_consumer_removed", consumer=name)


async def correct_for_unread_trimmed(
    client: aioredis.Redis, stream: str, group: str, info: dict, group_info: dict
) -> int:
    """Entries trimmed (XTRIM, MAXLEN) before the group read them vanish without a trace, and the
    group's lag counts them for ever. When everything the stream still holds is after the group's
    last delivered id, the difference between what was added and what was read is what vanished:
    count it, say so, and set the group's read counter so its lag is right again."""
    first = info.get("first-entry")
    added, read = info.get("entries-added"), group_info.get("entries-read")
    last_delivered = as_text(group_info["last-delivered-id"])
    if added is None or read is None:
        return 0
    if first is not None and entry_id_key(as_text(first[0])) <= entry_id_key(last_delivered):
        return 0
    vanished = int(added) - int(read) - int(info["length"])
    if vanished <= 0:
        return 0
    metrics.STREAM_ENTRIES_LOST.inc(vanished)
    log.error("unread_entries_trimmed", stream=stream, group=group, entries=vanished,
              hint="someone trimmed the stream below entries no consumer had read; those events are lost")  # fmt: skip
    await client.execute_command("XGROUP", "SETID", stream, group, last_delivered, "ENTRIESREAD", int(read) + vanished)
    return vanished


def watch_entry_clock(info: dict) -> float:
    """How far the stream's newest entry id is ahead of this machine's clock (0 when it is not)."""
    last = info.get("last-generated-id")
    ahead = max(0.0, entry_id_time(as_text(last)).timestamp() - time.time()) if last else 0.0
    metrics.STREAM_ENTRY_IDS_AHEAD.set(ahead)
    return ahead


def _oldest_needed_id(group: dict, pending_summary: dict) -> str:
    """The smallest id a group may still need: its oldest pending entry, else the one after the
    last it was given (everything up to that one is acknowledged)."""
    if pending_summary["pending"]:
        return as_text(pending_summary["min"])
    millis, sequence = as_text(group["last-delivered-id"]).split("-")
    return f"{millis}-{int(sequence) + 1}"


async def run_periodically(name: str, interval_s: float, stop: asyncio.Event, work: Callable[[], Awaitable]) -> None:
    """Runs `work()` every `interval_s` until `stop`; a failed round is logged and tried again."""
    while not stop.is_set():
        try:
            await work()
        except Exception as error:  # noqa: BLE001 - a background loop must outlive any one failure
            log.warning(f"{name}_failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
