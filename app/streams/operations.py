"""What an operator does with the streams: look at them, and repair the DLQ, across every shard.

With a sharded stream (app/streams/keys.py) the plain stream and each shard have a dead-letter
stream of their own, and entry ids of different shards can be equal: a dead letter in a shard's DLQ
is named `<shard>:<entry id>` (`2:1764091800123-0`), one in the plain `audit_dlq` by its entry id
alone. A bare entry id also finds a dead letter in a shard's DLQ when exactly one DLQ holds it.

Replaying a dead letter XADDs its original fields to the stream its DLQ belongs to and deletes it
from the DLQ in one MULTI/EXEC (a shard and its DLQ share a slot): it is in one stream or the other,
never in neither. On a Redis Cluster the plain `audit_events` and `audit_dlq` are in two slots,
which no MULTI can span: there the XADD comes first and the XDEL second, so a crash between the
two leaves the event in both, and it is still stored once, because a replayed entry keeps its
identity: when the producer sent no `event_id`/`event_timestamp`, the ones derived from the
original entry are added, so the row is the one the first delivery would have made.
"""

import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.audit.wire import derived_event_id
from app.core.redis_client import RedisClient
from app.streams.dlq import NOT_REPLAYABLE, original_fields
from app.streams.ids import as_text, entry_id_key, entry_id_time
from app.streams.keys import StreamKeys, StreamShard

_ENTRY_ID = re.compile(r"^\d+-\d+$")


def entry_name(shard: int | None, entry_id: str) -> str:
    """How an operator names an entry of a shard (`2:1764091800123-0`) or of the plain stream."""
    return entry_id if shard is None else f"{shard}:{entry_id}"


def parse_entry_name(name: str) -> tuple[int | None, str]:
    """`2:1764091800123-0` → (2, "1764091800123-0"); a bare entry id → (None, id)."""
    shard_text, _, entry_id = name.strip().rpartition(":")
    if not _ENTRY_ID.match(entry_id) or (shard_text and not shard_text.isdigit()):
        raise ValueError(
            f"{name!r} is not a dead letter's name (an entry id such as 1764091800123-0, "
            "or shard:id such as 2:1764091800123-0)"
        )
    return (int(shard_text) if shard_text else None), entry_id


# --- stream status --------------------------------------------------------------------------


async def stream_status(client: RedisClient, keys: StreamKeys) -> dict:
    """Every stream the consumers read (the plain one, then the shards) with its groups and DLQ,
    and the totals. With one stream the top level is that stream's status, as it always was."""
    streams = [await shard_status(client, shard) for shard in keys.read_shards]
    return {
        "stream": keys.stream,
        "shards": keys.shards,
        "length": sum(s["length"] for s in streams),
        "dlq_stream": keys.dlq,
        "dlq_depth": sum(s["dlq_depth"] for s in streams),
        "groups": streams[0]["groups"] if len(streams) == 1 else _merge_groups(streams),
        "streams": streams,
    }


async def shard_status(client: RedisClient, shard: StreamShard) -> dict:
    status: dict[str, Any] = {
        "shard": shard.index,
        "stream": shard.stream,
        "length": await client.xlen(shard.stream),
        "dlq_stream": shard.dlq,
        "dlq_depth": await client.xlen(shard.dlq),
        "groups": [],
    }
    if isinstance(client, aioredis.RedisCluster):
        # Where the shard lives: how the hash tags spread over the masters (docs/SCALING.md).
        status["node"] = client.get_node_from_key(shard.stream).name
    if not await client.exists(shard.stream):
        return status
    last_id = as_text((await client.xinfo_stream(shard.stream))["last-generated-id"])
    # An explicit future id (XADD key <future>-0 …) makes every later `*` id that late: shown here,
    # as datastorage_stream_entry_ids_ahead_seconds and an alert.
    status["entry_ids_ahead_s"] = round(max(0.0, entry_id_time(last_id).timestamp() - time.time()), 1)
    for group in await client.xinfo_groups(shard.stream):
        name = as_text(group["name"])
        pending = await client.xpending(shard.stream, name)
        oldest = as_text(pending["min"]) if pending["pending"] else None
        consumers = await client.xinfo_consumers(shard.stream, name)
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


def _merge_groups(streams: list[dict]) -> list[dict]:
    """A group over every stream: lag and pending summed, the oldest pending entry (named by
    shard), each consumer's pending summed and its shortest idle time."""
    merged: dict[str, dict] = {}
    for stream in streams:
        for group in stream["groups"]:
            total = merged.setdefault(
                group["name"],
                {
                    "name": group["name"],
                    "lag": 0,
                    "pending": 0,
                    "oldest_pending_id": None,
                    "oldest_pending_age_s": None,
                    "consumers": {},
                },
            )
            # Redis cannot always tell the lag (after deletions): then neither can the total.
            total["lag"] = None if total["lag"] is None or group["lag"] is None else total["lag"] + group["lag"]
            total["pending"] += group["pending"]
            age = group["oldest_pending_age_s"]
            if age is not None and (total["oldest_pending_age_s"] is None or age > total["oldest_pending_age_s"]):
                total["oldest_pending_age_s"] = age
                total["oldest_pending_id"] = entry_name(stream["shard"], group["oldest_pending_id"])
            for consumer in group["consumers"]:
                seen = total["consumers"].setdefault(consumer["name"], {**consumer, "pending": 0})
                seen["pending"] += consumer["pending"]
                seen["idle_s"] = min(seen["idle_s"], consumer["idle_s"])
    return [{**group, "consumers": list(group["consumers"].values())} for group in merged.values()]


