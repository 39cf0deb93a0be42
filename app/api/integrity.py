"""The tamper-evident trail over HTTP (docs/INTEGRITY.md): one event's inclusion proof, verified
exports (streamed NDJSON, gzip when asked), and verification of a window or a correlation."""

import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.api.access import ADMIN, AUDIT_READ
from app.api.audit import AuditEventListQuery, list_query
from app.api.inputs import parse_body, read_json_body
from app.api.openapi import Operation, Reply
from app.api.problems import Problem
from app.api.resources import Resources, resources
from app.audit.integrity.checkpoints import published_checkpoints, stored_checkpoints
from app.audit.integrity.encoding import ENCODED_COLUMNS
from app.audit.integrity.export import export_lines
from app.audit.integrity.proofs import build_proof
from app.audit.integrity.seals import HEADER_COLUMNS, SealHeader, unpack_leaves
from app.audit.integrity.verify import Report, Window, verify
from app.audit.query import export_select, parse_time_bound

# A verification over HTTP is bounded: a window of at most this many days, or one correlation.
MAX_VERIFY_DAYS = 31
NDJSON = "application/x-ndjson"


class EventProof(BaseModel):
    """What a third party needs to check one event with the public key alone."""

    model_config = ConfigDict(extra="allow")

    encoding: int
    event: dict[str, Any]
    openings: dict[str, str]
    commitments: dict[str, str]
    leaf_index: int
    leaf_count: int
    audit_path: list[str]
    seal: dict[str, Any]
    seal_hash: str
    signature: str


