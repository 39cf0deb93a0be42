"""From stream entries to rows or dead letters, then acknowledged: the consumer's one job.

Per batch: entries deleted from the stream, too large, invalid, or that made consumers fail
`max_deliveries` times become dead letters; the rest go to Postgres in one transaction
(app/audit/store.py), where a redelivered event is a no-op and a different event under a stored
id is refused. The consumer acknowledges an entry only after its row is committed or its dead
letter is written. When Postgres (or Redis) is unwell the batch stays in hand and is retried with
exponential backoff and jitter, and no new entries are read meanwhile (one batch at a time per
process, plus at most the next one, read ahead): the stream is the buffer. When particular entries
make the write fail, the batch is split in halves until those entries are found; only they are
dead-lettered.

The read loop reads ahead: while Postgres writes a batch, the next one is read and decoded, so the
consumer's CPU work (decoding, validating) overlaps the database's instead of waiting for it
(`ops/bench/consumer_profile.py`). Batches are still written one after the other, in stream order.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import redis
import redis.asyncio as aioredis
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from app.audit.identity import Submission
from app.audit.old_events import log_old_events
from app.audit.store import AuditStore
from app.audit.wire import InvalidEntry, decode
from app.core import metrics
from app.core.settings import Settings
from app.core.sqlstate import ErrorKind, classify, describe, is_release_error
from app.streams.attempts import Attempts
from app.streams.dlq import (
    REASON_DUPLICATE_EVENT_ID,
    REASON_ENTRY_DELETED,
    REASON_MAX_DELIVERIES,
    REASON_PERMANENT_DB_ERROR,
    REASON_TOO_LARGE,
    REASON_VALIDATION,
    DeadLetter,
    dead_letter,
)
from app.streams.ids import entry_id_seconds
from consumers.reader import Entry, Read

log = structlog.get_logger(__name__)

# Attempts an ambiguous error (e.g. a cancelled statement) gets before the batch is split to find
# the entries that cause it.
AMBIGUOUS_ATTEMPTS = 3
# Entries decoded per turn of the event loop while a batch is being written (consumers read ahead).
SORTED_PER_TURN = 50


@dataclass(frozen=True)
class ReadAhead:
    """The next batch, read (its ids joined the in-flight marker) and sorted while the one before
    it was written: dead letters for what can never be stored, the rest decoded."""

    batch: Read
    letters: list[DeadLetter]
    pending: list["Pending"]


@dataclass(frozen=True)
class Pending:
    """An entry that decoded into an event, waiting for its row."""

    entry: Entry
    submission: Submission
    failures: int


class AuditIngestor:
    def __init__(self, settings: Settings, redis: aioredis.Redis, store: AuditStore, attempts: Attempts):
        self.settings = settings
        self.stream, self.group, self.consumer = settings.stream, settings.consumer_group, settings.consumer_name
        self.redis = redis
        self.store = store
        self.attempts = attempts
        self.stopping = asyncio.Event()
        # One batch at a time: while a batch waits for Postgres, nothing new is read or claimed
        # (beyond the one batch read ahead, decoded and waiting its turn).
        self._one_batch_at_a_time = asyncio.Lock()
        self._ahead: ReadAhead | None = None
        # Ids of the batch read ahead, from its read (while it is decoded) until it is written.
        self._ahead_ids: list[str] = []

    async def read_and_process(self, read: Callable[[], Awaitable[Read]], *, redelivered: bool) -> Read:
        """Reads (or claims) a batch and processes it without letting another batch in between,
        so that claimed entries never sit idle in this consumer waiting for their turn."""
        async with self._one_batch_at_a_time:
            batch = await read()
            if batch.entries:
                ids = [entry.id for entry in batch.entries]
                failures = await self.attempts.failures_of(ids) if redelivered else {}
                await self._process(batch.entries, partial(self._sort, batch.entries, failures), failures)
            return batch

    async def read_ahead_and_process(self, read: Callable[..., Awaitable[Read]]) -> Read:
        """The read loop's step for new entries: processes the batch read ahead last time (or one
        read now) while reading and decoding the next. Returns the batch processed (empty: the
        stream had nothing new)."""
        async with self._one_batch_at_a_time:
            current, self._ahead, self._ahead_ids = self._ahead, None, []
            if current is not None:
                batch, sorted_already = current.batch, (current.letters, current.pending)
                sort = lambda: sorted_already  # noqa: E731
            else:
                batch = await read()
                if not batch.entries:
                    return batch
                sort = partial(self._sort, batch.entries, {})
            # The write leaves the marker alone: the next batch's ids join it with its read and
            # must stay while it is decoded; it is settled once both are done.
            writing = asyncio.create_task(self._process(batch.entries, sort, {}, settle_marker=False))
            try:
                ahead = None if self.stopping.is_set() else await read(joins_batch_in_hand=True)
                if ahead is not None and ahead.entries:
                    self._ahead_ids = [entry.id for entry in ahead.entries]
                    try:
                        self._ahead = ReadAhead(ahead, *await self._sort_in_turns(ahead.entries))
                    except Exception:
                        await asyncio.wait([writing])
                        # Not the database, not the network: whatever it was, these entries were in it.
                        await self.attempts.count_failure(self._ahead_ids)
                        self._ahead_ids = []
                        await self.attempts.pause()
                        writing.result()  # the write's own error first, if it failed too
                        raise
            except asyncio.CancelledError:
                # A stop (its timeout ran out): whatever is in hand stays pending, no failure counted.
                writing.cancel()
                await asyncio.wait([writing])
                self._ahead, self._ahead_ids = None, []
                with contextlib.suppress(redis.RedisError):
                    await self.attempts.pause()
                raise
            except Exception:
                await asyncio.wait([writing])
                writing.result()
                raise
            await writing
            await self._settle_marker()
            return batch

    async def _settle_marker(self) -> None:
        """A batch is done (or only waits): the marker names the batch read ahead, if any."""
        await (self.attempts.begin(self._ahead_ids) if self._ahead_ids else self.attempts.pause())

    async def _sort_in_turns(self, entries: Sequence[Entry]) -> tuple[list[DeadLetter], list["Pending"]]:
        """`_sort` a few entries at a time, letting the batch being written take its next step
        (each of its round trips waits for the event loop) between them."""
        letters: list[DeadLetter] = []
        pending: list[Pending] = []
        for start in range(0, len(entries), SORTED_PER_TURN):
            await asyncio.sleep(0)
            some_letters, some_pending = self._sort(entries[start : start + SORTED_PER_TURN], {})
            letters += some_letters
            pending += some_pending
        return letters, pending

    async def leave_read_ahead(self) -> None:
        """At shutdown: the batch read ahead stays pending for the next start (or a claim)."""
        async with self._one_batch_at_a_time:  # not under a claim's batch: its marker is its own
            ahead, self._ahead, self._ahead_ids = self._ahead, None, []
            if ahead is not None:
                await self._leave_pending(ahead.batch.entries)

    async def _process(
        self,
        entries: Sequence[Entry],
        sort: Callable[[], tuple[list[DeadLetter], list["Pending"]]],
        failures: dict[str, int],
        *,
        settle_marker: bool = True,
    ) -> None:
        metrics.AUDIT_BATCH_SIZE.observe(len(entries))
        ids = [entry.id for entry in entries]
        try:
            letters, pending = sort()
            async for attempt in self._retrying(ids):
                with attempt:
                    isolate = attempt.retry_state.attempt_number > AMBIGUOUS_ATTEMPTS
                    letters += await self._store(pending, isolate_ambiguous=isolate)
            async for attempt in self._retrying(ids):
                with attempt:
                    await self._dead_letter(letters)
            if settle_marker:
                await self._settle_marker()
            if failures:
                await self.attempts.forget(failures)
        except asyncio.CancelledError:
            # The process is stopping: FastStream cancels start-up work (the recovery of this
            # consumer's own pending entries) at SIGTERM. A clean stop is not the entries' fault.
            await self._leave_pending(entries)
            raise
        except Exception as error:
            if self.stopping.is_set():
                await self._leave_pending(entries)
                return
            if classify(error) is not ErrorKind.TRANSIENT:
                # Not the database, not the network: whatever it was, these entries were in it.
                await self.attempts.count_failure(ids)
                await self.attempts.pause()
            raise

    def _sort(self, entries: Sequence[Entry], failures: dict[str, int]) -> tuple[list[DeadLetter], list[Pending]]:
        """Dead letters for what can never be stored; the rest decoded, waiting for their rows."""
        letters: list[DeadLetter] = []
        pending: list[Pending] = []
        now = datetime.now(UTC)
        limits = self.settings.validation_limits
        for entry in entries:
            failed = failures.get(entry.id, 0)
            count = failed + 1
            if not entry.fields:
                deleted = "the entry was deleted from the stream before it was stored"
                letters.append(DeadLetter(entry.id, {}, REASON_ENTRY_DELETED, deleted, count))
            elif entry.oversized_digest is not None:
                letters.append(DeadLetter(
                    entry.id, entry.fields, REASON_TOO_LARGE,
                    f"the entry is {entry.size} bytes, more than the {self.settings.max_entry_bytes} a storable "
                    f"event can take; its fields are cut short (SHA-1 of the fields' SHA-1s: {entry.oversized_digest})",
                    count))  # fmt: skip
            elif failed >= self.settings.max_deliveries:
                failing = f"{failed} attempts to store it ended in a crash or an error"
                letters.append(DeadLetter(entry.id, entry.fields, REASON_MAX_DELIVERIES, failing, count))
            else:
                try:
                    submission = decode(self.stream, entry.id, entry.fields, limits, now=now)
                except InvalidEntry as error:
                    letters.append(DeadLetter(entry.id, entry.fields, REASON_VALIDATION, str(error), count))
                else:
                    pending.append(Pending(entry, submission, failed))
        return letters, pending

    async def _store(self, pending: list[Pending], *, isolate_ambiguous: bool) -> list[DeadLetter]:
        """Stores and acknowledges `pending`; returns dead letters for the entries refused."""
        if not pending:
            return []
        started = time.perf_counter()
        try:
            result = await self.store.insert([p.submission for p in pending])
        except Exception as error:
            kind = classify(error)
            metrics.AUDIT_WRITE_ERRORS.labels(kind.value).inc()
            if is_release_error(error):
                metrics.AUDIT_RELEASE_ERRORS.inc()
                log.error("audit_write_release_error", error=describe(error), entries=len(pending))
            if kind is ErrorKind.TRANSIENT or (kind is ErrorKind.AMBIGUOUS and not isolate_ambiguous):
                raise
            if len(pending) == 1:
                [refused] = pending
                return [DeadLetter(refused.entry.id, refused.entry.fields, REASON_PERMANENT_DB_ERROR, describe(error),
                                   refused.failures + 1)]  # fmt: skip
            middle = len(pending) // 2
            return await self._store(pending[:middle], isolate_ambiguous=isolate_ambiguous) + await self._store(
                pending[middle:], isolate_ambiguous=isolate_ambiguous
            )
        committed = time.time()
        metrics.AUDIT_WRITE_DURATION.observe(time.perf_counter() - started)
        metrics.AUDIT_WRITES.labels("stored").inc(len(result.stored))
        metrics.AUDIT_WRITES.labels("duplicate").inc(len(result.duplicates))
        log_old_events(result.stored, path="stream")
        for p in pending:
            metrics.AUDIT_END_TO_END_LATENCY.observe(committed - entry_id_seconds(p.entry.id))
        conflicting = {id(s) for s in result.conflicts}
        acknowledged = [p.entry.id for p in pending if id(p.submission) not in conflicting]
        if acknowledged:
            await self.redis.xack(self.stream, self.group, *acknowledged)
        return [
            DeadLetter(p.entry.id, p.entry.fields, REASON_DUPLICATE_EVENT_ID,
                       f"event_id {p.submission.event.event_id} is stored already for another event", p.failures + 1)
            for p in pending if id(p.submission) in conflicting
        ]  # fmt: skip

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        written = await dead_letter(
            self.redis,
            letters,
            source_stream=self.stream,
            group=self.group,
            consumer=self.consumer,
            dlq_stream=self.settings.dlq_stream,
        )
        for letter in written:
            metrics.DLQ_ENTRIES.labels(letter.reason).inc()
            metrics.AUDIT_WRITES.labels("dead_lettered").inc()
            correlation_id = letter.fields.get(b"correlation_id", b"").decode(errors="replace") or None
            trace_id = letter.fields.get(b"trace_id", b"").decode(errors="replace") or None
            with structlog.contextvars.bound_contextvars(correlation_id=correlation_id, trace_id=trace_id):
                log.warning(
                    "entry_dead_lettered",
                    entry_id=letter.entry_id,
                    reason=letter.reason,
                    error=letter.error,
                    delivery_count=letter.delivery_count,
                )

    async def _leave_pending(self, entries: Sequence[Entry]) -> None:
        """At shutdown: the batch stays pending for this consumer's next start (or a claim); it
        was not the entries' fault, so no failure is counted."""
        with contextlib.suppress(redis.RedisError):
            await self.attempts.pause()
        log.warning("batch_left_pending_at_shutdown", entries=len(entries))

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
            # Waiting is not an attempt: a crash while waiting is not the entries' fault (the
            # batch read ahead may still be being decoded: it stays named).
            with contextlib.suppress(redis.RedisError):
                await self._settle_marker()
            await self._keep_in_hand(held + self._ahead_ids)

        async def after_wait(state: RetryCallState) -> None:
            # The first attempt was announced by the read; a retry after a wait is announced again
            # (not when the wait ended because the consumer is stopping).
            if state.attempt_number > 1 and not self.stopping.is_set():
                with contextlib.suppress(redis.RedisError):
                    await self.attempts.begin(held + self._ahead_ids)

        return AsyncRetrying(
            retry=retry_if_exception(lambda error: classify(error) is not ErrorKind.PERMANENT),
            wait=wait_exponential_jitter(initial=self.settings.retry_initial_s, max=self.settings.retry_max_s),
            stop=lambda _: self.stopping.is_set(),
            sleep=self._sleep_unless_stopping,
            before_sleep=before_retry,
            before=after_wait,
            reraise=True,
        )

    async def _keep_in_hand(self, entry_ids: list[str]) -> None:
        """Resets the idle time of the entries in hand (XCLAIM to ourselves with JUSTID counts no
        delivery), so no other consumer claims a batch that is only waiting for Postgres."""
        with contextlib.suppress(redis.RedisError):
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, min_idle_time=0, message_ids=entry_ids, justid=True
            )

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
