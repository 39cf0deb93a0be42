"""`/api/v1/playbooks`: search (GET and POST: hybrid or by labels) and versions."""

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.access import PLAYBOOKS_READ
from app.api.inputs import QueryInt, parse_body, parse_query, path_text, query_values, read_json_body
from app.api.openapi import Operation, Reply
from app.api.problems import Problem
from app.api.resources import resources
from app.catalog.playbook import PlaybookRecord, record_json
from app.catalog.search import (
    DEFAULT_MAX_RESULTS,
    DEFAULT_MIN_CONFIDENCE_BY_MODE,
    MAX_QUERY_LENGTH,
    MAX_RESULTS_LIMIT,
    SEARCH_MODES,
    SearchHit,
    SearchMode,
    default_min_confidence,
    is_degraded,
    search,
)
from app.catalog.store import latest_version, one_version, versions

MAX_SEARCH_BODY_BYTES = 64 * 1024
LABEL_PREFIX = "label."


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _label_names(labels: dict[str, str]) -> dict[str, str]:
    if any(not name or "\x00" in name + value for name, value in labels.items()):
        raise ValueError("must map label names to text values")
    return labels


def _known_mode(value: Any) -> Any:
    if isinstance(value, str) and value not in SEARCH_MODES:
        raise ValueError(f"unknown mode {value!r}: expected one of {', '.join(SEARCH_MODES)}")
    return value


QueryText = Annotated[str, Field(max_length=MAX_QUERY_LENGTH), AfterValidator(_no_nul)]
Mode = Annotated[SearchMode, BeforeValidator(_known_mode)]
Labels = Annotated[dict[str, str], AfterValidator(_label_names)]
_labels = TypeAdapter(Labels)
_DEFAULTS = ", ".join(f"{mode} {value}" for mode, value in DEFAULT_MIN_CONFIDENCE_BY_MODE.items())


class SearchFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: QueryText = Field("", description="the incident, in words; required unless mode=labels")
    mode: Mode = Field(
        "hybrid",
        description="hybrid: vector, full-text and label signals fused; labels: label matches alone "
        "(deterministic, no model, the query may be empty)",
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, description=f"results below this confidence are left out; default by mode: {_DEFAULTS}"
    )


class SearchParameters(SearchFields):
    """The query parameters of `GET /api/v1/playbooks/search`; label filters come as
    `label.<name>=<value>`."""

    max_results: QueryInt = Field(DEFAULT_MAX_RESULTS, ge=1, description=f"at most {MAX_RESULTS_LIMIT} are returned")


class SearchRequest(SearchFields):
    """The body of `POST /api/v1/playbooks/search`."""

    labels: Labels = Field(
        default_factory=dict, description="label filters: a playbook passes when its value is equal, or `*`"
    )
    max_results: int = Field(DEFAULT_MAX_RESULTS, ge=1, description=f"at most {MAX_RESULTS_LIMIT} are returned")


class SearchResult(BaseModel):
    playbooks: list[SearchHit]
    total_results: int = Field(ge=0)
    mode: SearchMode = Field(description="the mode that ranked the playbooks")
    degraded: bool = Field(description="true when answered without the embedding model (text and labels only)")


class PlaybookVersions(BaseModel):
    playbook_id: str
    versions: list[PlaybookRecord]


async def _search_response(
    request: Request, fields: SearchFields, labels: dict[str, str], max_results: int
) -> Response:
    if fields.mode != "labels" and not fields.query.strip():
        raise Problem(400, "query: must be a non-empty text (or use mode=labels)", parameter="query")
    found = resources(request)
    embedder = found.embedder_loader.current() if fields.mode != "labels" else None
    threshold = default_min_confidence(fields.mode) if fields.min_confidence is None else fields.min_confidence
    hits = await found.reads.run(
        lambda source: search(
            found.pool,
            embedder,
            fields.query,
            labels=labels,
            mode=fields.mode,
            min_confidence=threshold,
            max_results=min(max_results, MAX_RESULTS_LIMIT),
            text_index=found.text_index,
            read_pool=None if source.is_primary else source.pool,
        )
    )
    result = SearchResult(
        playbooks=hits, total_results=len(hits), mode=fields.mode, degraded=is_degraded(fields.mode, embedder)
    )
    return JSONResponse(result.model_dump())


