"""Reading the audit trail: filters, time windows and keyset pages, built with SQLAlchemy Core.

Queries read the view `audit_events_all` (schema/008): the trail and the held rows of months
retention dropped. Values are always bound parameters. A page is ordered by (event_timestamp, event_id) and the
cursor is the last row's pair, so pages stay stable while new events arrive. Time bounds are also
applied to event_date, the partition key, so Postgres reads only the partitions the window needs.
"""

import base64
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, Table, Text, TextClause, cast, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.event import ActorType, EventOutcome, parse_rfc3339, utc_representable
from app.audit.record import COLUMNS, JSON_COLUMNS, STORED_COLUMNS, audit_events_all

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Rows per fetch from the server-side cursor of a page: 32 of the largest events (512 KiB of JSON
# each at most) is 16 MiB in hand; small events are fetched in few round trips all the same.
FETCH_ROWS = 32
Order = Literal["desc", "asc"]

FilterText = Annotated[str, Field(max_length=255)]


class AuditFilters(BaseModel):
    """Exact-match filters of an audit query: a column each."""

    model_config = ConfigDict(extra="forbid")

    event_type: FilterText | None = None
    event_category: FilterText | None = None
    event_outcome: EventOutcome | None = None
    service_name: FilterText | None = None
    correlation_id: FilterText | None = None
    resource_type: FilterText | None = None
    resource_id: FilterText | None = None
    actor_type: ActorType | None = None
    actor_id: FilterText | None = None
    parent_event_id: uuid.UUID | None = None
    trace_id: FilterText | None = None


FILTERS: tuple[str, ...] = tuple(AuditFilters.model_fields)

# `event_data.<key>=<value>` (Kubernaut's detail_key/detail_value): containment on a top-level key,
# served by the jsonb_path_ops GIN index on event_data (schema/001).
EVENT_DATA_PREFIX = "event_data."
MAX_EVENT_DATA_FILTERS = 16
_JSON_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$")


def event_data_candidates(key: str, value: str) -> list[dict[str, Any]]:
    """The objects an event_data filter matches by containment: the value as a JSON string, and
    as a number or boolean when it reads as one (`5` matches {"k": 5} and {"k": "5"})."""
    candidates: list[dict[str, Any]] = [{key: value}]
    if value in ("true", "false"):
        candidates.append({key: value == "true"})
    elif _JSON_NUMBER.match(value):
        number = orjson.loads(value) if len(value) < 64 else None
        if isinstance(number, int) or (isinstance(number, float) and math.isfinite(number)):
            candidates.append({key: number})
    return candidates


# A time bound: RFC 3339, or a duration back from now.
RELATIVE_TIME = r"(\d{1,6})([smhdw])"
_RELATIVE = re.compile(f"^{RELATIVE_TIME}$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
RFC3339_TIME = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
TIME_BOUND_PATTERN = f"^({RELATIVE_TIME}|{RFC3339_TIME})$"


def parse_time_bound(text: str) -> datetime:
    """RFC 3339, or a duration back from now: `15m`, `24h`, `7d`."""
    if match := _RELATIVE.match(text):
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:  # 999999w: before year 1
            raise ValueError("reaches back before year 1") from None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp or a duration back from now such as 15m, 24h or 7d") from None


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
            cursor = cls(utc_representable(datetime.fromisoformat(timestamp)), uuid.UUID(event_id))
        except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
            raise ValueError("is not a cursor this service gave out") from None
        if cursor.event_timestamp.tzinfo is None:
            raise ValueError("is not a cursor this service gave out")
        return cursor


@dataclass(frozen=True)
class AuditQuery:
    filters: dict[str, Any] = field(default_factory=dict)
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    order: Order = "desc"
    limit: int = DEFAULT_PAGE_SIZE
    after: Cursor | None = None
    # event_data.<key>=<value> filters: every one must match (app/audit/query.py:event_data_candidates).
    event_data: dict[str, str] = field(default_factory=dict)
    # No stored event is dated later than this (timestamps are validated against the clock):
    # bounding event_date keeps the empty future partitions out of an open-ended query.
    latest_event_date: date | None = None


def _utc_date(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


# event_data and metadata are read as Postgres writes them (jsonb as text) and passed on as they
# are: numbers stay exact (a parse into Python would make a float of a 30-digit integer), and a
# page costs no parse and no re-encoding of its largest fields.
def _selected(t: Table) -> list[ColumnElement]:
    return [cast(t.c[name], Text).label(name) if name in JSON_COLUMNS else t.c[name] for name in COLUMNS]


_SELECTED = _selected(audit_events_all)


def filtered(statement: Select, query: AuditQuery, t: Table = audit_events_all) -> Select:
    """`statement` with the query's filters and time bounds (which also bound the partitions read)."""
    for name, value in query.filters.items():
        statement = statement.where(t.c[name] == value)
    for key, value in query.event_data.items():
        statement = statement.where(or_(*(t.c.event_data.contains(c) for c in event_data_candidates(key, value))))
    if query.since is not None:
        statement = statement.where(t.c.event_timestamp >= query.since, t.c.event_date >= _utc_date(query.since))
    if query.until is not None:
        statement = statement.where(t.c.event_timestamp < query.until, t.c.event_date <= _utc_date(query.until))
    if query.latest_event_date is not None:
        statement = statement.where(t.c.event_date <= query.latest_event_date)
    return statement


def build_select(query: AuditQuery, t: Table = audit_events_all) -> Select:
    """A page of the query: keyset-paginated on (event_timestamp, event_id)."""
    statement = filtered(select(*_selected(t)), query, t)
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


async def find_page(
    conn: AsyncConnection, query: AuditQuery, max_bytes: int, encode: Callable[[dict], bytes]
) -> tuple[list[bytes], Cursor | None]:
    """A page of events, each encoded by `encode`, and the cursor of the next page (None: no more).

    Rows are fetched FETCH_ROWS at a time (a server-side cursor) and encoded as they come, so the
    memory a page takes is its encoded bytes plus one fetch, not every row as Python objects. The
    page ends at `query.limit` rows, or before the row that would take it past `max_bytes` (a page
    always holds one row, however large): then the cursor continues after its last row."""
    page: list[bytes] = []
    size = 0
    last: dict | None = None
    result = await conn.stream(build_select(query).execution_options(yield_per=FETCH_ROWS))
    try:
        async for row in result:
            values = dict(row._mapping)
            if len(page) == query.limit:  # the one row more than asked: another page exists
                break
            encoded = encode(values)
            if page and size + len(encoded) > max_bytes:
                break
            page.append(encoded)
            size += len(encoded)
            last = values
        else:
            return page, None
    finally:
        await result.close()
    assert last is not None
    return page, Cursor(last["event_timestamp"], last["event_id"])


def export_select(query: AuditQuery) -> Select:
    """Every row of the query, oldest first, with the columns a verified export needs."""
    t = audit_events_all
    statement = filtered(select(*(t.c[name] for name in STORED_COLUMNS)), query)
    return statement.order_by(t.c.event_timestamp.asc(), t.c.event_id.asc())


async def find_events(
    conn: AsyncConnection,
    query: AuditQuery,
    *conditions: ColumnElement[bool] | TextClause,
    table: Table = audit_events_all,
) -> tuple[list[dict], Cursor | None]:
    """A page of `query`; `conditions` narrow it further (the viewer's live tail: committed since,
    on `audit_events` itself, whose rows have the xmin it reads)."""
    rows = [dict(row._mapping) for row in await conn.execute(build_select(query, table).where(*conditions))]
    if len(rows) <= query.limit:
        return rows, None
    rows = rows[: query.limit]
    return rows, Cursor(rows[-1]["event_timestamp"], rows[-1]["event_id"])


async def get_event(conn: AsyncConnection, event_id: uuid.UUID) -> dict | None:
    row = (await conn.execute(select(*_SELECTED).where(audit_events_all.c.event_id == event_id))).first()
    return None if row is None else dict(row._mapping)
