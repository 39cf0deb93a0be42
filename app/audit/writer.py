"""The write policy of the HTTP side: Redis first, Postgres when Redis cannot take the events, else refuse.

Events are XADDed to the audit stream (the consumer stores them), through the producer library,
so they go to the shard of their correlation id like any producer's. When Redis cannot take them
(it is unreachable, or it refuses writes: out of memory, a read-only replica after a fail-over,
too few replicas, a failed save; or, with `DATASTORAGE_STREAM_WAIT_REPLICAS`, no replica confirms
them in time) they are written straight to Postgres, idempotently: the same event_id is one row
even if some of the XADDs got through before Redis refused. Only when both stores fail is the
write refused. Log lines name the error's kind, never the command: redis-py puts the failed XADD,
fields and all, into a pipeline error's message.
"""

from collections.abc import Sequence
from typing import Literal

import redis
import structlog

from app.audit.identity import Submission
from app.audit.old_events import log_old_events
from app.audit.store import AuditStore, DuplicateEventIds
from app.audit.wire import encode_submission
from app.core import metrics
from app.core.redis_client import RedisClient
from app.core.settings import Settings
from app.core.sqlstate import describe_store_error
from app.producer import AuditProducer, NotReplicated

log = structlog.get_logger(__name__)

WriteStatus = Literal["accepted", "stored"]


def configured_producer(settings: Settings, client: RedisClient) -> AuditProducer:
    """The producer every writer of this service uses: the configured stream, its shards, and the
    replicas to wait for, so the API and the CLI write where the consumers read."""
    return AuditProducer(
        client,
        settings.stream,
        shards=settings.stream_shards,
        wait_replicas=settings.stream_wait_replicas,
        wait_timeout_ms=settings.stream_wait_timeout_ms,
    )


class StoresUnavailable(Exception):
    """Neither Redis nor Postgres took the events; nothing was acknowledged."""


class AuditWriter:
    def __init__(self, producer: AuditProducer, store: AuditStore):
        self.producer = producer
        self.store = store

    async def write(self, submissions: Sequence[Submission]) -> WriteStatus:
        """`accepted` (in the stream) or `stored` (in Postgres); raises `StoresUnavailable`, or
        `DuplicateEventIds` when written through to a Postgres that holds other events under
        those ids (through the stream, the consumer dead-letters them instead)."""
        try:
            await self.producer.publish_entries(encode_submission(s) for s in submissions)
            # Into the stream: the consumer stores them (and logs the old ones when it does).
            return "accepted"
        except (redis.RedisError, redis.exceptions.RedisClusterException, NotReplicated) as redis_error:
            # Any Redis failure means the stream may not hold them: Postgres can.
            redis_said = describe_store_error(redis_error)
        try:
            result = await self.store.insert(submissions, refuse_conflicts=True)
        except DuplicateEventIds:
            raise
        except Exception as db_error:  # noqa: BLE001 - whatever failed, neither store took them
            log.error(
                "write_failed_both_stores",
                redis_error=redis_said,
                db_error=describe_store_error(db_error),
                events=len(submissions),
            )
            raise StoresUnavailable() from None
        log.warning("redis_unavailable_wrote_to_postgres", events=len(submissions), error=redis_said)
        # Rows written here never pass the consumer: counted here, as the consumer counts its own.
        metrics.AUDIT_WRITES.labels("stored").inc(len(result.stored))
        metrics.AUDIT_WRITES.labels("duplicate").inc(len(result.duplicates))
        log_old_events(result.stored, path="http")
        return "stored"
