"""`/ui/`: the event list (the list endpoint's filters as a form, keyset pages, the live tail), and
`/ui/events/{event_id}`: one event, its parent and its children.

The parameters are the API's own (`AuditEventListQuery`), read by the same code; the rows come
from `app/audit/query.py` like the API's.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import get_args

from starlette.requests import Request
from starlette.responses import Response

from app.api.audit import AuditEventListQuery
from app.api.inputs import parse_query, query_values
from app.api.resources import resources
from app.audit.arrivals import current_mark, one_snapshot
from app.audit.event import ActorType, EventOutcome
from app.audit.query import FILTERS, AuditQuery, Order, find_events, get_event
from app.ui.integrity import integrity_statuses
from app.ui.rendering import PREFIX, PageError, Viewer, page

# The form: every filter of the list endpoint, then the window and the page.
FORM_FIELDS: tuple[str, ...] = (*FILTERS, "since", "until", "order", "limit")
CHOICES: dict[str, tuple[str, ...]] = {
    "event_outcome": get_args(EventOutcome),
    "actor_type": get_args(ActorType),
    "order": get_args(Order),
}
HINTS = {"since": "15m, 24h, 7d or RFC 3339", "until": "RFC 3339 or 15m", "limit": "1–1000"}
# What a tail's URL keeps of the list's parameters: the filters and the window, not the page.
TAIL_PARAMETERS = (*FILTERS, "since", "until")
CHILDREN_SHOWN = 100


def form_values(request: Request) -> dict[str, str]:
    """The parameters that say something (a form sends its empty fields too), each given once."""
    return {name: value for name, value in query_values(request).items() if value.strip()}


def list_query(values: dict[str, str], max_future_skew: timedelta) -> AuditQuery:
    params = parse_query(AuditEventListQuery, values)
    if params.since and params.until and params.since >= params.until:
        raise PageError(400, "since: must be earlier than until")
    filters = params.model_dump(include=set(FILTERS), exclude_none=True)
    latest = (datetime.now(UTC) + max_future_skew).date()
    return AuditQuery(
        filters, params.since, params.until, params.order, params.limit, params.cursor, latest_event_date=latest
    )


def form_context(values: dict[str, str]) -> dict:
    return {"fields": FORM_FIELDS, "choices": CHOICES, "hints": HINTS, "values": values}


@page
async def event_list(viewer: Viewer, request: Request) -> Response:
    values = form_values(request)
    query = list_query(values, viewer.settings.validation_limits.max_future_skew)
    async with one_snapshot(resources(request).engine) as conn:
        mark = await current_mark(conn)
        rows, next_cursor = await find_events(conn, query)
    # Live: the first page, newest first; it starts where this page's snapshot ends.
    live = query.after is None and query.order == "desc"
    tail_values = {name: value for name, value in values.items() if name in TAIL_PARAMETERS}
    return viewer.render(
        request,
        "events.html",
        {
            **form_context(values),
            "rows": rows,
            "next_cursor": next_cursor.encode() if next_cursor else None,
            "tail_values": {**tail_values, "mark": mark.snapshot} if live else None,
            "title": "Audit events",
        },
    )


@page
async def event_page(viewer: Viewer, request: Request) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise PageError(400, "event_id: must be a UUID") from None
    async with resources(request).engine.connect() as conn:
        row = await get_event(conn, event_id)
        if row is None:
            raise PageError(404, f"No audit event {event_id}.")
        children, more = await find_events(
            conn, AuditQuery({"parent_event_id": event_id}, order="asc", limit=CHILDREN_SHOWN)
        )
        statuses = await integrity_statuses(resources(request), [row])
    return viewer.render(
        request,
        "event.html",
        {
            "e": row,
            "children": children,
            "more_children": more is not None,
            "integrity": statuses[row["event_id"]],
            "title": f"Event {event_id}",
            "children_url": f"{PREFIX}/?parent_event_id={event_id}",
        },
    )
