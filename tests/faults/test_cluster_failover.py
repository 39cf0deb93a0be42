"""A Redis Cluster master killed under load: what an acknowledged XADD can lose when replication is
asynchronous, and that the producer's WAIT-backed option loses nothing it acknowledged.

Two producers write the same shard at the same time, one acknowledged by the master's answer, one
by WAIT 1 (a replica has it). The shard's master is killed (SIGKILL) and its replica promoted; in
the second case the replica is paused for a moment first, as a slow or partitioned replica is,
so that the master acknowledges writes the replica never gets.
"""

import asyncio
import time
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from app.producer import AuditProducer, NotReplicated
from app.streams.keys import StreamKeys
from tests.helpers import SCALE, event, report, wait_for

pytestmark = pytest.mark.faults

SHARDS = 3
SHARD = 0


@dataclass
class ShardLoad:
    """Publishes `rate` events/s, 20 per pipeline, to shard SHARD; keeps the event_id of every
    event the producer was told is safe."""

    url: str
    wait_replicas: int
    rate: int = 1000
    acknowledged: set = field(default_factory=set)
    not_replicated: int = 0
    failed: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        keys = StreamKeys(shards=SHARDS)
        correlations = [c for c in (f"rem-{n}" for n in range(200)) if keys.shard_index(c) == SHARD]
        client = aioredis.RedisCluster.from_url(self.url, socket_timeout=1, socket_connect_timeout=0.5)
        producer = AuditProducer(client, shards=SHARDS, wait_replicas=self.wait_replicas, wait_timeout_ms=200)
        started, sent = time.monotonic(), 0
        try:
            while not stop.is_set():
                batch = [
                    event(sent + i, correlation_id=correlations[(sent + i) % len(correlations)]) for i in range(20)
                ]
                try:
                    await producer.publish_many(batch)
                    self.acknowledged.update(str(e.event_id) for e in batch)
                except NotReplicated:
                    self.not_replicated += len(batch)
                except (RedisError, RedisClusterException, OSError):
                    self.failed += len(batch)
                    await asyncio.sleep(0.05)
                sent += len(batch)
                delay = started + sent / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await client.aclose()


@pytest.mark.parametrize("replica_paused_s", [0.0, 0.5], ids=["healthy-replica", "lagging-replica"])
async def test_a_master_killed_under_load(redis_cluster_server, cluster_client, capsys, replica_paused_s):
    cluster = redis_cluster_server.local
    stream = StreamKeys(shards=SHARDS).shard_stream(SHARD)
    slot = cluster_client.keyslot(stream)
    master = cluster.master_of_slot(slot)
    [replica] = cluster.replicas_of(master)
    asynchronous = ShardLoad(redis_cluster_server.url, wait_replicas=0)
    durable = ShardLoad(redis_cluster_server.url, wait_replicas=1)
    stop = asyncio.Event()
    loads = [asyncio.create_task(load.run(stop)) for load in (asynchronous, durable)]
    try:
        await asyncio.sleep(1.5 * SCALE)
        if replica_paused_s:
            cluster.pause(replica)
            await asyncio.sleep(replica_paused_s)
        cluster.kill(master)
        killed_at = time.monotonic()
        cluster.resume(replica)
        await wait_for(lambda: cluster.master_of_slot(slot) is replica, 30, "the replica promoted")
        promoted_s = time.monotonic() - killed_at
        durable_at_promotion = len(durable.acknowledged)
        # The promoted master has no replica until the old master comes back as one: until then
        # nothing can be confirmed by WAIT.
        redis_cluster_server.ensure_healthy()
        await asyncio.sleep(1.5 * SCALE)
    finally:
        stop.set()
        await asyncio.gather(*loads)
        cluster.resume(replica)

    stored = {fields[b"event_id"].decode() for _, fields in await _read_all(cluster_client, stream)}
    figures = {
        "replica_paused_s": replica_paused_s,
        "promoted_after_s": round(promoted_s, 2),
        "async_acknowledged": len(asynchronous.acknowledged),
        "async_lost": len(asynchronous.acknowledged - stored),
        "async_failed": asynchronous.failed,
        "wait_acknowledged": len(durable.acknowledged),
        "wait_lost": len(durable.acknowledged - stored),
        "wait_not_replicated": durable.not_replicated,
        "wait_failed": durable.failed,
    }
    report(capsys, f"cluster master killed ({replica_paused_s} s replica pause)", figures)
    assert figures["wait_lost"] == 0
    assert len(durable.acknowledged) > durable_at_promotion > 0, "WAIT-backed writes before and after"
    if replica_paused_s:
        # The fault was real: the master acknowledged writes its replica never had.
        assert figures["async_lost"] > 0 and durable.not_replicated > 0


async def _read_all(client, stream: str) -> list:
    entries, start = [], "-"
    while page := await client.xrange(stream, min=start, count=5000):
        entries += page
        start = "(" + page[-1][0].decode()
    return entries
