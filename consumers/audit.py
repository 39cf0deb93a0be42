"""The audit consumer: a FastStream app reading `audit_events` in batches as group `datastorage`.

FastStream owns the broker, the read loop over new entries (`>`), the app's lifecycle and signals,
and the AsyncAPI description. The rest is ours (docs/FASTSTREAM.md): acknowledgement after
commit (`AckPolicy.MANUAL`, XACK by id), recovery of pending entries, claiming, trimming.

    app = create_app(settings)   # `datastorage consume` runs it; `datastorage run` starts it in-process
"""

import asyncio
import logging

import asyncpg
import redis.asyncio as aioredis
import structlog
from faststream import AckPolicy, FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage
from faststream.specification import AsyncAPI

from app.audit.store import AuditStore
from app.core import metrics
from app.core.db import asyncpg_dsn
from app.core.settings import Settings
from consumers.ingestor import AuditIngestor, entries_from_redis
from consumers.upkeep import claim_idle_entries, ensure_group, recover_own_pending, run_periodically, upkeep_stream

log = structlog.get_logger(__name__)
# Through the root logger, so FastStream's lines come out in the service's format (app/logs.py).
FASTSTREAM_LOGGER = logging.getLogger("faststream.datastorage")


STREAM_DESCRIPTION = (
    "Audit events from every service of the platform, XADDed as flat string fields (read as a "
    "consumer group, in batches; entries that can never be stored go to the stream audit_dlq with "
    "dlq_reason, dlq_error, source_stream, source_id, delivery_count and failed_at). Required fields: "
    "event_type, event_category, event_outcome (success|failure|pending|skipped), service_name, "
    "actor_type (system|user|service|operator|controller), resource_type, resource_id. Optional: "
    "event_id (UUID; derived from the stream key and entry id when absent), event_timestamp "
    "(RFC 3339; the entry id's time when absent), service_version, actor_id, actor_name, "
    "resource_name, correlation_id, parent_event_id (UUID), trace_id, span_id, event_data and "
    "metadata (JSON objects as text). No other field, and never one named data."
)


class AuditConsumer:
    """The consumer's parts and their lifecycle; FastStream's hooks call these in order."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.broker = RedisBroker(
            settings.require_redis_url(),
            graceful_timeout=settings.shutdown_timeout_s,
            logger=FASTSTREAM_LOGGER,
            # FastStream logs every batch at INFO otherwise.
            log_level=logging.DEBUG,
        )
        self.redis = aioredis.from_url(settings.require_redis_url())
        self.pool: asyncpg.Pool | None = None
        self._ingestor: AuditIngestor | None = None
        self._stop_background = asyncio.Event()
        self._background: list[asyncio.Task] = []

        subscriber = self.broker.subscriber(
            stream=StreamSub(
                settings.stream,
                group=settings.consumer_group,
                consumer=settings.consumer_name,
                batch=True,
                max_records=settings.batch_max_records,
                polling_interval=settings.batch_wait_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            parser=self._keep_raw_entries,
            title="audit_events",
            description=STREAM_DESCRIPTION,
        )
        subscriber(self._store_batch)

    @property
    def ingestor(self) -> AuditIngestor:
        if self._ingestor is None:
            raise RuntimeError("the consumer has not started")
        return self._ingestor

    async def _keep_raw_entries(self, raw: dict, _default_parser) -> BatchMessage:
        # The handler reads the raw entries itself; FastStream's body decoding is made for its
        # own envelope (the field `data`) and would only cost time here.
        return BatchMessage(raw_message=raw, body=b"", consumer=self.redis, group=self.settings.consumer_group)

    async def _store_batch(self, msg: RedisBatchStreamMessage) -> None:
        raw = msg.raw_message
        await self.ingestor.process(entries_from_redis(list(zip(raw["message_ids"], raw["data"], strict=True))))

    async def prepare(self) -> None:
        """Before the broker reads: storage, the group, and this consumer's own pending entries."""
        # min_size=0: the consumer starts (and Redis keeps buffering) while Postgres is down.
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(self.settings.require_database_url()), min_size=0, max_size=self.settings.db_pool_size
        )
        metrics.DB_CONNECTIONS_IN_USE.set_function(
            lambda: self.pool.get_size() - self.pool.get_idle_size() if self.pool else 0
        )
        self._ingestor = AuditIngestor(self.settings, self.redis, AuditStore(self.pool))
        await ensure_group(self.redis, self.settings)
        log.info("consumer_starting", consumer=self.settings.consumer_name, stream=self.settings.stream)
        # Before the subscriber reads anything new: otherwise the history read would deliver
        # its first batch a second time.
        await recover_own_pending(self.ingestor)

    async def start_background(self) -> None:
        self._background = [
            asyncio.create_task(
                run_periodically(
                    "claim",
                    self.settings.claim_interval_s,
                    self._stop_background,
                    lambda: claim_idle_entries(self.ingestor),
                )
            ),
            asyncio.create_task(
                run_periodically(
                    "stream_upkeep",
                    self.settings.hygiene_interval_s,
                    self._stop_background,
                    lambda: upkeep_stream(self.redis, self.settings),
                )
            ),
        ]

    async def begin_shutdown(self) -> None:
        """Stop reading: a batch waiting for a retry gives up (stays pending); one being written
        finishes (FastStream waits up to graceful_timeout)."""
        if self._ingestor is not None:  # None when stopped before start-up finished
            self._ingestor.stopping.set()
        self._stop_background.set()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.redis.aclose()
        log.info("consumer_stopped", consumer=self.settings.consumer_name)


def create_app(settings: Settings) -> FastStream:
    consumer = AuditConsumer(settings)
    app = FastStream(
        consumer.broker,
        logger=FASTSTREAM_LOGGER,
        specification=AsyncAPI(
            title="Data Storage Service: audit ingestion",
            description="Consumes the unified audit stream into Postgres; dead letters go to audit_dlq.",
        ),
    )
    app.on_startup(consumer.prepare)
    app.after_startup(consumer.start_background)
    app.on_shutdown(consumer.begin_shutdown)
    app.after_shutdown(consumer.close)
    return app


def asyncapi_app() -> FastStream:
    """The app as documented (`faststream docs gen --factory consumers.audit:asyncapi_app`):
    built from the default settings, with a placeholder Redis URL; nothing connects."""
    return create_app(Settings(redis_url="redis://redis:6379/0", consumer_name="datastorage-consumer"))
