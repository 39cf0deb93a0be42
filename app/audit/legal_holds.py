"""Legal holds per correlation id (issue 15): the record shared by the API and the commands.

A held correlation never loses events to retention (app/audit/retention.py moves its rows to the
archive before a month is dropped). Placing a hold that is active changes nothing; releasing one
keeps its row (released_by, released_at), so the history stays, and the next hold of the same
correlation is a new row. Who placed or released it is the caller's identity.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

# The longest correlation id the trail stores (audit_events.correlation_id VARCHAR(255)).
MAX_CORRELATION_ID = 255
MAX_REASON = 4096
_COLUMNS = "correlation_id, reason, placed_by, placed_at, released_by, released_at"


@dataclass(frozen=True)
class LegalHold:
    correlation_id: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None

    @classmethod
    def of(cls, record: asyncpg.Record) -> "LegalHold":
        return cls(**dict(record))

    def as_json(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at.isoformat(),
            "released_by": self.released_by,
            "released_at": self.released_at.isoformat() if self.released_at else None,
        }


async def place(conn: asyncpg.Connection, correlation_id: str, reason: str, placed_by: str) -> tuple[LegalHold, bool]:
    """The active hold of the correlation, and whether this call placed it (False: it existed)."""
    async with conn.transaction():
        record = await conn.fetchrow(
            "INSERT INTO audit_legal_holds (correlation_id, reason, placed_by) VALUES ($1, $2, $3) "
            f"ON CONFLICT (correlation_id) WHERE released_at IS NULL DO NOTHING RETURNING {_COLUMNS}",
            correlation_id, reason, placed_by[:255],
        )  # fmt: skip
        if record is not None:
            return LegalHold.of(record), True
        existing = await get(conn, correlation_id)
    assert existing is not None  # the conflict was with it, and a release waits for our commit
    return existing, False


async def release(conn: asyncpg.Connection, correlation_id: str, released_by: str) -> LegalHold | None:
    """The released hold; None when the correlation has no active hold."""
    record = await conn.fetchrow(
        "UPDATE audit_legal_holds SET released_by = $2, released_at = now() "
        f"WHERE correlation_id = $1 AND released_at IS NULL RETURNING {_COLUMNS}",
        correlation_id, released_by[:255],
    )  # fmt: skip
    return LegalHold.of(record) if record is not None else None


async def get(conn: asyncpg.Connection, correlation_id: str) -> LegalHold | None:
    """The active hold of the correlation (a released one is history, not a hold)."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM audit_legal_holds WHERE correlation_id = $1 AND released_at IS NULL", correlation_id
    )
    return LegalHold.of(record) if record is not None else None


async def active(conn: asyncpg.Connection) -> list[LegalHold]:
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM audit_legal_holds WHERE released_at IS NULL ORDER BY placed_at, correlation_id"
    )
    return [LegalHold.of(r) for r in records]
