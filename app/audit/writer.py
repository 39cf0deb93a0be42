"""The write policy of the HTTP side: Redis first, Postgres when Redis is away, else refuse.

Events are XADDed to the audit stream (the consumer stores them). When Redis cannot take them they
are written straight to Postgres, idempotently: the same event_id is one row even if some of the
XADDs got through before Redis went away. Only when both stores fail is the write refused.
"""

from collections.abc import Sequence
from typing import Literal

import redis
import structlog

from app.audit.identity import Submission
from app.audit.store import AuditStore, DuplicateEventIds
from app.audit.wire import encode_submission
from app.producer import AuditProducer

log = structlog.get_logger(__name__)

WriteStatus = Literal["accepted", "stored"]


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
            return "accepted"
        except (redis.ConnectionError, redis.TimeoutError) as redis_error:
            try:
                await self.store.insert(submissions, refuse_conflicts=True)
            except DuplicateEventIds:
                raise
            except Exception as db_error:  # noqa: BLE001 - whatever failed, neither store took them
                log.error(
                    "write_failed_both_stores",
                    redis_error=str(redis_error),
                    db_error=str(db_error),
                    events=len(submissions),
                )
                raise StoresUnavailable() from None
            log.warning("redis_unavailable_wrote_to_postgres", events=len(submissions), error=str(redis_error))
            return "stored"
