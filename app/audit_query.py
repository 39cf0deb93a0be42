"""Reading the audit trail: filters, time windows and keyset pages, built with SQLAlchemy Core.

Values are always bound parameters. A page is ordered by (event_timestamp, event_id) and the
cursor is the last row's pair, so pages stay stable while new events arrive. Time bounds are also
applied to event_date, the partition key, so Postgres reads only the partitions the window needs.
"""

import base64
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

import orjson
from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.tables import audit_events

# Query parameter -> column, all exact matches.
FILTERS = (
    "event_type", "event_category", "event_outcome", "service_name", "correlation_id",
    "resource_type", "resource_id", "actor_type", "actor_id", "parent_event_id", "trace_id",
)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended; opaque to clients (URL-safe base64 of a small JSON array)."""

    event_timestamp: datetime
    event_id: uuid.UUID

    def encode(self) -> str:
        raw = orjson.dumps([self.event_timestamp.isoformat(), str(self.event_id)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            timestamp, event_id = orjson.loads(raw)
            cursor = cls(datetime.fromisoformat(timestamp), uuid.UUID(event_id))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise ValueError("is not a cursor this service gave out") from None
        if cursor.event_timestamp.tzinfo is None:
            raise ValueError("is not a cursor this service gave out")
        return cursor


@dataclass(frozen=True)
class AuditQuery:
    filters: dict[str, Any] = field(default_factory=dict)
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    order: Literal["desc", "asc"] = "desc"
    limit: int = 100
    after: Cursor | None = None
    # No stored event is dated later than this (timestamps are validated against the clock):
    # bounding event_date keeps the empty future partitions out of an open-ended query.
    latest_event_date: date | None = None


def _utc_date(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


def build_select(query: AuditQuery) -> Select:
    t = audit_events
    statement = select(t)
    for name, value in query.filters.items():
        statement = statement.where(t.c[name] == value)
    if query.since is not None:
        statement = statement.where(t.c.event_timestamp >= query.since,
                                    t.c.event_date >= _utc_date(query.since))
    if query.until is not None:
        statement = statement.where(t.c.event_timestamp < query.until,
                                    t.c.event_date <= _utc_date(query.until))
    if query.latest_event_date is not None:
        statement = statement.where(t.c.event_date <= query.latest_event_date)
    position = tuple_(t.c.event_timestamp, t.c.event_id)
    if query.after is not None:
        mark = tuple_(query.after.event_timestamp, query.after.event_id)
        after_date = _utc_date(query.after.event_timestamp)
        if query.order == "desc":
            statement = statement.where(position < mark, t.c.event_date <= after_date)
        else:
            statement = statement.where(position > mark, t.c.event_date >= after_date)
    if query.order == "desc":
        statement = statement.order_by(t.c.event_timestamp.desc(), t.c.event_id.desc())
    else:
        statement = statement.order_by(t.c.event_timestamp.asc(), t.c.event_id.asc())
    # One row more than asked tells whether another page exists.
    return statement.limit(query.limit + 1)


async def find_events(conn: AsyncConnection, query: AuditQuery) -> tuple[list[dict], Cursor | None]:
    rows = [dict(row._mapping) for row in await conn.execute(build_select(query))]
    if len(rows) <= query.limit:
        return rows, None
    rows = rows[:query.limit]
    return rows, Cursor(rows[-1]["event_timestamp"], rows[-1]["event_id"])


async def get_event(conn: AsyncConnection, event_id: uuid.UUID) -> dict | None:
    row = (await conn.execute(select(audit_events).where(audit_events.c.event_id == event_id))).first()
    return None if row is None else dict(row._mapping)


def event_json(row: dict) -> dict:
    """A stored event as the API returns it."""
    return {
        name: (value.isoformat() if isinstance(value, (datetime, date)) else
               str(value) if isinstance(value, uuid.UUID) else value)
        for name, value in row.items()
    }
