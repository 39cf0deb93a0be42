"""From stream entries to rows or dead letters, then acknowledged: the consumer's one job.

Per batch: entries delivered too often, deleted or invalid become dead letters; the rest go to
Postgres in one statement. The consumer acknowledges an entry only after its row is committed or
its dead letter is written. When Postgres (or Redis) is unwell the batch stays in hand and is
retried with exponential backoff and jitter, and no new entries are read meanwhile (one batch at a
time per process): the stream is the buffer. When particular entries make the write fail, the batch
is split in halves until those entries are found; only they are dead-lettered.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from app.audit.event import AuditEvent
from app.audit.store import AuditStore
from app.audit.wire import InvalidEntry, decode_entry
from app.core import metrics
from app.core.settings import Settings
from app.core.sqlstate import ErrorKind, classify, describe
from app.streams.dlq import (
    REASON_ENTRY_DELETED,
    REASON_MAX_DELIVERIES,
    REASON_PERMANENT_DB_ERROR,
    REASON_VALIDATION,
    DeadLetter,
    dead_letter,
)
from app.streams.ids import as_text, entry_id_key, entry_id_time

log = structlog.get_logger(__name__)

# Attempts an ambiguous error (e.g. a cancelled statement) gets before the batch is split to find
# the entries that cause it.
AMBIGUOUS_ATTEMPTS = 3


@dataclass(frozen=True)
class Entry:
    id: str
    # None when the entry was deleted from the stream after it was delivered.
    fields: dict[bytes, bytes] | None


def entries_from_redis(raw: Sequence[tuple]) -> list[Entry]:
    return [Entry(as_text(entry_id), fields) for entry_id, fields in raw]


class AuditIngestor:
    def __init__(self, settings: Settings, redis: aioredis.Redis, store: AuditStore):
        self.settings = settings
        self.redis = redis
        self.store = store
        self.stopping = asyncio.Event()
        # One batch at a time: while a batch waits for Postgres, nothing new is read or claimed.
        self._one_batch_at_a_time = asyncio.Lock()

    async def process(self, entries: Sequence[Entry], *, redelivered: bool = False) -> None:
        async with self._one_batch_at_a_time:
            await self._process(entries, redelivered=redelivered)

    async def read_and_process(self, read: Callable[[], Awaitable[list[Entry]]], *, redelivered: bool = True) -> int:
        """Reads (claims) entries and processes them without letting another batch in between,
        so that claimed entries never sit idle in this consumer waiting for their turn."""
        async with self._one_batch_at_a_time:
            entries = await read()
            if entries:
                await self._process(entries, redelivered=redelivered)
            return len(entries)

    async def _process(self, entries: Sequence[Entry], *, redelivered: bool) -> None:
        metrics.AUDIT_BATCH_SIZE.observe(len(entries))
        deliveries = await self._delivery_counts(entries) if redelivered else {}
        letters: list[DeadLetter] = []
        valid: list[tuple[Entry, AuditEvent]] = []
        for entry in entries:
            count = deliveries.get(entry.id, 1)
            if entry.fields is None:
                letters.append(
                    DeadLetter(
                        entry.id,
                        {},
                        REASON_ENTRY_DELETED,
                        "the entry was deleted from the stream before it was stored",
                        count,
                    )
                )
            elif count > self.settings.max_deliveries:
                letters.append(
                    DeadLetter(
                        entry.id,
                        entry.fields,
                        REASON_MAX_DELIVERIES,
                        f"delivered {count} times without being stored",
                        count,
                    )
                )
            else:
                try:
                    event = decode_entry(self.settings.stream, entry.id, entry.fields, self.settings.validation_limits)
                except InvalidEntry as error:
                    letters.append(DeadLetter(entry.id, entry.fields, REASON_VALIDATION, str(error), count))
                else:
                    valid.append((entry, event))
        held = [entry.id for entry in entries]
        try:
            async for attempt in self._retrying(held):
                with attempt:
                    isolate = attempt.retry_state.attempt_number > AMBIGUOUS_ATTEMPTS
                    failed = await self._store(valid, deliveries, isolate_ambiguous=isolate)
            async for attempt in self._retrying(held):
                with attempt:
                    await self._dead_letter(letters + failed)
        except Exception:
            if not self.stopping.is_set():
                raise
            log.warning("batch_left_pending_at_shutdown", entries=len(entries))

    async def _store(
        self, pairs: list[tuple[Entry, AuditEvent]], deliveries: dict[str, int], *, isolate_ambiguous: bool
    ) -> list[DeadLetter]:
        """Stores and acknowledges `pairs`; returns the entries the database refuses."""
        if not pairs:
            return []
        started = time.perf_counter()
        try:
            inserted = await self.store.insert([event for _, event in pairs])
        except Exception as error:
            kind = classify(error)
            metrics.AUDIT_WRITE_ERRORS.labels(kind.value).inc()
            if kind is ErrorKind.TRANSIENT or (kind is ErrorKind.AMBIGUOUS and not isolate_ambiguous):
                raise
            if len(pairs) == 1:
                entry, event = pairs[0]
                return [
                    DeadLetter(
                        entry.id,
                        entry.fields or {},
                        REASON_PERMANENT_DB_ERROR,
                        describe(error),
                        deliveries.get(entry.id, 1),
                    )
                ]
            middle = len(pairs) // 2
            return await self._store(
                pairs[:middle], deliveries, isolate_ambiguous=isolate_ambiguous
            ) + await self._store(pairs[middle:], deliveries, isolate_ambiguous=isolate_ambiguous)
        committed = time.time()
        metrics.AUDIT_WRITE_DURATION.observe(time.perf_counter() - started)
        metrics.AUDIT_WRITES.labels("stored").inc(inserted)
        metrics.AUDIT_WRITES.labels("duplicate").inc(len(pairs) - inserted)
        for entry, _ in pairs:
            metrics.AUDIT_END_TO_END_LATENCY.observe(committed - entry_id_time(entry.id).timestamp())
        await self.redis.xack(self.settings.stream, self.settings.consumer_group, *(e.id for e, _ in pairs))
        return []

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        written = await dead_letter(
            self.redis,
            letters,
            source_stream=self.settings.stream,
            group=self.settings.consumer_group,
            consumer=self.settings.consumer_name,
            dlq_stream=self.settings.dlq_stream,
        )
        for letter in written:
            metrics.DLQ_ENTRIES.labels(letter.reason).inc()
            metrics.AUDIT_WRITES.labels("dead_lettered").inc()
            correlation_id = letter.fields.get(b"correlation_id", b"").decode(errors="replace") or None
            log.warning(
                "entry_dead_lettered",
                entry_id=letter.entry_id,
                reason=letter.reason,
                error=letter.error,
                delivery_count=letter.delivery_count,
                correlation_id=correlation_id,
            )

    async def _delivery_counts(self, entries: Sequence[Entry]) -> dict[str, int]:
        """How often each entry was delivered, from XPENDING (FastStream does not expose it)."""
        ids = sorted(entries, key=lambda e: entry_id_key(e.id))
        pending = await self.redis.xpending_range(
            self.settings.stream,
            self.settings.consumer_group,
            min=ids[0].id,
            max=ids[-1].id,
            count=len(entries) * 2 + 100,
            consumername=self.settings.consumer_name,
        )
        return {as_text(p["message_id"]): int(p["times_delivered"]) for p in pending}

    def _retrying(self, held: list[str]) -> AsyncRetrying:
        async def before_retry(state: RetryCallState) -> None:
            # Called only after a failed attempt: there is an outcome, and it is an exception.
            assert state.outcome is not None
            error = state.outcome.exception()
            assert error is not None
            log.warning(
                "batch_write_retry",
                attempt=state.attempt_number,
                kind=classify(error).value,
                error=describe(error),
                wait_s=round(state.upcoming_sleep, 2),
                entries=len(held),
            )
            await self._keep_in_hand(held)

        return AsyncRetrying(
            retry=retry_if_exception(lambda error: classify(error) is not ErrorKind.PERMANENT),
            wait=wait_exponential_jitter(initial=self.settings.retry_initial_s, max=self.settings.retry_max_s),
            stop=lambda _: self.stopping.is_set(),
            sleep=self._sleep_unless_stopping,
            before_sleep=before_retry,
            reraise=True,
        )

    async def _keep_in_hand(self, entry_ids: list[str]) -> None:
        """Resets the idle time of the entries in hand (XCLAIM to ourselves with JUSTID counts no
        delivery), so no other consumer claims a batch that is only waiting for Postgres."""
        with contextlib.suppress(redis.RedisError):
            await self.redis.xclaim(
                self.settings.stream,
                self.settings.consumer_group,
                self.settings.consumer_name,
                min_idle_time=0,
                message_ids=entry_ids,
                justid=True,
            )

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