class VerifyRequest(BaseModel):
    """A window (`since`, `until`: RFC 3339 or back from now) or one `correlation_id`."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = None
    until: str | None = None
    correlation_id: str | None = Field(None, min_length=1, max_length=255)


class Verification(BaseModel):
    intact: bool
    findings: list[dict[str, Any]]
    seals: int
    checkpoints: int
    rows: int
    pending: int
    dropped_by_retention: int
    incomplete: str | None


async def get_proof(request: Request) -> Response:
    try:
        event_id = uuid.UUID(request.path_params["event_id"])
    except ValueError:
        raise Problem(400, "event_id: must be a UUID", parameter="event_id") from None
    found = resources(request)
    async with found.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {', '.join(ENCODED_COLUMNS)}, seal_id, integrity_salt FROM audit_events_all WHERE event_id = $1",
            event_id,
        )
        if row is None:
            raise Problem(404, f"no audit event {event_id}")
        if row["seal_id"] is None:
            raise Problem(404, f"audit event {event_id} is not sealed (stored without a signing key)")
        seal = await conn.fetchrow(
            f"SELECT {HEADER_COLUMNS}, signature, leaves FROM audit_seals WHERE seal_id = $1", row["seal_id"]
        )
    if seal is None:
        raise Problem(404, f"the seal of audit event {event_id} is missing: verify the trail")
    leaves = unpack_leaves(bytes(seal["leaves"]))
    index = next((n for n, leaf in enumerate(leaves) if leaf.event_id == event_id), None)
    if index is None:
        raise Problem(404, f"the seal of audit event {event_id} does not list it: verify the trail")
    values = {name: row[name] for name in ENCODED_COLUMNS}
    for name in ("event_data", "metadata"):
        if isinstance(values[name], str):
            values[name] = orjson.loads(values[name])
    proof = build_proof(
        values, bytes(row["integrity_salt"]), SealHeader.from_record(seal), bytes(seal["signature"]),
        [leaf.hash for leaf in leaves], index,
    )  # fmt: skip
    return JSONResponse(proof)


async def export_events(request: Request) -> Response:
    found = resources(request)
    query = list_query(request, found.settings.validation_limits.max_future_skew)
    redact = [k.strip() for k in found.settings.audit_export_redact.split(",") if k.strip()]
    checkpoint = await _newest_checkpoint(found)
    body = _export_body(found, query, checkpoint, redact)
    headers = {"Content-Disposition": 'attachment; filename="audit-export.ndjson"'}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        body = _gzip(body)
    return StreamingResponse(body, media_type=NDJSON, headers=headers)


async def _export_body(found: Resources, query: Any, checkpoint: Any, redact: list[str]) -> AsyncIterator[bytes]:
    filters = {k: str(v) for k, v in query.filters.items()}
    async with found.pool.acquire() as conn, found.engine.connect() as rows_conn:
        result = await rows_conn.stream(export_select(query))
        rows = (row._mapping async for row in result)
        async for chunk in export_lines(conn, rows, checkpoint, filters=filters, redact=redact):
            yield chunk


async def _gzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(wbits=31)  # 31: the gzip container
    async for chunk in chunks:
        if compressed := compressor.compress(chunk):
            yield compressed
    yield compressor.flush()


async def _newest_checkpoint(found: Resources) -> Any:
    try:
        newest = await published_checkpoints(found.redis, count=1)
    except (redis.RedisError, OSError):
        newest = []
    if not newest:
        async with found.pool.acquire() as conn:
            stored = await stored_checkpoints(conn)
        newest = stored[-1:]
    return newest[-1] if newest else None


async def verify_trail(request: Request) -> Response:
    found = resources(request)
    body = parse_body(VerifyRequest, await read_json_body(request, 16 * 1024))
    if body.correlation_id is not None:
        if body.since is not None or body.until is not None:
            raise Problem(400, "correlation_id: give it alone, or since and until", parameter="correlation_id")
        window = Window(correlation_id=body.correlation_id)
    else:
        since, until = _bound_time("since", body.since), _bound_time("until", body.until)
        if since >= until:
            raise Problem(400, "since: must be earlier than until", parameter="since")
        if until - since > timedelta(days=MAX_VERIFY_DAYS):
            raise Problem(400, f"until: a window of at most {MAX_VERIFY_DAYS} days", parameter="until")
        window = Window(since, until)
    if found.verifier is None:
        return JSONResponse(Report(incomplete="no signing key is configured here: nothing to verify against").as_json())
    try:
        checkpoints = await published_checkpoints(found.redis)
    except (redis.RedisError, OSError) as error:
        # Without the checkpoints outside the database a cut-off chain head cannot be seen:
        # neither intact nor tampered.
        problem = f"the checkpoints in Redis could not be read ({type(error).__name__})"
        return JSONResponse(Report(incomplete=problem).as_json())
    bound = timedelta(seconds=found.settings.audit_sealing_bound_s)
    async with found.pool.acquire() as conn:
        report = await verify(conn, found.verifier, checkpoints, window, sealing_bound=bound)
    return JSONResponse(report.as_json())


def _bound_time(name: str, text: str | None) -> datetime:
    if text is None:
        raise Problem(400, f"{name}: give since and until, or correlation_id", parameter=name)
    try:
        return parse_time_bound(text)
    except (ValueError, OverflowError) as error:
        raise Problem(400, f"{name}: {error}", parameter=name) from None


routes = [
    Route("/api/v1/audit-events/export", export_events, methods=["GET"]),
    Route("/api/v1/audit-events/{event_id}/proof", get_proof, methods=["GET"]),
    Route("/api/v1/audit/verify", verify_trail, methods=["POST"]),
]

operations = [
    Operation("GET /api/v1/audit-events/{event_id}/proof", "getAuditEventProof",
              "The event's inclusion proof: check it with the public key alone (app.producer.verify_proof)",
              {200: Reply("the proof", EventProof), 404: Reply("no such event, or it is not sealed")},
              path_formats={"event_id": "uuid"}, scope=AUDIT_READ),
    Operation("GET /api/v1/audit-events/export", "exportAuditEvents",
              "Events with their proofs, seals and the newest checkpoint, as NDJSON (gzip with Accept-Encoding)",
              {200: Reply("the export, one JSON document per line", schema={"type": "string"}, media_type=NDJSON)},
              query=AuditEventListQuery, scope=ADMIN),
    Operation("POST /api/v1/audit/verify", "verifyAuditTrail",
              f"Verify a window (at most {MAX_VERIFY_DAYS} days) or one correlation against the seals and checkpoints",
              {200: Reply("the verification report (incomplete when there is no key to verify against)", Verification)},
              body=VerifyRequest, scope=ADMIN),
]  # fmt: skip
