"""Reading the audit stream as the consumer group, in batches bounded by bytes as well as entries.

XREADGROUP and XAUTOCLAIM have no byte limit: five 40 MB entries in one reply took a consumer to
355 MB. So every read runs in one Lua script on the Redis server that reads (new entries, this
consumer's pending ones, or idle ones claimed from others), and returns an entry larger than the
limit cut to a few hundred bytes per field with its size and a digest of the original instead of
the entry itself: the consumer never holds an oversized entry, and dead-letters it as `too_large`.
The same script records which entries this consumer is now attempting (the in-flight marker of
app/streams/attempts.py), atomically with the read. The number of entries asked for adapts to the
sizes seen, so a batch stays within `batch_max_bytes`.
"""

from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis

from app.streams.ids import as_text

# KEYS: stream, in-flight marker. ARGV: mode (new | pending | claim), group, consumer, count,
# largest entry in bytes, bytes kept per field of a larger one, marker (set | append: the batch
# joins one still in hand), then for pending: the id after which to read; for claim: the minimum
# idle time and the id to start from.
# Returns {entries, next claim start id, ids of claimed entries that were deleted}; an entry is
# {id, fields, size} or, when larger than the limit, {id, cut fields, size, sha1 of field sha1s};
# a deleted one (still pending, no longer in the stream) is {id, {}, 0}.
_READ_SCRIPT = """
local stream, marker = KEYS[1], KEYS[2]
local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local count, limit, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local entries, next_start, deleted = {}, '0-0', {}
if mode == 'claim' then
    local reply = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[8], ARGV[9], 'COUNT', count)
    entries, next_start, deleted = reply[2], reply[1], reply[3] or {}
else
    local after = mode == 'new' and '>' or ARGV[8]
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, after)
    if reply then entries = reply[1][2] end
end
local out, ids = {}, {}
for _, entry in ipairs(entries) do
    local id, fields = entry[1], entry[2]
    ids[#ids + 1] = id
    if not fields then
        out[#out + 1] = {id, {}, 0}
    else
        local size = 0
        for i = 1, #fields do size = size + #fields[i] end
        if size > limit then
            local cut, digests = {}, {}
            for i = 1, #fields do
                cut[i] = string.sub(fields[i], 1, keep)
                digests[i] = redis.sha1hex(fields[i])
            end
            out[#out + 1] = {id, cut, size, redis.sha1hex(table.concat(digests))}
        else
            out[#out + 1] = {id, fields, size}
        end
    end
end
for _, id in ipairs(deleted) do ids[#ids + 1] = id end
if #ids > 0 then
    if ARGV[7] == 'append' then
        redis.call('APPEND', marker, ',' .. table.concat(ids, ','))
    else
        redis.call('SET', marker, table.concat(ids, ','))
    end
end
return {out, next_start, deleted}
"""


@dataclass(frozen=True)
class Entry:
    id: str
    # Empty when the entry was deleted from the stream while pending.
    fields: dict[bytes, bytes]
    size: int = 0
    # Set when the entry was larger than the limit: `fields` are cut, this is the original's digest.
    oversized_digest: str | None = None


@dataclass(frozen=True)
class Read:
    entries: list[Entry]
    # XAUTOCLAIM's cursor: where the next claim starts ("0-0" once the pending list is done).
    next_claim_start: str = "0-0"


class StreamReader:
    """Reads batches of one stream for one consumer of the group."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        marker_key: str,
        *,
        max_records: int,
        max_bytes: int,
        max_entry_bytes: int,
        kept_bytes_per_field: int = 256,
    ):
        self.client = client
        self.stream, self.group, self.consumer, self.marker_key = stream, group, consumer, marker_key
        self.max_records, self.max_bytes, self.max_entry_bytes = max_records, max_bytes, max_entry_bytes
        self.kept_bytes_per_field = kept_bytes_per_field
        self._script = client.register_script(_READ_SCRIPT)
        # Bytes per entry as last seen (the largest of a batch, decaying): how many to ask for.
        self._entry_bytes = 1024

    def next_count(self) -> int:
        return max(1, min(self.max_records, self.max_bytes // max(1, self._entry_bytes)))

    async def read(
        self,
        mode: Literal["new", "pending", "claim"],
        *,
        after: str = "0",
        min_idle_ms: int = 0,
        joins_batch_in_hand: bool = False,
    ) -> Read:
        """Reads a batch and marks it in flight; `joins_batch_in_hand` keeps the ids of the batch
        still being written in the marker too (the read loop reads ahead, consumers/ingestor.py)."""
        extra = [after] if mode == "pending" else [min_idle_ms, after] if mode == "claim" else []
        reply = await self._script(
            keys=[self.stream, self.marker_key],
            args=[mode, self.group, self.consumer, self.next_count(), self.max_entry_bytes,
                  self.kept_bytes_per_field, "append" if joins_batch_in_hand else "set", *extra],
        )  # fmt: skip
        raw_entries, next_start, _deleted = reply
        entries = [_entry(raw) for raw in raw_entries]
        entries += [Entry(as_text(entry_id), {}) for entry_id in _deleted]
        self._observe([e.size for e in entries if e.oversized_digest is None])
        return Read(entries, as_text(next_start))

    def _observe(self, sizes: list[int]) -> None:
        if sizes:
            largest = max(sizes)
            # Up at once, down slowly: a batch of large entries is followed by more of them.
            self._entry_bytes = largest if largest > self._entry_bytes else (3 * self._entry_bytes + largest) // 4


def _entry(raw: list) -> Entry:
    entry_id, flat, size, *digest = raw
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    return Entry(as_text(entry_id), fields, int(size), as_text(digest[0]) if digest else None)
