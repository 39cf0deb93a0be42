"""The audit consumer: a FastStream app reading `audit_events` in batches as group `datastorage`.

FastStream owns the broker connection, the app's lifecycle and signals, and the AsyncAPI
description of the stream. The reading is ours (docs/FASTSTREAM.md): FastStream's group
subscriber reads a fixed COUNT with no byte bound, re-reads nothing pending, and stops for good
(exit code 0) when the group is deleted. consumers/reader.py reads batches bounded by bytes;
this module runs the read loop, the recovery of this consumer's pending entries, the claiming of
others' idle ones, the stream's upkeep, and the checkpoints of the seal chain.

    consumer = AuditConsumer(settings, signer)   # `datastorage consume` runs consumer.app
"""

import asyncio
import gc
import logging
from dataclasses import dataclass
from functools import partial

import asyncpg
import redis
import structlog
from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.specification import AsyncAPI

from app.audit.integrity.checkpoints import Checkpointer
from app.audit.integrity.keys import Signer
from app.audit.store import AuditStore
from app.core import metrics
from app.core.db import asyncpg_dsn
from app.core.logs import adopt_library_logger
from app.core.redis_client import RedisClient, create_redis
from app.core.settings import Settings
from app.core.upkeep import keep_gauges_fresh
from app.streams.attempts import Attempts, marker_key
from app.streams.keys import StreamShard
from consumers.ingestor import AuditIngestor
from consumers.reader import StreamReader
from consumers.upkeep import (
    claim_idle_entries,
    ensure_group,
    recover_own_pending,
    recreate_group,
    run_periodically,
    upkeep_stream,
)

log = structlog.get_logger(__name__)
# Through the root logger, so FastStream's lines come out in the service's format (app/core/logs.py);
# not under "faststream", whose own logger has a colourised handler and does not propagate.
FASTSTREAM_LOGGER = logging.getLogger("datastorage.faststream")
# FastStream makes its own logger when imported (after logging was configured, commands import this
# module late): send it through the root handler too.
adopt_library_logger(logging.getLogger("faststream"))

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
# How long a failed read waits before the next one (Redis away).
READ_RETRY_S = 1.0
# The first pause after an empty read (then doubling up to batch_wait_ms).
FIRST_IDLE_PAUSE_S = 0.001


@dataclass
class Lane:
    """One stream the consumer reads (the plain one, or a shard) with everything per stream: its
    settings (`stream`, `dlq_stream` of that shard), reader and ingestor (attempts, retries, dead
    letters to the shard's own DLQ). The rest of the consumer code runs unchanged per lane."""

    settings: Settings
    reader: StreamReader
    ingestor: AuditIngestor


def lane_settings(settings: Settings, shard: StreamShard) -> Settings:
    return settings.model_copy(update={"stream": shard.stream, "dlq_stream": shard.dlq})


