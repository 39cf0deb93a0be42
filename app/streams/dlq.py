"""The dead-letter stream `audit_dlq`: entries that can never be stored, each with its reason.

A dead letter keeps the original fields byte for byte and adds `dlq_reason`, `dlq_error`,
`source_stream`, `source_id`, `delivery_count` and `failed_at`. One Lua script checks that the
entry is still pending for this consumer, writes the dead letter and acknowledges the original,
atomically: an entry is either still pending or in the DLQ, never neither and never twice (when
two consumers, or a consumer's own recovery, hold the same entry, only the first writes it).
The DLQ is never trimmed by the service.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.crc import key_slot

DLQ_FIELDS = ("dlq_reason", "dlq_error", "source_stream", "source_id", "delivery_count", "failed_at")

REASON_VALIDATION = "validation"
# The entry made the consumers that worked on it fail (die, or raise) `max_deliveries` times.
REASON_MAX_DELIVERIES = "max_deliveries"
REASON_PERMANENT_DB_ERROR = "permanent_db_error"
# The entry was deleted from the stream (XDEL, XTRIM) while it was pending: nothing to store.
REASON_ENTRY_DELETED = "entry_deleted"
# Larger than any storable entry: its fields are kept cut short, with the size and a digest.
REASON_TOO_LARGE = "too_large"
# Another event is stored under the same event_id.
REASON_DUPLICATE_EVENT_ID = "duplicate_event_id"
# Dead letters of these reasons do not hold the original entry: a replay could not store them.
NOT_REPLAYABLE = frozenset({REASON_ENTRY_DELETED, REASON_TOO_LARGE})

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
    fields.update(
        {
            "dlq_reason": letter.reason,
            "dlq_error": letter.error[:MAX_ERROR_LENGTH],
            "source_stream": source_stream,
            "source_id": letter.entry_id,
            "delivery_count": str(letter.delivery_count),
            "failed_at": failed_at.isoformat(),
        }
    )
    return fields


def original_fields(dlq_entry: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A dead letter's fields as the producer sent them, for a replay."""
    return {k: v for k, v in dlq_entry.items() if k.decode(errors="replace") not in DLQ_FIELDS}


# KEYS: stream, dlq. ARGV: group, consumer, then per letter: id, must_be_pending (1/0),
# field count, fields... Returns the ids written.
_DEAD_LETTER_SCRIPT = """
local stream, dlq, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local written = {}
local i = 3
while i <= #ARGV do
    local id, must_be_pending, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local held = must_be_pending == '0'
        or #redis.call('XPENDING', stream, group, id, id, 1, consumer) == 1
    if held then
        redis.call('XADD', dlq, '*', unpack(ARGV, i + 3, i + 2 + n))
        redis.call('XACK', stream, group, id)
        table.insert(written, id)
    end
    i = i + 3 + n
end
return written
"""


async def dead_letter(
    client: aioredis.Redis,
    letters: Sequence[DeadLetter],
    *,
    source_stream: str,
    group: str,
    consumer: str,
    dlq_stream: str,
) -> list[DeadLetter]:
    """Writes the dead letters of entries still pending for `consumer` and acknowledges their
    originals, atomically; returns those it wrote. A letter for an entry Redis already dropped
    from the pending list (deleted from the stream) is written without that check."""
    if not letters:
        return []
    failed_at = datetime.now(UTC)
    args: list = [group, consumer]
    for letter in letters:
        fields = dead_letter_fields(letter, source_stream, failed_at)
        must_be_pending = "0" if letter.reason == REASON_ENTRY_DELETED and not letter.fields else "1"
        args += [letter.entry_id, must_be_pending, 2 * len(fields)]
        for name, value in fields.items():
            args += [name, value]
    if isinstance(client, aioredis.RedisCluster) and key_slot(source_stream.encode()) != key_slot(dlq_stream.encode()):
        return await _dead_letter_in_two_steps(client, letters, source_stream, group, consumer, dlq_stream, failed_at)
    written = await client.eval(_DEAD_LETTER_SCRIPT, 2, source_stream, dlq_stream, *args)
    written_ids = {w.decode() if isinstance(w, bytes) else w for w in written}
    return [letter for letter in letters if letter.entry_id in written_ids]


async def _dead_letter_in_two_steps(
    client: aioredis.RedisCluster,
    letters: Sequence[DeadLetter],
    source_stream: str,
    group: str,
    consumer: str,
    dlq_stream: str,
    failed_at: datetime,
) -> list[DeadLetter]:
    """The plain stream and audit_dlq in different cluster slots: no script spans both. XADD the
    dead letter, then XACK: a crash between leaves one duplicate dead letter, never a lost entry."""
    written = []
    for letter in letters:
        if letter.reason != REASON_ENTRY_DELETED or letter.fields:
            held = await client.xpending_range(source_stream, group, letter.entry_id, letter.entry_id, 1, consumer)
            if not held:
                continue
        await client.xadd(dlq_stream, dead_letter_fields(letter, source_stream, failed_at))
        await client.xack(source_stream, group, letter.entry_id)
        written.append(letter)
    return written
