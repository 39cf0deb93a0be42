"""`/ui/tail`: the event list's live tail, server-sent events fed from committed rows.

Each poll reads, in one snapshot, the rows matching the list's filters that were committed since
the last mark (`app/audit/arrivals.py`: commit order, so a row committed late with an older
timestamp still arrives), renders them with the list's own row template, and sends them. The SSE
`id` is the mark: a browser that reconnects (EventSource does, with `Last-Event-ID`) goes on where
it left off, and drops rows it already shows.

Bounded per client and per process: at most `ui_tail_max_clients` tails at once (the next one is
told it is busy and retries later), ROWS_PER_MESSAGE rows a message and ROWS_PER_POLL a poll (a
flood is sent over several polls, never dropped), a heartbeat every HEARTBEAT_S, a client that
stops reading for SEND_TIMEOUT_S is dropped, a connection lasts MAX_CONNECTION_S at most (then the
browser reconnects from its mark), and a closed connection ends its tail at once.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from app.api.problems import Problem
from app.api.resources import resources
from app.audit.arrivals import ArrivalMark, current_mark, find_arrivals, one_snapshot
from app.audit.query import AuditQuery, Cursor
from app.ui.events import TAIL_PARAMETERS, form_values, list_query
from app.ui.rendering import PageError, Viewer, store_unavailable

log = structlog.get_logger(__name__)

ROWS_PER_MESSAGE = 100
ROWS_PER_POLL = 1000
HEARTBEAT_S = 15
SEND_TIMEOUT_S = 10
MAX_CONNECTION_S = 300
RECONNECT_MS = 2000
BUSY_RETRY_MS = 15_000
TROUBLE_BACKOFF_S = 2.0


@dataclass(frozen=True)
class Poll:
    fragments: list[str]  # rendered rows, one message each
    later: ArrivalMark  # the mark these rows were committed by
    after: Cursor | None  # where to go on within this delta (None: all of it sent)


async def read_arrivals(
    viewer: Viewer,
    engine: AsyncEngine,
    query: AuditQuery,
    earlier: ArrivalMark,
    later: ArrivalMark | None,
    after: Cursor | None,
    lookback: timedelta,
) -> Poll:
    """Up to ROWS_PER_POLL rows committed after `earlier` (and by `later`, taken now if None)."""
    fragments = []
    async with one_snapshot(engine) as conn:
        later = later or await current_mark(conn)
        for _ in range(ROWS_PER_POLL // ROWS_PER_MESSAGE):
            rows, after = await find_arrivals(conn, replace(query, after=after), earlier, later, lookback=lookback)
            if rows:
                fragments.append(viewer.fragment("_rows.html", rows=rows))
            if after is None:
                break
    return Poll(fragments, later, after)


async def events(viewer: Viewer, engine: AsyncEngine, query: AuditQuery, mark: ArrivalMark | None) -> AsyncIterator:
    if not viewer.tails.try_take():
        log.info("ui_tail_busy", open=viewer.tails.open)
        yield ServerSentEvent(
            f"{viewer.tails.limit} live tails are open; trying again soon", event="busy", retry=BUSY_RETRY_MS
        )
        return
    settings = viewer.settings
    lookback = timedelta(seconds=settings.ui_tail_lookback_s)
    try:
        if mark is None:
            async with one_snapshot(engine) as conn:
                mark = await current_mark(conn)
        yield ServerSentEvent("", event="ready", id=mark.snapshot, retry=RECONNECT_MS)
        ends = time.monotonic() + MAX_CONNECTION_S
        later: ArrivalMark | None = None
        after: Cursor | None = None
        troubled = False
        while time.monotonic() < ends:
            try:
                poll = await read_arrivals(viewer, engine, query, mark, later, after, lookback)
            except Exception as error:
                if not store_unavailable(error):
                    log.exception("ui_tail_failed")
                troubled = True
                yield ServerSentEvent("Postgres did not answer; retrying", event="trouble")
                await asyncio.sleep(TROUBLE_BACKOFF_S)
                continue
            if troubled:  # back: the browser shows it live again, and nothing was lost meanwhile
                troubled = False
                yield ServerSentEvent("", event="ready")
            for n, fragment in enumerate(poll.fragments, 1):
                complete = poll.after is None and n == len(poll.fragments)
                yield ServerSentEvent(fragment, event="events", id=poll.later.snapshot if complete else None)
            if poll.after is None:
                mark, later, after = poll.later, None, None
                await asyncio.sleep(settings.ui_tail_poll_interval_s)
            else:  # more of this delta: go on at once, from where this poll stopped
                later, after = poll.later, poll.after
    finally:
        viewer.tails.release()


async def tail(viewer: Viewer, request: Request) -> Response:
    try:
        values = form_values(request)
        mark_text = request.headers.get("last-event-id") or values.pop("mark", None)
        unknown = set(values) - set(TAIL_PARAMETERS)
        if unknown:
            raise PageError(400, f"{sorted(unknown)[0]}: not a parameter of the live tail")
        query = list_query(values, viewer.settings.validation_limits.max_future_skew)
        mark = ArrivalMark.parse(mark_text) if mark_text else None
    except (Problem, PageError) as error:
        message = error.detail if isinstance(error, Problem) else error.message
        return PlainTextResponse(message, status_code=400)
    except ValueError as error:
        return PlainTextResponse(f"mark: {error}", status_code=400)
    query = replace(query, order="asc", limit=ROWS_PER_MESSAGE, after=None)
    return EventSourceResponse(
        events(viewer, resources(request).engine, query, mark),
        ping=HEARTBEAT_S,
        ping_message_factory=lambda: ServerSentEvent("", event="heartbeat"),
        send_timeout=SEND_TIMEOUT_S,
    )


def end_live_tails() -> None:
    """Ends every open live tail of this process: uvicorn waits for open connections before it
    stops, and a tail never ends by itself. `datastorage serve` needs no call (sse-starlette sees
    uvicorn's own signal handling); `datastorage run` handles the signals itself and calls this."""
    AppStatus.should_exit = True
