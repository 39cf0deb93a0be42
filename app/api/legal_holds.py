"""`/api/v1/audit/legal-holds[/{correlation_id}]`: place, release and read legal holds (admin).

Who placed or released a hold is the request's identity (a token's NAME, a Kubernetes user);
each change is also a self-audit event (`datastorage.legal_hold.placed|released`), so a released
hold, gone from these endpoints (404), stays in the trail.
"""

from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.access import ADMIN
from app.api.auth import identity_of
from app.api.inputs import parse_body, path_text, read_json_body
from app.api.openapi import Operation, Reply
from app.api.problems import Problem
from app.api.resources import resources
from app.audit import legal_holds
from app.audit.legal_holds import MAX_CORRELATION_ID, MAX_REASON, LegalHold
from app.audit.self_audit import Action, Actor, record_action
from app.core import metrics

log = structlog.get_logger(__name__)


class PlaceHold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REASON)]

    @field_validator("reason")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:  # Postgres text cannot hold one: a 400, not a 500
            raise ValueError("must not contain NUL characters (U+0000)")
        return value


class HoldDocument(BaseModel):
    correlation_id: str
    reason: str
    placed_by: str
    placed_at: str
    released_by: str | None
    released_at: str | None


class HoldList(BaseModel):
    legal_holds: list[HoldDocument] = Field(description="the active holds, oldest first")


def _correlation_id(request: Request) -> str:
    correlation_id = path_text(request, "correlation_id")
    if not 1 <= len(correlation_id) <= MAX_CORRELATION_ID or correlation_id.isspace():
        raise Problem(
            400, f"correlation_id: 1 to {MAX_CORRELATION_ID} characters, not only spaces", parameter="correlation_id"
        )
    return correlation_id


async def _audit(request: Request, action: Action, hold: LegalHold) -> None:
    """The self-audit event of a change. The change is made either way: when no store takes the
    event it is logged and counted (datastorage_self_audit_write_failures_total) rather than
    undone."""
    found = resources(request)
    data = {"reason": hold.reason, "placed_by": hold.placed_by}
    if hold.released_by:
        data["released_by"] = hold.released_by
    try:
        await record_action(
            found.writer, action, Actor(identity_of(request).name),
            resource_type="legal_hold", resource_id=hold.correlation_id, data=data,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the hold changed; the trail lacks its event
        metrics.SELF_AUDIT_WRITE_FAILURES.inc()
        log.error("self_audit_write_failed", event_type=action.value, error=repr(error))


async def place_hold(request: Request) -> Response:
    correlation_id = _correlation_id(request)
    body = parse_body(PlaceHold, await read_json_body(request, 16 * 1024))
    async with resources(request).pool.acquire() as conn:
        hold, created = await legal_holds.place(conn, correlation_id, body.reason, identity_of(request).name)
    if created:
        await _audit(request, Action.LEGAL_HOLD_PLACED, hold)
    return JSONResponse(hold.as_json(), status_code=201 if created else 200)


async def release_hold(request: Request) -> Response:
    correlation_id = _correlation_id(request)
    async with resources(request).pool.acquire() as conn:
        hold = await legal_holds.release(conn, correlation_id, identity_of(request).name)
    if hold is None:
        raise Problem(404, f"no legal hold on correlation {correlation_id!r}")
    await _audit(request, Action.LEGAL_HOLD_RELEASED, hold)
    return JSONResponse(hold.as_json())


async def get_hold(request: Request) -> Response:
    correlation_id = _correlation_id(request)
    async with resources(request).pool.acquire() as conn:
        hold = await legal_holds.get(conn, correlation_id)
    if hold is None:
        raise Problem(404, f"no legal hold on correlation {correlation_id!r}")
    return JSONResponse(hold.as_json())


async def list_holds(request: Request) -> Response:
    async with resources(request).pool.acquire() as conn:
        holds = await legal_holds.active(conn)
    return JSONResponse({"legal_holds": [hold.as_json() for hold in holds]})


async def one_hold(request: Request) -> Response:
    handler = {"POST": place_hold, "DELETE": release_hold}.get(request.method, get_hold)
    return await handler(request)


routes = [
    Route("/api/v1/audit/legal-holds", list_holds, methods=["GET"]),
    Route("/api/v1/audit/legal-holds/{correlation_id}", one_hold, methods=["GET", "POST", "DELETE"]),
]

_HOLD = "/api/v1/audit/legal-holds/{correlation_id}"
operations = [
    Operation("GET /api/v1/audit/legal-holds", "listLegalHolds", "The active legal holds",
              {200: Reply("the active holds", HoldList)}, scope=ADMIN),
    Operation(f"POST {_HOLD}", "placeLegalHold",
              "Hold a correlation: retention never drops its events (they move to the archive and stay queryable)",
              {201: Reply("placed", HoldDocument), 200: Reply("the hold existed: nothing changed", HoldDocument)},
              body=PlaceHold, scope=ADMIN),
    Operation(f"DELETE {_HOLD}", "releaseLegalHold",
              "Release the hold: the next retention run drops what is past retention, archive included",
              {200: Reply("released", HoldDocument), 404: Reply("the correlation has no hold")}, scope=ADMIN),
    Operation(f"GET {_HOLD}", "getLegalHold", "The correlation's active hold",
              {200: Reply("the hold", HoldDocument), 404: Reply("no active hold (a released one is 404)")},
              scope=ADMIN),
]  # fmt: skip