# --- dead letters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterEntry:
    id: str
    fields: dict[bytes, bytes]
    # The shard whose DLQ holds it (None: the plain audit_dlq).
    shard: int | None = None

    @property
    def name(self) -> str:
        return entry_name(self.shard, self.id)

    @property
    def reason(self) -> str:
        return as_text(self.fields.get(b"dlq_reason", b""))

    @property
    def replayable(self) -> bool:
        """Whether it holds the original entry (a deleted entry's or an oversized one's does not)."""
        return self.reason not in NOT_REPLAYABLE

    def as_text(self) -> dict[str, str]:
        return {as_text(k): as_text(v) for k, v in self.fields.items()}


class AmbiguousDeadLetter(ValueError):
    """A bare entry id that more than one shard's DLQ holds."""


async def iterate_dlq(
    client: RedisClient, dlq_stream: str, *, reason: str | None = None, page: int = 500, shard: int | None = None
) -> AsyncIterator[DeadLetterEntry]:
    start = "-"
    while True:
        entries = await client.xrange(dlq_stream, min=start, count=page)
        for entry_id, fields in entries:
            entry = DeadLetterEntry(as_text(entry_id), fields, shard)
            if reason is None or entry.reason == reason:
                yield entry
        if len(entries) < page:
            return
        start = "(" + as_text(entries[-1][0])


async def iterate_dead_letters(
    client: RedisClient, keys: StreamKeys, *, reason: str | None = None
) -> AsyncIterator[DeadLetterEntry]:
    """Every dead letter of every DLQ (the plain one, then each shard's), each DLQ oldest first."""
    for shard in keys.read_shards:
        async for entry in iterate_dlq(client, shard.dlq, reason=reason, shard=shard.index):
            yield entry


async def dlq_list(
    client: RedisClient, keys: StreamKeys, *, reason: str | None = None, limit: int = 50
) -> list[DeadLetterEntry]:
    """The oldest `limit` dead letters over every DLQ (by the time Redis gave them their ids)."""
    found: list[DeadLetterEntry] = []
    for shard in keys.read_shards:
        taken = 0
        async for entry in iterate_dlq(client, shard.dlq, reason=reason, shard=shard.index):
            found.append(entry)
            taken += 1
            if taken >= limit:
                break
    found.sort(key=lambda e: (entry_id_key(e.id), -1 if e.shard is None else e.shard))
    return found[:limit]


async def dlq_show(client: RedisClient, keys: StreamKeys, name: str) -> DeadLetterEntry | None:
    """The dead letter named `name` (`shard:id`, or an entry id); None when there is none.
    Raises ValueError for a malformed name or a shard that is not configured, and
    AmbiguousDeadLetter for a bare id that several shards' DLQs hold."""
    shard_index, entry_id = parse_entry_name(name)
    shards = [keys.shard(shard_index)] if shard_index is not None else keys.read_shards
    found = [entry for shard in shards if (entry := await _dlq_entry(client, shard, entry_id)) is not None]
    if len(found) > 1:
        raise AmbiguousDeadLetter(f"{entry_id} is in several DLQs: name one of {', '.join(e.name for e in found)}")
    return found[0] if found else None


async def _dlq_entry(client: RedisClient, shard: StreamShard, entry_id: str) -> DeadLetterEntry | None:
    entries = await client.xrange(shard.dlq, min=entry_id, max=entry_id)
    return DeadLetterEntry(as_text(entries[0][0]), entries[0][1], shard.index) if entries else None


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
    client: RedisClient,
    keys: StreamKeys,
    entries: list[DeadLetterEntry],
    on_progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Moves `entries` back to the streams their DLQs belong to; returns how many moved."""
    moved = 0
    for entry in entries:
        fields = replay_fields(entry) if entry.replayable else {}
        if not fields:  # a record of what was lost, not the entry: replayed it could only fail again
            continue
        shard = keys.shard(entry.shard)
        # One MULTI on a plain Redis, or on a cluster when the two keys share a slot.
        if not isinstance(client, aioredis.RedisCluster) or shard.dlq_in_same_slot:
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(shard.stream, fields)
                pipe.xdel(shard.dlq, entry.id)
                await pipe.execute()
        else:
            await client.xadd(shard.stream, fields)
            await client.xdel(shard.dlq, entry.id)
        moved += 1
        on_progress(1)
    return moved


async def dlq_purge(client: RedisClient, keys: StreamKeys, *, reason: str | None = None) -> int:
    purged = 0
    for shard in keys.read_shards:
        ids = [entry.id async for entry in iterate_dlq(client, shard.dlq, reason=reason)]
        for offset in range(0, len(ids), 500):
            await client.xdel(shard.dlq, *ids[offset : offset + 500])
        purged += len(ids)
    return purged
