"""The one place a Redis client is made: a plain client, or a Redis Cluster client when
`DATASTORAGE_REDIS_CLUSTER=true` (the API, the commands and the consumer all come here).

A cluster client takes the URL of any node, discovers the others and their slots, and sends each
command to the master of its key's slot (following MOVED after a fail-over). Keys of one stream
shard share a slot (app/streams/keys.py), so a shard's scripts and transactions work unchanged.
"""

from typing import Any, TypeAlias

import redis.asyncio as aioredis

from app.core.settings import Settings

# What the service's Redis code accepts: both speak the same commands for single-slot work.
RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster


def create_redis(settings: Settings, **options: Any) -> RedisClient:
    """A client of the configured Redis (or Redis Cluster); `options` are redis-py's (timeouts…)."""
    url = settings.require_redis_url()
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.from_url(url, **options)
