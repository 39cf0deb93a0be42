"""`datastorage playbooks import|search`: the remediation playbook catalog."""

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from app.audit.self_audit import Action
from app.catalog.embedding import Embedder
from app.catalog.playbook import CatalogError
from app.catalog.search import DEFAULT_MAX_RESULTS, DEFAULT_MIN_CONFIDENCE_BY_MODE, MAX_RESULTS_LIMIT, SEARCH_MODES
from app.cli.common import database_url, load_settings
from app.cli.self_audit import record_cli_action

playbooks_cli = typer.Typer(help="The remediation playbook catalog.", no_args_is_help=True)


@playbooks_cli.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A catalog YAML file.")],
    force: Annotated[bool, typer.Option(help="Replace a version whose content changed.")] = False,
) -> None:
    """Upsert every playbook version of FILE, keep the latest-version flags right, embed them."""
    from app.catalog.importer import import_catalog

    settings = load_settings()
    try:
        summary = asyncio.run(
            import_catalog(
                database_url(settings),
                file,
                force=force,
                max_content_bytes=settings.playbook_max_content_bytes,
                embedder=lambda: Embedder(settings.embedding_backend, settings.model_cache_dir),
            )
        )
    except CatalogError as error:
        typer.echo(f"import refused: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{summary.entries} versions of {summary.playbooks} playbooks: {summary.changed} written, "
        f"{summary.embedded} embedded"
    )
    record_cli_action(
        settings,
        Action.CATALOG_IMPORTED,
        resource_type="playbook_catalog",
        resource_id=file.name,
        data={
            "file": str(file),
            "force": force,
            "versions": summary.entries,
            "playbooks": summary.playbooks,
            "written": summary.changed,
            "embedded": summary.embedded,
        },
    )


@playbooks_cli.command("search")
def search(
    query: Annotated[str, typer.Argument(help="An incident description (may be empty with --mode labels).")] = "",
    label: Annotated[list[str] | None, typer.Option(help="Label filter name=value (repeatable).")] = None,
    mode: Annotated[str, typer.Option(help=f"One of {', '.join(SEARCH_MODES)}.")] = "hybrid",
    min_confidence: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Default by mode: "
            + ", ".join(f"{name} {value}" for name, value in DEFAULT_MIN_CONFIDENCE_BY_MODE.items())
            + ".",
        ),
    ] = None,
    max_results: Annotated[int, typer.Option(min=1, max=MAX_RESULTS_LIMIT)] = DEFAULT_MAX_RESULTS,
    as_json: Annotated[bool, typer.Option("--json", help="JSON as the API answers it, for scripts.")] = False,
) -> None:
    """Rank the active, latest playbooks for QUERY, with why each one ranked where it did."""
    from app.catalog.search import default_min_confidence
    from app.catalog.search import search as search_catalog
    from app.catalog.store import create_pool

    settings = load_settings()
    if mode not in SEARCH_MODES:
        expected = ", ".join(SEARCH_MODES)
        raise typer.BadParameter(f"unknown mode {mode!r}: expected one of {expected}", param_hint="--mode")
    if mode != "labels" and not query.strip():
        raise typer.BadParameter("a query is needed (or use --mode labels)", param_hint="QUERY")
    labels = {}
    for item in label or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected name=value", param_hint="--label")
        labels[name] = value

    threshold = default_min_confidence(mode) if min_confidence is None else min_confidence

    async def ranked():
        pool = await create_pool(database_url(settings), min_size=1, max_size=2)
        try:
            embedder = Embedder(settings.embedding_backend, settings.model_cache_dir) if mode != "labels" else None
            return await search_catalog(
                pool, embedder, query, labels=labels, mode=mode, min_confidence=threshold, max_results=max_results
            )
        finally:
            await pool.close()

    hits = asyncio.run(ranked())
    if as_json:
        result = {"playbooks": [hit.model_dump() for hit in hits], "total_results": len(hits), "mode": mode}
        typer.echo(json.dumps({**result, "degraded": False}))
        return
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"{rank:>2}. {hit.confidence:.3f}  {hit.playbook_id} {hit.version}  {hit.name}")
        typer.echo(f"    why: {_why_text(hit.why)}")
    if not hits:
        typer.echo("no playbook above the confidence threshold")


def _why_text(why) -> str:
    parts = [f"score {why.score:.3f}"]
    if why.vector is not None:
        parts.append(f"vector {why.vector:.3f}")
    if why.text is not None:
        parts.append(f"text {why.text:.2f} ({', '.join(why.matched_terms)})")
    if why.signals is not None:
        parts.append(f"signals {why.signals:.2f} ({'; '.join(why.signal_terms)})")
    if why.labels is not None:
        parts.append(f"labels {why.labels:.2f}")
    return "; ".join(parts)
