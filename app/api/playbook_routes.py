"""`/api/v1/playbooks`: semantic search (GET and POST) and versions."""

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Route

from app.api.audit_routes import read_json_body
from app.api.problems import Problem
from app.playbooks import (
    DEFAULT_MIN_CONFIDENCE,
    MAX_RESULTS_LIMIT,
    latest_active,
    one_version,
    playbook_json,
    search,
    versions,
)

MAX_QUERY_LENGTH = 2000
SEARCH_PARAMETERS = {"query", "min_confidence", "max_results"}


def _search_arguments(query, labels, min_confidence, max_results) -> dict:
    if not isinstance(query, str) or not query.strip():
        raise Problem(400, "query: must be a non-empty text", parameter="query")
    if len(query) > MAX_QUERY_LENGTH or "\x00" in query:
        raise Problem(400, f"query: at most {MAX_QUERY_LENGTH} characters, no NUL", parameter="query")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and "\x00" not in k + v
                                               for k, v in labels.items()):
        raise Problem(400, "labels: must map label names to text values", parameter="labels")
    if isinstance(min_confidence, bool) or isinstance(max_results, (bool, float)):
        min_confidence = math.nan if isinstance(min_confidence, bool) else min_confidence
        max_results = 0 if isinstance(max_results, (bool, float)) else max_results
    try:
        min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
    except (TypeError, ValueError):
        min_confidence = math.nan
    if not 0.0 <= min_confidence <= 1.0:
        raise Problem(400, "min_confidence: must be a number from 0 to 1", parameter="min_confidence")
    try:
        max_results = 10 if max_results is None else int(max_results)
    except (TypeError, ValueError):
        max_results = 0
    if max_results < 1:
        raise Problem(400, "max_results: must be a whole number of 1 or more (at most 100 are returned)",
                      parameter="max_results")
    return {"query": query, "labels": labels, "min_confidence": min_confidence,
            "max_results": min(max_results, MAX_RESULTS_LIMIT)}


async def _search_response(request: Request, arguments: dict) -> Response:
    state = request.app.state
    embedder = await state.embedder_loader.get()
    hits = await search(state.pool, embedder, arguments.pop("query"), **arguments)
    return JSONResponse({
        "playbooks": [{"playbook_id": h.playbook_id, "version": h.version, "name": h.name,
                       "description": h.description, "confidence": h.confidence, "labels": h.labels}
                      for h in hits],
        "total_results": len(hits),
    })


async def search_get(request: Request) -> Response:
    params = request.query_params
    labels = {}
    for name in params:
        if len(params.getlist(name)) > 1:
            raise Problem(400, f"{name}: given more than once", parameter=name)
        if name.startswith("label."):
            labels[name.removeprefix("label.")] = params[name]
        elif name not in SEARCH_PARAMETERS:
            raise Problem(400, f"{name}: unknown query parameter (label filters are label.<name>=<value>)",
                          parameter=name)
    arguments = _search_arguments(params.get("query"), labels, params.get("min_confidence"),
                                  params.get("max_results"))
    return await _search_response(request, arguments)


async def search_post(request: Request) -> Response:
    body = await read_json_body(request, 64 * 1024)
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object")
    unknown = sorted(set(body) - SEARCH_PARAMETERS - {"labels"})
    if unknown:
        raise Problem(400, f"{unknown[0]}: unknown field", parameter=unknown[0])
    # JSON carries numbers as numbers: "5" is not a max_results here (it is in a query string).
    for name, kinds in (("max_results", (int,)), ("min_confidence", (int, float)), ("labels", (dict,))):
        if name in body and (isinstance(body[name], bool) or not isinstance(body[name], kinds)):
            raise Problem(400, f"{name}: must be {'an object' if name == 'labels' else 'a number'}",
                          parameter=name)
    arguments = _search_arguments(body.get("query"), body.get("labels") or {}, body.get("min_confidence"),
                                  body.get("max_results"))
    return await _search_response(request, arguments)


async def get_playbook(request: Request) -> Response:
    playbook_id = request.path_params["playbook_id"]
    async with request.app.state.pool.acquire() as conn:
        row = await latest_active(conn, playbook_id)
    if row is None:
        raise Problem(404, f"no active playbook {playbook_id!r}")
    return JSONResponse(playbook_json(row))


async def list_versions(request: Request) -> Response:
    playbook_id = request.path_params["playbook_id"]
    async with request.app.state.pool.acquire() as conn:
        rows = await versions(conn, playbook_id)
    if not rows:
        raise Problem(404, f"no playbook {playbook_id!r}")
    return JSONResponse({"playbook_id": playbook_id, "versions": [playbook_json(r) for r in rows]})


async def get_version(request: Request) -> Response:
    playbook_id, version = request.path_params["playbook_id"], request.path_params["version"]
    async with request.app.state.pool.acquire() as conn:
        row = await one_version(conn, playbook_id, version)
    if row is None:
        raise Problem(404, f"no version {version!r} of playbook {playbook_id!r}")
    return JSONResponse(playbook_json(row))


class PlaybookSearch(HTTPEndpoint):
    # One endpoint for both methods, so a 405 lists both in its Allow header.
    async def get(self, request: Request) -> Response:
        return await search_get(request)

    async def post(self, request: Request) -> Response:
        return await search_post(request)


routes = [
    Route("/api/v1/playbooks/search", PlaybookSearch),
    Route("/api/v1/playbooks/{playbook_id}", get_playbook, methods=["GET"]),
    Route("/api/v1/playbooks/{playbook_id}/versions", list_versions, methods=["GET"]),
    Route("/api/v1/playbooks/{playbook_id}/versions/{version}", get_version, methods=["GET"]),
]
