"""`/ui/playbooks`: search the catalog with label filters (the API's parameters and ranking), each
result's explanation when the search gives one, and each playbook's versions. Without a query: the
whole catalog, by playbook."""

import json
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from app.api.inputs import parse_query
from app.api.playbooks import SearchParameters
from app.api.resources import resources
from app.catalog.playbook import SELECT_RECORD, version_key
from app.catalog.search import MAX_RESULTS_LIMIT, default_min_confidence, search
from app.ui.events import form_values
from app.ui.rendering import PageError, Viewer, page

# The catalog without a query: this many versions at most (a catalog is hundreds, not millions).
CATALOG_VERSIONS_SHOWN = 2000
SEARCH_FIELDS = ("query", "mode", "min_confidence", "max_results")


def parse_labels(text: str) -> dict[str, str]:
    """`environment=production, severity=critical`: the form's one field for label filters."""
    labels = {}
    for pair in filter(None, (part.strip() for part in text.replace("\n", ",").split(","))):
        name, equals, value = pair.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise PageError(400, f"labels: {pair!r} is not name=value")
        labels[name.strip()] = value.strip()
    return labels


def explanation(hit: Any) -> list[tuple[str, str]] | None:
    """Why a playbook ranks where it does, as (what, how much) lines, when the search says so
    (hybrid search, issue #11, adds `why` to each hit; whatever its shape, it is shown as text)."""
    why = getattr(hit, "why", None)
    if why is None:
        return None
    if isinstance(why, BaseModel):
        why = why.model_dump(mode="json")
    if isinstance(why, dict):
        return [(str(k), v if isinstance(v, str) else orjson.dumps(v).decode()) for k, v in why.items()]
    if isinstance(why, list | tuple):
        return [("", item if isinstance(item, str) else orjson.dumps(item).decode()) for item in why]
    return [("", str(why))]


async def versions_by_playbook(conn: asyncpg.Connection, playbook_ids: list[str] | None) -> dict[str, list[dict]]:
    """Every version of the given playbooks (of all, without ids), newest semantic version first."""
    where, args = ("WHERE playbook_id = ANY($1::text[])", [playbook_ids]) if playbook_ids is not None else ("", [])
    rows = await conn.fetch(
        f"SELECT {SELECT_RECORD} FROM playbook_catalog {where} ORDER BY playbook_id LIMIT {CATALOG_VERSIONS_SHOWN}",
        *args,
    )
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        record = dict(row)
        record["labels"] = json.loads(record["labels"])
        grouped.setdefault(record["playbook_id"], []).append(record)
    for versions in grouped.values():
        versions.sort(key=lambda r: version_key(r["version"]), reverse=True)
    return grouped


@page
async def playbooks_page(viewer: Viewer, request: Request) -> Response:
    values = form_values(request)
    unknown = set(values) - {*SEARCH_FIELDS, "labels"}
    if unknown:
        raise PageError(400, f"{sorted(unknown)[0]}: unknown query parameter")
    labels = parse_labels(values.get("labels", ""))
    found = resources(request)
    hits: list[Any] = []
    searched = "query" in values
    if searched:
        params = parse_query(SearchParameters, {k: v for k, v in values.items() if k in SEARCH_FIELDS})
        # The same search as the API's: hybrid (or by labels), degraded while the model loads.
        embedder = found.embedder_loader.current() if params.mode != "labels" else None
        threshold = default_min_confidence(params.mode) if params.min_confidence is None else params.min_confidence
        hits = await search(
            found.pool,
            embedder,
            params.query,
            labels=labels,
            mode=params.mode,
            min_confidence=threshold,
            max_results=min(params.max_results, MAX_RESULTS_LIMIT),
            text_index=found.text_index,
        )
    async with found.pool.acquire() as conn:
        versions = await versions_by_playbook(conn, [hit.playbook_id for hit in hits] if searched else None)
    if not searched and labels:  # the catalog, by label, without a ranking
        versions = {
            playbook_id: rows
            for playbook_id, rows in versions.items()
            if any(labels.items() <= row["labels"].items() for row in rows)
        }
    return viewer.render(
        request,
        "playbooks.html",
        {
            "values": values,
            "searched": searched,
            "results": [(hit, explanation(hit), versions.get(hit.playbook_id, [])) for hit in hits],
            "catalog": versions,
            "title": "Playbooks",
        },
    )