class AuditConsumer:
    """The consumer's parts and their lifecycle; FastStream's hooks call these in order."""

    def __init__(self, settings: Settings, signer: Signer | None):
        self.settings = settings
        self.signer = signer
        self.broker = RedisBroker(
            settings.require_redis_url(),
            graceful_timeout=settings.shutdown_timeout_s,
            logger=FASTSTREAM_LOGGER,
            log_level=logging.DEBUG,
        )
        # A Redis Cluster client with DATASTORAGE_REDIS_CLUSTER (each shard's keys share a slot).
        self.redis: RedisClient = create_redis(settings)
        # Every stream producers may write: the plain one, then each shard (DATASTORAGE_STREAM_SHARDS).
        self.shards = [lane_settings(settings, shard) for shard in settings.stream_keys.read_shards]
        self.lanes: list[Lane] = []
        self.app = FastStream(
            self.broker,
            logger=FASTSTREAM_LOGGER,
            specification=AsyncAPI(
                title="Data Storage Service: audit ingestion",
                description="Consumes the unified audit stream into Postgres; dead letters go to audit_dlq.",
            ),
        )
        self.app.on_startup(self.prepare)
        self.app.after_startup(self.start_background)
        self.app.on_shutdown(self.begin_shutdown)
        self.app.after_shutdown(self.close)
        self.pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task] = []
        # Set when a fatal error stopped the consumer: the process exits non-zero.
        self.failed = asyncio.Event()
        # The pod's probes on the metrics port (k8s): ready once reading new entries, until it stops.
        metrics.set_probe("readyz", self.not_ready_because)
        metrics.set_probe("healthz", lambda: "the consumer failed" if self.failed.is_set() else None)

    def not_ready_because(self) -> str | None:
        if self.failed.is_set():
            return "the consumer failed"
        if self._stop.is_set():
            return "stopping"
        if not self._background:
            return "starting: recovering its own pending entries"
        return None

    @property
    def ingestor(self) -> AuditIngestor:
        """The plain stream's ingestor (the only one without shards)."""
        if not self.lanes:
            raise RuntimeError("the consumer has not started")
        return self.lanes[0].ingestor

    async def run(self) -> int:
        """Runs until SIGINT/SIGTERM or a fatal error; returns the process's exit code."""
        await self.app.run()
        return 1 if self.failed.is_set() else 0

    async def prepare(self) -> None:
        """Before reading: storage, the group, and this consumer's own pending entries."""
        # min_size=0: the consumer starts (and Redis keeps buffering) while Postgres is down.
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(self.settings.require_database_url()), min_size=0, max_size=self.settings.db_pool_size
        )
        pool = self.pool
        metrics.count_connections("consumer", lambda: pool.get_size() - pool.get_idle_size())
        store = AuditStore(pool, self.signer)
        for settings in self.shards:
            stream, group, name = settings.stream, settings.consumer_group, settings.consumer_name
            reader = StreamReader(
                self.redis, stream, group, name, marker_key(stream, name), max_records=settings.batch_max_records,
                max_bytes=settings.batch_max_bytes, max_entry_bytes=settings.max_entry_bytes,
            )  # fmt: skip
            attempts = Attempts(self.redis, stream, group, name)
            self.lanes.append(Lane(settings, reader, AuditIngestor(settings, self.redis, store, attempts)))
        log.info("consumer_starting", consumer=self.settings.consumer_name,
                 stream=",".join(lane.settings.stream for lane in self.lanes),
                 sealing=self.signer is not None)  # fmt: skip
        for lane in self.lanes:
            await ensure_group(self.redis, lane.settings.stream, lane.settings.consumer_group)
            # Before anything new is read: the pending entries first, in order.
            await recover_own_pending(lane.ingestor, lane.reader)

    async def start_background(self) -> None:
        stop, settings = self._stop, self.settings
        # Everything made until now (modules, the pool, settings) lives as long as the process:
        # out of the collector's sight, so that its full collections scan only what batches make.
        # A third of the decoding time went to the collector before (ops/bench/consumer_profile.py).
        gc.collect()  # what start-up left as garbage is not kept for ever
        gc.freeze()
        self._background = []
        for lane in self.lanes:
            self._background += [
                asyncio.create_task(self._read_new(lane)),
                asyncio.create_task(run_periodically(
                    "claim", settings.claim_interval_s, stop,
                    partial(claim_idle_entries, lane.ingestor, lane.reader, settings.claim_idle_ms))),
                asyncio.create_task(run_periodically(
                    "stream_upkeep", settings.hygiene_interval_s, stop,
                    partial(upkeep_stream, self.redis, lane.settings))),
            ]  # fmt: skip
        if self.pool is not None:  # the CronJob's last success, exported by consumer pods too
            self._background.append(asyncio.create_task(keep_gauges_fresh(self.pool, stop)))
        if self.signer is not None and self.pool is not None:
            checkpointer = Checkpointer(self.pool, self.redis, self.signer, settings)
            self._background.append(asyncio.create_task(checkpointer.run(stop)))

    async def _read_new(self, lane: Lane) -> None:
        """The read loop of one stream: new entries in batches, until stopped; a fatal error stops the app.

        The read runs in a script (consumers/reader.py), and a script cannot block waiting for
        entries: an empty read is followed by a pause, 1 ms at first, doubling up to
        `batch_wait_ms` while the stream stays empty. A steady flow is read within milliseconds
        (a fixed 100 ms pause made the median end-to-end latency 45 ms at 2,000 events/s); an idle
        stream costs ten reads a second."""
        idle_pause = FIRST_IDLE_PAUSE_S
        try:
            while not self._stop.is_set():
                try:
                    batch = await lane.ingestor.read_ahead_and_process(partial(lane.reader.read, "new"))
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    log.warning("stream_read_failed", error=f"{type(error).__name__}: {error}")
                    await self._pause(READ_RETRY_S)
                    continue
                except redis.ResponseError as error:
                    if "NOGROUP" not in str(error):
                        raise
                    await recreate_group(self.redis, lane.settings.stream, lane.settings.consumer_group)
                    continue
                if batch.entries:
                    idle_pause = FIRST_IDLE_PAUSE_S
                else:
                    await self._pause(idle_pause)
                    idle_pause = min(2 * idle_pause, self.settings.batch_wait_ms / 1000)
        except Exception as error:
            metrics.CONSUMER_FATAL_ERRORS.inc()
            log.critical("consumer_failed", error=f"{type(error).__name__}: {error}", exc_info=True)
            self.failed.set()
            self.app.exit()
        finally:
            await lane.ingestor.leave_read_ahead()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    async def begin_shutdown(self) -> None:
        """Stop reading: a batch waiting for a retry gives up (stays pending); one being written
        finishes."""
        for lane in self.lanes:  # none when stopped before start-up made them
            lane.ingestor.stopping.set()
        self._stop.set()
        if not self._background:  # stopped during start-up (its own pending entries waiting for Postgres)
            return
        done, running = await asyncio.wait(self._background, timeout=self.settings.shutdown_timeout_s)
        for task in running:
            task.cancel()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.redis.aclose()
        log.info("consumer_stopped", consumer=self.settings.consumer_name)


def asyncapi_app() -> FastStream:
    """The stream as documented (`faststream docs gen --factory consumers.audit:asyncapi_app`):
    the channel the consumer reads, declared as a FastStream subscriber so that FastStream
    describes it; the running consumer reads it with consumers/reader.py. Nothing connects."""
    settings = Settings(redis_url="redis://redis:6379/0", consumer_name="datastorage-consumer")
    consumer = AuditConsumer(settings, signer=None)
    subscriber = consumer.broker.subscriber(
        stream=StreamSub(
            settings.stream, group=settings.consumer_group, consumer=settings.consumer_name, batch=True,
            max_records=settings.batch_max_records, polling_interval=settings.batch_wait_ms,
        ),
        title="audit_events",
        description=STREAM_DESCRIPTION,
    )  # fmt: skip

    @subscriber
    async def store_batch(entries: list[dict[str, str]]) -> None:
        """Each entry becomes a row of audit_events, or a dead letter in audit_dlq."""

    return consumer.app
