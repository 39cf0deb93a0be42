"""`/api/v1/audit-events`: query the trail, read one event, write events (through the stream)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
import structlog
from pydantic import BaseModel, BeforeValidator, Field, RootModel, ValidationError, WithJsonSchema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import middleware
from app.api.access import AUDIT_READ, AUDIT_WRITE
from app.api.inputs import QueryInt, error_location, parse_query, query_values, read_json_body
from app.api.openapi import Operation, Reply
from app.api.problems import Problem
from app.api.resources import resources
from app.audit.event import AuditEvent, ValidationLimits, describe_validation_error
from app.audit.identity import DERIVABLE, Submission
from app.audit.query import (
    DEFAULT_PAGE_SIZE,
    EVENT_DATA_PREFIX,
    MAX_EVENT_DATA_FILTERS,
    MAX_PAGE_SIZE,
    TIME_BOUND_PATTERN,
    AuditFilters,
    AuditQuery,
    Cursor,
    Order,
    find_page,
    get_event,
    parse_time_bound,
)
from app.audit.record import JSON_COLUMNS, record_json
from app.audit.store import DuplicateEventIds
from app.core.read_replicas import ReadSource

MAX_EVENTS_PER_REQUEST = 1000
RECORD_REF = {"$ref": "#/components/schemas/AuditEventRecord"}

TimeBound = Annotated[
    datetime, BeforeValidator(parse_time_bound), WithJsonSchema({"type": "string", "pattern": TIME_BOUND_PATTERN})
]
CursorText = Annotated[Cursor, BeforeValidator(Cursor.decode), WithJsonSchema({"type": "string", "minLength": 1})]


class AuditEventListQuery(AuditFilters):
    """The query parameters of `GET /api/v1/audit-events`."""

    since: TimeBound | None = Field(None, description="inclusive: RFC 3339, or back from now (15m, 24h, 7d)")
    until: TimeBound | None = Field(None, description="exclusive, same forms as since")
    order: Order = Field("desc", description="newest first, or oldest first (a correlation's timeline)")
    limit: QueryInt = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: CursorText | None = Field(None, description="next_cursor of the previous page")


class Pagination(BaseModel):
    limit: int
    next_cursor: str | None
    has_more: bool


class AuditEventPage(BaseModel):
    data: Annotated[list[dict[str, Any]], WithJsonSchema({"type": "array", "items": RECORD_REF})]
    pagination: Pagination


class WriteResult(BaseModel):
    event_id: uuid.UUID | None = None
    event_ids: list[uuid.UUID] | None = None
    status: Literal["accepted", "stored"]


class AuditEventsBody(
    RootModel[AuditEvent | Annotated[list[AuditEvent], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]]
):
    """One event, or an array of them (documentation: the handler validates item by item)."""


def event_data_filters(values: dict[str, str]) -> dict[str, str]:
    """Takes the `event_data.<key>=<value>` parameters out of `values`: {key: value}."""
    found = {name: values.pop(name) for name in list(values) if name.startswith(EVENT_DATA_PREFIX)}
    if len(found) > MAX_EVENT_DATA_FILTERS:
        raise Problem(400, f"event_data: at most {MAX_EVENT_DATA_FILTERS} filters", parameter="event_data")
    filters = {}
    for name, value in found.items():
        key = name.removeprefix(EVENT_DATA_PREFIX)
        if not key or len(key) > 255:
            raise Problem(400, f"{name}: the key must be 1 to 255 characters", parameter=name)
        if len(value) > 1024:
            raise Problem(400, f"{name}: at most 1024 characters", parameter=name)
        filters[key] = value
    return filters


def list_query(request: Request, max_future_skew: timedelta) -> AuditQuery:
    values = query_values(request)
    data_filters = event_data_filters(values)
    params = parse_query(AuditEventListQuery, values)
    if params.since and params.until and params.since >= params.until:
        raise Problem(400, "since: must be earlier than until", parameter="since")
    latest = (datetime.now(UTC) + max_future_skew).date()
    filters = params.model_dump(include=set(AuditFilters.model_fields), exclude_none=True)
    return AuditQuery(
        filters,
        params.since,
        params.until,
        params.order,
        params.limit,
        params.cursor,
        event_data=data_filters,
        latest_event_date=latest,
    )


def encode_record(row: dict) -> bytes:
    """A row as JSON; its JSON columns come as Postgres's text (app/audit/query.py) and are
    written as they are."""
    record = record_json(row)
    for name in JSON_COLUMNS:
        if record[name] is not None:
            record[name] = orjson.Fragment(record[name])
    # Column names are SQLAlchemy's `quoted_name`, a str subclass, which orjson takes only so.
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)


async def list_audit_events(request: Request) -> Response:
    """A page bounded by rows (`limit`) and by bytes (`max_page_bytes`): the rows are encoded as
    they are fetched, and the body is written from the encoded rows (app/audit/query.py)."""
    found = resources(request)
    query = list_query(request, found.settings.validation_limits.max_future_skew)

    async def read(source: ReadSource) -> tuple[list[bytes], Cursor | None]:
        async with source.engine.connect() as conn:
            return await find_page(conn, query, found.settings.max_page_bytes, encode_record)

    rows, next_cursor = await found.reads.run(read)
    pagination = {
        "limit": query.limit,
        "next_cursor": next_cursor.encode() if next_cursor else None,
        "has_more": next_cursor is not None,
    }
    body = b"".join((b'{"data":[', b",".join(rows), b'],"pagination":', orjson.dumps(pagination), b"}"))
    return Response(body, media_type="application/json")


async def get_audit_event(request: Request) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise Problem(400, "event_id: must be a UUID", parameter="event_id") from None

    async def read(source: ReadSource) -> dict | None:
        async with source.engine.connect() as conn:
            return await get_event(conn, event_id)

    row = await resources(request).reads.run(read)
    if row is None:
        raise Problem(404, f"no audit event {event_id}")
    return Response(encode_record(row), media_type="application/json")


def trace_context(request: Request) -> dict[str, str]:
    """trace_id and span_id from a W3C `traceparent` header, if it is well formed."""
    return middleware.trace_context(request.headers.get("traceparent", ""))


def validate_events(items: list, limits: ValidationLimits, trace: dict[str, str]) -> list[Submission]:
    submissions = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Problem(400, f"item {index}: must be a JSON object", index=index, field="body")
        if trace and "trace_id" not in item:
            item = {**trace, **item}
        try:
            event = AuditEvent.model_validate(item, context=limits)
        except ValidationError as error:
            field, _ = error_location(error.errors(include_url=False)[0])
            raise Problem(
                400, f"item {index}: {describe_validation_error(error)}", index=index, field=field or None
            ) from None
        submissions.append(Submission(event, frozenset(name for name in DERIVABLE if item.get(name) is None)))
    return submissions


async def create_audit_events(request: Request) -> Response:
    found = resources(request)
    body = await read_json_body(request, found.settings.max_body_bytes)
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise Problem(400, "the body must be an event object or an array of them", field="body")
    if not items:
        raise Problem(400, "the array holds no events", field="body")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise Problem(400, f"at most {MAX_EVENTS_PER_REQUEST} events per request", field="body")
    submissions = validate_events(items, found.settings.validation_limits, trace_context(request))
    correlation_ids = {s.event.correlation_id for s in submissions}
    if len(correlation_ids) == 1 and None not in correlation_ids:
        # One remediation's events: every line logged while writing them carries its id.
        structlog.contextvars.bind_contextvars(correlation_id=correlation_ids.pop())
    ids = [str(s.event.event_id) for s in submissions]
    try:
        status = await found.writer.write(submissions)  # StoresUnavailable: a 503 (app/api/problems.py)
    except DuplicateEventIds as error:
        raise Problem(
            409,
            f"other events are stored under event_id {', '.join(error.event_ids)}; nothing was stored",
            kind="duplicate-event-id",
            field="event_id",
            event_ids=error.event_ids,
        ) from None
    answer = {"event_id": ids[0], "status": status} if single else {"event_ids": ids, "status": status}
    return JSONResponse(answer, status_code=202 if status == "accepted" else 201)


async def audit_events(request: Request) -> Response:
    # One route for both methods, so that a 405 lists both in its Allow header.
    return await (create_audit_events if request.method == "POST" else list_audit_events)(request)


routes = [
    Route("/api/v1/audit-events", audit_events, methods=["GET", "POST"]),
    Route("/api/v1/audit-events/{event_id}", get_audit_event, methods=["GET"]),
]

operations = [
    Operation(
        "GET /api/v1/audit-events",
        "listAuditEvents",
        "Query the audit trail",
        {200: Reply("a page of events", AuditEventPage)},
        description=(
            "Besides the parameters below, `event_data.<key>=<value>` filters on a top-level key of "
            "event_data (containment, served by the jsonb_path_ops GIN index): the value matches a JSON "
            "string equal to it, or a number or boolean when it reads as one (`event_data.attempt=3` "
            'matches 3 and "3"; `event_data.dry_run=true` matches true and "true"). Several may be '
            f"given (at most {MAX_EVENT_DATA_FILTERS}); all must match."
        ),
        query=AuditEventListQuery,
        query_patterns={"event_data.<key>": "a top-level key of event_data equal to this value (see the description)"},
        scope=AUDIT_READ,
    ),
    Operation(
        "POST /api/v1/audit-events",
        "createAuditEvents",
        "Write one event or up to 1000 (through the stream; straight to Postgres when Redis is down)",
        {
            202: Reply("accepted into the stream", WriteResult),
            201: Reply("Redis was down: stored in Postgres", WriteResult),
            413: Reply("the body is too large"),
            415: Reply("the body is not JSON"),
            409: Reply("Redis was down and Postgres holds other events under some of these event_ids"),
            503: Reply("neither Redis nor Postgres takes writes; see Retry-After"),
        },
        body=AuditEventsBody,
        headers={"traceparent": "W3C trace context: fills trace_id and span_id when the body has none"},
        scope=AUDIT_WRITE,
    ),
    Operation(
        "GET /api/v1/audit-events/{event_id}",
        "getAuditEvent",
        "One event by id",
        {200: Reply("the event", schema=RECORD_REF), 404: Reply("no event with this id")},
        path_formats={"event_id": "uuid"},
        scope=AUDIT_READ,
    ),
]
