"""Counting the failures an entry causes, not the times it is delivered (issue 12).

Redis counts every delivery, and a consumer re-reading its own pending entries after a clean
restart is a delivery: five rollouts during a Postgres outage used to dead-letter every valid event
a consumer held as `max_deliveries`. What should count is a delivery that ended in a failure the
entry may have caused: the process died while working on it (SIGKILL, OOM), or an unexpected error
escaped the batch.

So each consumer keeps an in-flight marker, `<stream>:inflight:<consumer>`, naming the entries it
is working on: set with the read (consumers/reader.py does it in the same script), cleared when the
batch is done, and cleared while a batch only waits for Postgres to come back. A marker found
later — at the consumer's restart, or when another consumer claims a departed one's entries —
means the process died during the attempt, and each entry still pending gets one failure in the
hash `<stream>:failures`. An entry with `max_deliveries` failures is dead-lettered, so an entry that
kills every consumer that reads it ends in the DLQ instead of being retried for ever.
"""

from collections.abc import Iterable

import redis.asyncio as aioredis

from app.streams.ids import as_text

# KEYS: stream, marker, failures. ARGV: group, consumer whose marker it is. Counts a failure for
# each entry of the marker that is still pending for that consumer; deletes the marker.
_SETTLE_SCRIPT = """
local stream, marker, failures = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local ids = redis.call('GET', marker)
if not ids then return 0 end
local counted = 0
for id in string.gmatch(ids, '[^,]+') do
    if #redis.call('XPENDING', stream, group, id, id, 1, consumer) == 1 then
        redis.call('HINCRBY', failures, id, 1)
        counted = counted + 1
    end
end
redis.call('DEL', marker)
return counted
"""


def _in_slot_of(stream: str) -> str:
    """A key prefix in the stream's cluster slot: a shard's name has its hash tag ({k}); the plain
    stream's name becomes one, since the scripts take the stream and these keys together."""
    return stream if "{" in stream else f"{{{stream}}}"


def marker_key(stream: str, consumer: str) -> str:
    return f"{_in_slot_of(stream)}:inflight:{consumer}"


def failures_key(stream: str) -> str:
    return f"{_in_slot_of(stream)}:failures"


class Attempts:
    """One consumer's bookkeeping of its attempts on one stream."""

    def __init__(self, client: aioredis.Redis, stream: str, group: str, consumer: str):
        self.client, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.marker = marker_key(stream, consumer)
        self.failures = failures_key(stream)
        self._settle = client.register_script(_SETTLE_SCRIPT)

    async def begin(self, entry_ids: Iterable[str]) -> None:
        """An attempt on these entries starts (again): a crash from now on counts against them."""
        await self.client.set(self.marker, ",".join(entry_ids))

    async def pause(self) -> None:
        """The batch only waits (for Postgres, at shutdown): dying now is not the entries' fault."""
        await self.client.delete(self.marker)

    async def settle_crash_of(self, consumer: str) -> int:
        """Counts a failure for each entry `consumer` was attempting when it died; returns how many."""
        counted: int = await self._settle(
            keys=[self.stream, marker_key(self.stream, consumer), self.failures], args=[self.group, consumer]
        )
        return counted

    async def count_failure(self, entry_ids: Iterable[str]) -> None:
        """An unexpected error escaped the attempt: it counts like a crash."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hincrby(self.failures, entry_id, 1)
            await pipe.execute()

    async def failures_of(self, entry_ids: list[str]) -> dict[str, int]:
        if not entry_ids:
            return {}
        counts = await self.client.hmget(self.failures, entry_ids)
        return {entry_id: int(count) for entry_id, count in zip(entry_ids, counts, strict=True) if count}

    async def forget(self, entry_ids: Iterable[str]) -> None:
        """The entries are stored or dead-lettered: their failure counts go."""
        ids = list(entry_ids)
        if ids:
            await self.client.hdel(self.failures, *ids)


def consumer_of_marker(key: str | bytes, stream: str) -> str:
    return as_text(key).removeprefix(f"{_in_slot_of(stream)}:inflight:")
