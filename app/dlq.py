"""The dead-letter stream `audit_dlq`: entries that can never be stored, each with its reason.

A dead letter keeps the original fields byte for byte and adds `dlq_reason`, `dlq_error`,
`source_stream`, `source_id`, `delivery_count` and `failed_at`. It is written and the original is
acknowledged in one MULTI/EXEC, so an entry is either still pending or in the DLQ, never neither
and never both. The DLQ is never trimmed by the service.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import redis.asyncio as aioredis

DLQ_FIELDS = ("dlq_reason", "dlq_error", "source_stream", "source_id", "delivery_count", "failed_at")

REASON_VALIDATION = "validation"
REASON_MAX_DELIVERIES = "max_deliveries"
REASON_PERMANENT_DB_ERROR = "permanent_db_error"
# The entry's body was gone when it was read back (the stream was trimmed by someone else).
REASON_ENTRY_DELETED = "entry_deleted"

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    fields: dict[bytes, bytes]
    reason: str
    error: str
    delivery_count: int = 1


def dead_letter_fields(letter: DeadLetter, source_stream: str, failed_at: datetime) -> dict:
    fields: dict = {k: v for k, v in letter.fields.items() if k.decode(errors="replace") not in DLQ_FIELDS}
    fields.update({
        "dlq_reason": letter.reason,
        "dlq_error": letter.error[:MAX_ERROR_LENGTH],
        "source_stream": source_stream,
        "source_id": letter.entry_id,
        "delivery_count": str(letter.delivery_count),
        "failed_at": failed_at.isoformat(),
    })
    return fields


def original_fields(dlq_entry: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A dead letter's fields as the producer sent them, for a replay."""
    return {k: v for k, v in dlq_entry.items() if k.decode(errors="replace") not in DLQ_FIELDS}


async def dead_letter(
    client: aioredis.Redis,
    letters: Sequence[DeadLetter],
    *,
    source_stream: str,
    group: str,
    dlq_stream: str,
) -> None:
    """XADDs the dead letters and XACKs their originals, atomically."""
    if not letters:
        return
    failed_at = datetime.now(timezone.utc)
    async with client.pipeline(transaction=True) as pipe:
        for letter in letters:
            pipe.xadd(dlq_stream, dead_letter_fields(letter, source_stream, failed_at))
        pipe.xack(source_stream, group, *(letter.entry_id for letter in letters))
        await pipe.execute()
