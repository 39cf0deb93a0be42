"""Writing audit events to Postgres: one transaction per batch, idempotent, sealed, partitions first.

Shared by the stream consumer and the HTTP side's write-through path. In one transaction a batch
1. claims its event_ids in `audit_event_ids` (unique across partitions): an id stored already is
   either the same event again (a redelivery: nothing to do) or a different event under a used id
   (refused, `duplicate_event_id`), app/audit/identity.py says which;
2. COPYs the new rows, each with its seal id and salt;
3. seals them (app/audit/integrity/seals.py): the seal is the transaction's last statement, so a
   committed row is a sealed row. Without a signing key rows are stored unsealed.
"""

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from app.audit.identity import Submission, same_event
from app.audit.integrity.encoding import SALT_BYTES, encode_row, leaf_hash
from app.audit.integrity.keys import Signer
from app.audit.integrity.seals import Leaf, next_seal_id, seal_rows
from app.audit.partitions import ensure_partitions, list_partitions, month_start
from app.audit.record import STORED_COLUMNS, column_values, row_values

CLAIM_IDS = (
    "INSERT INTO audit_event_ids (event_id, event_date, fingerprint, sent_timestamp) "
    "SELECT * FROM unnest($1::uuid[], $2::date[], $3::bytea[], $4::timestamptz[]) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
STORED_IDS = "SELECT event_id, fingerprint, sent_timestamp FROM audit_event_ids WHERE event_id = ANY($1::uuid[])"


class DuplicateEventIds(Exception):
    """Other events are stored under some of these event_ids; nothing of the batch was stored."""

    def __init__(self, event_ids: list[str]):
        super().__init__(", ".join(event_ids))
        self.event_ids = event_ids


@dataclass
class WriteResult:
    """What became of a batch: new rows, redeliveries of stored events, and different events
    under stored ids (not stored)."""

    stored: list[Submission] = field(default_factory=list)
    duplicates: list[Submission] = field(default_factory=list)
    conflicts: list[Submission] = field(default_factory=list)


class AuditStore:
    def __init__(self, pool: asyncpg.Pool, signer: Signer | None = None):
        self.pool = pool
        self.signer = signer
        # Months known to have a partition; partitions are never dropped for current data, and a
        # dropped one shows up as an insert error that clears this.
        self._months_with_partition: set[date] | None = None

    async def insert(self, submissions: Sequence[Submission], *, refuse_conflicts: bool = False) -> WriteResult:
        """Stores the new events of `submissions` in one transaction. With `refuse_conflicts`, a
        different event under a stored id stores nothing and raises `DuplicateEventIds` (the
        HTTP write-through is all or nothing); otherwise the conflicts are returned."""
        if not submissions:
            return WriteResult()
        events = [s.event for s in submissions]
        await self.ensure_partitions(events)
        try:
            return await self._write(submissions, refuse_conflicts)
        except asyncpg.CheckViolationError as error:
            if "no partition of relation" not in str(error):
                raise
            # A partition was dropped behind our back (retention run by hand?): look again, once.
            self._months_with_partition = None
            await self.ensure_partitions(events)
            return await self._write(submissions, refuse_conflicts)

    async def _write(self, submissions: Sequence[Submission], refuse_conflicts: bool) -> WriteResult:
        result = WriteResult()
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await self._claim_ids(conn, submissions, result)
            if refuse_conflicts and result.conflicts:
                raise DuplicateEventIds(sorted({str(s.event.event_id) for s in result.conflicts}))
            if fresh:
                await self._copy_and_seal(conn, fresh)
            result.stored = fresh
        return result

    async def _claim_ids(
        self, conn: asyncpg.Connection, submissions: Sequence[Submission], result: WriteResult
    ) -> list[Submission]:
        """Inserts the batch's ids; returns the submissions that claimed a new one and sorts the
        others into duplicates and conflicts. An id twice in one batch counts once: the first
        submission wins, the others are compared with it like with a stored row."""
        first: dict[uuid.UUID, Submission] = {}
        for submission in submissions:
            first.setdefault(submission.event.event_id, submission)
        claimed = {
            row["event_id"]
            for row in await conn.fetch(
                CLAIM_IDS,
                list(first),
                [s.event.event_date for s in first.values()],
                [s.fingerprint() for s in first.values()],
                [s.sent_timestamp for s in first.values()],
            )
        }
        others = [s for s in submissions if s.event.event_id not in claimed or first[s.event.event_id] is not s]
        if others:
            stored = {
                row["event_id"]: row for row in await conn.fetch(STORED_IDS, list({s.event.event_id for s in others}))
            }
            for submission in others:
                # Claimed by an earlier submission of this batch, or stored before: the row is there.
                row = stored[submission.event.event_id]
                if same_event(submission, bytes(row["fingerprint"]), row["sent_timestamp"]):
                    result.duplicates.append(submission)
                else:
                    result.conflicts.append(submission)
        return [s for event_id, s in first.items() if event_id in claimed]

    async def _copy_and_seal(self, conn: asyncpg.Connection, submissions: Sequence[Submission]) -> None:
        signer = self.signer
        seal_id = await next_seal_id(conn) if signer else None
        salts = os.urandom(SALT_BYTES * len(submissions))
        records, leaves = [], []
        for n, submission in enumerate(submissions):
            event = submission.event
            salt = salts[n * SALT_BYTES : (n + 1) * SALT_BYTES]
            records.append((*row_values(event), seal_id, salt))
            if signer:
                leaves.append(Leaf(event.event_id, event.event_date, leaf_hash(encode_row(column_values(event), salt))))
        await conn.copy_records_to_table("audit_events", records=records, columns=STORED_COLUMNS)
        if signer and seal_id is not None:
            correlation_ids = {s.event.correlation_id for s in submissions if s.event.correlation_id}
            await seal_rows(conn, signer, seal_id, leaves, correlation_ids)

    async def ensure_partitions(self, events: Sequence) -> None:
        months = {month_start(event.event_date) for event in events}
        if self._months_with_partition is not None and months <= self._months_with_partition:
            return
        async with self.pool.acquire() as conn:
            if self._months_with_partition is None:
                self._months_with_partition = {p.month for p in await list_partitions(conn)}
            missing = months - self._months_with_partition
            if missing:
                # Own short transaction, before the insert: see app/audit/partitions.py.
                await ensure_partitions(conn, missing)
                self._months_with_partition |= missing
