"""The Redis keys of the audit stream: the stream or its shards, each one's dead-letter stream, the
consumer group, and which shard an event goes to. Every name is derived here.

With one shard (the default, cluster or not) the keys are `audit_events` and `audit_dlq`. With N > 1
(`DATASTORAGE_STREAM_SHARDS`) events go to `audit_events:{0}` … `audit_events:{N-1}` and a shard's
dead letters to `audit_dlq:{k}`: the hash tag `{k}` puts a shard and its dead letters in one Redis
Cluster slot, so the dead-letter script and the replay's MULTI touch one slot. The plain
`audit_events` is still read, so producers that know of one stream (and every redis-cli recipe)
keep working; its dead letters go to `audit_dlq`.

The shard of an event is `crc32(correlation_id as UTF-8) mod N`, so one remediation's events stay in
one stream, in order; an event without a correlation id may go to any shard.
"""

import random
import zlib
from dataclasses import dataclass

from redis.crc import key_slot


def same_slot(*keys: str) -> bool:
    """Whether a Redis Cluster takes these keys in one MULTI/EXEC or one script (one hash slot).
    A shard and its DLQ always do; the plain `audit_events` and `audit_dlq` do not."""
    return len({key_slot(key.encode()) for key in keys}) == 1


@dataclass(frozen=True)
class StreamShard:
    """One stream the consumers read and the dead-letter stream of its entries. `index` is None for
    the plain stream."""

    index: int | None
    stream: str
    dlq: str

    @property
    def dlq_in_same_slot(self) -> bool:
        """On a Redis Cluster: can the dead-letter script (and a replay's MULTI) hold both keys?"""
        return same_slot(self.stream, self.dlq)


@dataclass(frozen=True)
class StreamKeys:
    stream: str = "audit_events"
    dlq: str = "audit_dlq"
    group: str = "datastorage"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("there is at least one stream shard")

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def shard_stream(self, index: int) -> str:
        return f"{self.stream}:{{{index}}}"

    def shard_dlq(self, index: int) -> str:
        return f"{self.dlq}:{{{index}}}"

    @property
    def plain(self) -> StreamShard:
        return StreamShard(None, self.stream, self.dlq)

    def shard(self, index: int | None) -> StreamShard:
        """Shard `index` (None: the plain stream); an index beyond the configured shards is refused."""
        if index is None:
            return self.plain
        if not self.sharded or not 0 <= index < self.shards:
            raise ValueError(f"no stream shard {index} (DATASTORAGE_STREAM_SHARDS={self.shards})")
        return StreamShard(index, self.shard_stream(index), self.shard_dlq(index))

    @property
    def read_shards(self) -> tuple[StreamShard, ...]:
        """Every stream the consumers read, each with its DLQ: the plain stream, then the shards."""
        if not self.sharded:
            return (self.plain,)
        return (self.plain, *(self.shard(index) for index in range(self.shards)))

    def shard_index(self, correlation_id: str | None) -> int:
        """crc32 of the correlation id's UTF-8 bytes, mod N; a random shard when there is none."""
        if not correlation_id:
            return random.randrange(self.shards)
        return zlib.crc32(correlation_id.encode("utf-8")) % self.shards

    def stream_for(self, correlation_id: str | None) -> str:
        """The stream a producer XADDs an event with this correlation id to."""
        if not self.sharded:
            return self.stream
        return self.shard_stream(self.shard_index(correlation_id))
