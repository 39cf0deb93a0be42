"""What an operator does with the streams: look at them, and repair the DLQ.

Replaying a dead letter XADDs its original fields to the audit stream and deletes it from the DLQ
in one MULTI/EXEC: it is in one stream or the other, never in neither. A replayed entry keeps its
identity: when the producer sent no `event_id`/`event_timestamp`, the ones derived from the
original entry are added, so the row is the one the first delivery would have made.
"""

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from app.audit.wire import derived_event_id
from app.streams.dlq import original_fields
from app.streams.ids import as_text, entry_id_time
from app.streams.keys import StreamKeys


async def stream_status(client: aioredis.Redis, keys: StreamKeys) -> dict:
    status = {
        "stream": keys.stream,
        "length": await client.xlen(keys.stream),
        "dlq_stream": keys.dlq,
        "dlq_depth": await client.xlen(keys.dlq),
        "groups": [],
    }
    if not await client.exists(keys.stream):
        return status
    for group in await client.xinfo_groups(keys.stream):
        name = as_text(group["name"])
        pending = await client.xpending(keys.stream, name)
        oldest = as_text(pending["min"]) if pending["pending"] else None
        consumers = await client.xinfo_consumers(keys.stream, name)
        status["groups"].append(
            {
                "name": name,
                "lag": group.get("lag"),
                "pending": pending["pending"],
                "oldest_pending_id": oldest,
                "oldest_pending_age_s": round(time.time() - entry_id_time(oldest).timestamp(), 1) if oldest else None,
                "last_delivered_id": as_text(group["last-delivered-id"]),
                "consumers": [
                    {"name": as_text(c["name"]), "pending": c["pending"], "idle_s": round(c["idle"] / 1000, 1)}
                    for c in consumers
                ],
            }
        )
    return status


@dataclass(frozen=True)
class DeadLetterEntry:
    id: str
    fields: dict[bytes, bytes]

    @property
    def reason(self) -> str:
        return as_text(self.fields.get(b"dlq_reason", b""))

    def as_text(self) -> dict[str, str]:
        return {as_text(k): as_text(v) for k, v in self.fields.items()}


async def iterate_dlq(
    client: aioredis.Redis, dlq_stream: str, *, reason: str | None = None, page: int = 500
) -> AsyncIterator[DeadLetterEntry]:
    start = "-"
    while True:
        entries = await client.xrange(dlq_stream, min=start, count=page)
        for entry_id, fields in entries:
            entry = DeadLetterEntry(as_text(entry_id), fields)
            if reason is None or entry.reason == reason:
                yield entry
        if len(entries) < page:
            return
        start = "(" + as_text(entries[-1][0])


async def dlq_list(
    client: aioredis.Redis, dlq_stream: str, *, reason: str | None = None, limit: int = 50
) -> list[DeadLetterEntry]:
    found = []
    async for entry in iterate_dlq(client, dlq_stream, reason=reason):
        found.append(entry)
        if len(found) >= limit:
            break
    return found


async def dlq_show(client: aioredis.Redis, dlq_stream: str, entry_id: str) -> DeadLetterEntry | None:
    entries = await client.xrange(dlq_stream, min=entry_id, max=entry_id)
    return DeadLetterEntry(as_text(entries[0][0]), entries[0][1]) if entries else None


def replay_fields(entry: DeadLetterEntry) -> dict[bytes, bytes]:
    """The original fields, with the identity the original entry gave them where they had none."""
    fields = original_fields(entry.fields)
    source_stream = as_text(entry.fields.get(b"source_stream", b""))
    source_id = as_text(entry.fields.get(b"source_id", b""))
    if source_id and source_stream:
        if not fields.get(b"event_id"):
            fields[b"event_id"] = str(derived_event_id(source_stream, source_id)).encode()
        if not fields.get(b"event_timestamp"):
            fields[b"event_timestamp"] = entry_id_time(source_id).isoformat().encode()
    return fields


async def dlq_replay(
    client: aioredis.Redis,
    keys: StreamKeys,
    entries: list[DeadLetterEntry],
    on_progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Moves `entries` back to the audit stream; returns how many moved."""
    moved = 0
    for entry in entries:
        fields = replay_fields(entry)
        if not fields:  # a record of a deleted entry: nothing to replay
            continue
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.stream, fields)
            pipe.xdel(keys.dlq, entry.id)
            await pipe.execute()
        moved += 1
        on_progress(1)
    return moved


async def dlq_purge(client: aioredis.Redis, dlq_stream: str, *, reason: str | None = None) -> int:
    ids = [entry.id async for entry in iterate_dlq(client, dlq_stream, reason=reason)]
    for offset in range(0, len(ids), 500):
        await client.xdel(dlq_stream, *ids[offset : offset + 500])
    return len(ids)
