"""`/ui/correlations/{correlation_id}`: one remediation's timeline, oldest first, a thousand events
a page (the list endpoint's largest page; a cursor pages on)."""

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from app.api.inputs import parse_query
from app.api.resources import resources
from app.audit.query import MAX_PAGE_SIZE, AuditFilters, AuditQuery, Cursor, find_events
from app.ui.events import form_values
from app.ui.integrity import integrity_statuses
from app.ui.rendering import PageError, Viewer, page
from app.ui.timeline import MAX_DRAWN_DEPTH, build_timeline

TIMELINE_PAGE = MAX_PAGE_SIZE


@page
async def correlation_page(viewer: Viewer, request: Request) -> Response:
    # The list endpoint's own check of the value (its length).
    correlation_id = parse_query(AuditFilters, {"correlation_id": request.path_params["correlation_id"]}).correlation_id
    values = form_values(request)
    cursor_text = values.pop("cursor", None)
    if values:
        raise PageError(400, f"{next(iter(values))}: unknown query parameter")
    try:
        after = Cursor.decode(cursor_text) if cursor_text else None
    except ValueError as error:
        raise PageError(400, f"cursor: {error}") from None
    latest = (datetime.now(UTC) + viewer.settings.validation_limits.max_future_skew).date()
    query = AuditQuery(
        {"correlation_id": correlation_id}, order="asc", limit=TIMELINE_PAGE, after=after, latest_event_date=latest
    )
    async with resources(request).engine.connect() as conn:
        rows, next_cursor = await find_events(conn, query)
        statuses = await integrity_statuses(resources(request), rows)
    if not rows and after is None:
        raise PageError(404, f"No events with correlation_id {correlation_id!r}.")
    return viewer.render(
        request,
        "correlation.html",
        {
            "correlation_id": correlation_id,
            "timeline": build_timeline(rows),
            "integrity": statuses,
            "continued": after is not None,
            "next_cursor": next_cursor.encode() if next_cursor else None,
            "max_drawn_depth": MAX_DRAWN_DEPTH,
            "title": f"Correlation {correlation_id}",
        },
    )