async def search_get(request: Request) -> Response:
    values = query_values(request)
    labels = {
        name.removeprefix(LABEL_PREFIX): values.pop(name) for name in list(values) if name.startswith(LABEL_PREFIX)
    }
    params = parse_query(SearchParameters, values)
    try:
        labels = _labels.validate_python(labels)
    except ValidationError:
        raise Problem(400, "labels: must map label names to text values", parameter="labels") from None
    return await _search_response(request, params, labels, params.max_results)


async def search_post(request: Request) -> Response:
    body = parse_body(SearchRequest, await read_json_body(request, MAX_SEARCH_BODY_BYTES))
    return await _search_response(request, body, body.labels, body.max_results)


async def get_playbook(request: Request) -> Response:
    playbook_id = path_text(request, "playbook_id")
    async with resources(request).pool.acquire() as conn:
        row = await latest_version(conn, playbook_id)
    if row is None:
        raise Problem(404, f"no playbook {playbook_id!r}")
    return JSONResponse(record_json(row))


async def list_versions(request: Request) -> Response:
    playbook_id = path_text(request, "playbook_id")
    async with resources(request).pool.acquire() as conn:
        rows = await versions(conn, playbook_id)
    if not rows:
        raise Problem(404, f"no playbook {playbook_id!r}")
    return JSONResponse({"playbook_id": playbook_id, "versions": [record_json(r) for r in rows]})


async def get_version(request: Request) -> Response:
    playbook_id, version = path_text(request, "playbook_id"), path_text(request, "version")
    async with resources(request).pool.acquire() as conn:
        row = await one_version(conn, playbook_id, version)
    if row is None:
        raise Problem(404, f"no version {version!r} of playbook {playbook_id!r}")
    return JSONResponse(record_json(row))


async def search_playbooks(request: Request) -> Response:
    # One route for both methods, so that a 405 lists both in its Allow header.
    return await (search_post if request.method == "POST" else search_get)(request)


routes = [
    Route("/api/v1/playbooks/search", search_playbooks, methods=["GET", "POST"]),
    Route("/api/v1/playbooks/{playbook_id}", get_playbook, methods=["GET"]),
    Route("/api/v1/playbooks/{playbook_id}/versions", list_versions, methods=["GET"]),
    Route("/api/v1/playbooks/{playbook_id}/versions/{version}", get_version, methods=["GET"]),
]

RANKED = {200: Reply("ranked playbooks", SearchResult)}
operations = [
    Operation(
        "GET /api/v1/playbooks/search",
        "searchPlaybooksGet",
        "Rank playbooks for an incident description",
        RANKED,
        query=SearchParameters,
        description="Label filters: label.<name>=<value> query parameters (hard filters; a playbook's `*` "
        "matches any value).",
        scope=PLAYBOOKS_READ,
    ),
    Operation(
        "POST /api/v1/playbooks/search",
        "searchPlaybooksPost",
        "Rank playbooks for an incident description",
        {**RANKED, 413: Reply("the body is too large"), 415: Reply("the body is not JSON")},
        body=SearchRequest,
        scope=PLAYBOOKS_READ,
    ),
    Operation(
        "GET /api/v1/playbooks/{playbook_id}",
        "getPlaybook",
        "The latest version of a playbook (is_latest_version), whatever its status",
        {200: Reply("the playbook", PlaybookRecord), 404: Reply("no such playbook")},
        scope=PLAYBOOKS_READ,
    ),
    Operation(
        "GET /api/v1/playbooks/{playbook_id}/versions",
        "listPlaybookVersions",
        "Every version, newest semantic version first",
        {200: Reply("the versions", PlaybookVersions), 404: Reply("no such playbook")},
        scope=PLAYBOOKS_READ,
    ),
    Operation(
        "GET /api/v1/playbooks/{playbook_id}/versions/{version}",
        "getPlaybookVersion",
        "One version of a playbook",
        {200: Reply("the version", PlaybookRecord), 404: Reply("no such playbook or version")},
        scope=PLAYBOOKS_READ,
    ),
]
