"""`/api/v1/audit-events`: query the trail, read one event, write events (through the stream)."""

import re
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import redis
import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Route

from app.audit_query import FILTERS, AuditQuery, Cursor, event_json, find_events, get_event
from app.events import (
    ACTOR_TYPES,
    EVENT_OUTCOMES,
    AuditEvent,
    describe_validation_error,
    parse_rfc3339,
)
from app.api.problems import Problem

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_REQUEST = 1000
LIST_PARAMETERS = frozenset(FILTERS) | {"since", "until", "order", "limit", "cursor"}
_RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def parse_time(name: str, text: str) -> datetime:
    """RFC 3339, or a duration back from now: `15m`, `24h`, `7d`."""
    if match := _RELATIVE.match(text):
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise Problem(400, f"{name}: must be an RFC 3339 timestamp or a duration back from now "
                           "such as 15m, 24h or 7d", parameter=name) from None


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise Problem(400, f"{name}: given more than once", parameter=name)
    if values and "\x00" in values[0]:
        raise Problem(400, f"{name}: must not contain NUL characters", parameter=name)
    return values[0] if values else None


def parse_list_query(request: Request, max_future_skew: timedelta) -> AuditQuery:
    unknown = sorted(set(request.query_params) - LIST_PARAMETERS)
    if unknown:
        raise Problem(400, f"{unknown[0]}: unknown query parameter", parameter=unknown[0])
    filters = {}
    for name in FILTERS:
        value = _single(request, name)
        if value is None:
            continue
        if name == "parent_event_id":
            try:
                value = uuid.UUID(value)
            except ValueError:
                raise Problem(400, f"{name}: must be a UUID", parameter=name) from None
        elif name == "event_outcome" and value not in EVENT_OUTCOMES:
            raise Problem(400, f"{name}: must be one of {', '.join(EVENT_OUTCOMES)}", parameter=name)
        elif name == "actor_type" and value not in ACTOR_TYPES:
            raise Problem(400, f"{name}: must be one of {', '.join(ACTOR_TYPES)}", parameter=name)
        elif len(value) > 255:
            raise Problem(400, f"{name}: at most 255 characters", parameter=name)
        filters[name] = value

    since = parse_time("since", text) if (text := _single(request, "since")) is not None else None
    until = parse_time("until", text) if (text := _single(request, "until")) is not None else None
    if since and until and since >= until:
        raise Problem(400, "since: must be earlier than until", parameter="since")

    order = _single(request, "order")
    order = "desc" if order is None else order
    if order not in ("desc", "asc"):
        raise Problem(400, "order: must be desc or asc", parameter="order")

    limit_text = _single(request, "limit")
    try:
        limit = 100 if limit_text is None else int(limit_text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise Problem(400, "limit: must be a whole number from 1 to 1000", parameter="limit")

    cursor_text = _single(request, "cursor")
    try:
        after = Cursor.decode(cursor_text) if cursor_text is not None else None
    except ValueError as error:
        raise Problem(400, f"cursor: {error}", parameter="cursor") from None
    latest = (datetime.now(timezone.utc) + max_future_skew).date()
    return AuditQuery(filters, since, until, order, limit, after, latest_event_date=latest)


async def list_audit_events(request: Request) -> Response:
    query = parse_list_query(request, request.app.state.settings.validation_limits.max_future_skew)
    async with request.app.state.engine.connect() as conn:
        rows, next_cursor = await find_events(conn, query)
    return JSONResponse({
        "data": [event_json(row) for row in rows],
        "pagination": {
            "limit": query.limit,
            "next_cursor": next_cursor.encode() if next_cursor else None,
            "has_more": next_cursor is not None,
        },
    })


async def get_audit_event(request: Request) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise Problem(400, "event_id: must be a UUID", parameter="event_id") from None
    async with request.app.state.engine.connect() as conn:
        row = await get_event(conn, event_id)
    if row is None:
        raise Problem(404, f"no audit event {event_id}")
    return JSONResponse(event_json(row))


async def read_json_body(request: Request, max_bytes: int):
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(415, "the body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Problem(413, f"the body is larger than {max_bytes} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Problem(400, f"the body is not valid JSON ({error})") from None


def trace_context(request: Request) -> dict[str, str]:
    """trace_id and span_id from a W3C `traceparent` header, if it is well formed."""
    match = _TRACEPARENT.match(request.headers.get("traceparent", "").strip().lower())
    if not match or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return {}
    return {"trace_id": match[1], "span_id": match[2]}


def validate_events(items: list, limits, trace: dict[str, str]) -> list[AuditEvent]:
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Problem(400, f"item {index}: must be a JSON object", index=index)
        if trace and "trace_id" not in item:
            item = {**trace, **item}
        try:
            events.append(AuditEvent.model_validate(item, context=limits))
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            raise Problem(400, f"item {index}: {describe_validation_error(error)}",
                          index=index, field=field) from None
    return events


async def create_audit_events(request: Request) -> Response:
    state = request.app.state
    body = await read_json_body(request, state.settings.max_body_bytes)
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise Problem(400, "the body must be an event object or an array of them")
    if not items:
        raise Problem(400, "the array holds no events")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise Problem(400, f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    events = validate_events(items, state.settings.validation_limits, trace_context(request))
    ids = [str(event.event_id) for event in events]

    try:
        await state.producer.publish_many(events)
        status_code, status = 202, "accepted"
    except (redis.ConnectionError, redis.TimeoutError) as redis_error:
        # Either store suffices: straight to Postgres, idempotently (the same event_id is one row
        # even if some of the XADDs got through before Redis went away).
        try:
            await state.audit_store.insert(events)
        except Exception as db_error:
            log.error("write_failed_both_stores", redis_error=str(redis_error), db_error=str(db_error),
                      events=len(events))
            raise Problem(503, "neither Redis nor Postgres can take events now; retry later",
                          headers={"Retry-After": "5"}) from None
        log.warning("redis_unavailable_wrote_to_postgres", events=len(events), error=str(redis_error))
        status_code, status = 201, "stored"
    body = {"event_id": ids[0], "status": status} if single else {"event_ids": ids, "status": status}
    return JSONResponse(body, status_code=status_code)


class AuditEvents(HTTPEndpoint):
    # One endpoint for both methods, so a 405 lists both in its Allow header.
    async def get(self, request: Request) -> Response:
        return await list_audit_events(request)

    async def post(self, request: Request) -> Response:
        return await create_audit_events(request)


routes = [
    Route("/api/v1/audit-events", AuditEvents),
    Route("/api/v1/audit-events/{event_id}", get_audit_event, methods=["GET"]),
]
