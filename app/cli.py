"""The `datastorage` command line."""

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from app import run as run_module
from app.db import connect
from app.logs import configure_logging
from app.metrics import start_metrics_server
from app.migrations import migrate_database
from app.playbooks import DEFAULT_MIN_CONFIDENCE, CatalogError
from app.partitions import drop_partitions_before, ensure_upcoming_partitions, list_partitions
from app.stream_ops import dlq_list, dlq_purge, dlq_replay, dlq_show, iterate_dlq, stream_status
from app.settings import Settings

cli = typer.Typer(
    help="Data Storage Service: the audit trail and the playbook catalog.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
partitions_cli = typer.Typer(help="Monthly partitions of audit_events.", no_args_is_help=True)
cli.add_typer(partitions_cli, name="partitions")
playbooks_cli = typer.Typer(help="The remediation playbook catalog.", no_args_is_help=True)
cli.add_typer(playbooks_cli, name="playbooks")
stream_cli = typer.Typer(help="The audit stream and its consumer group.", no_args_is_help=True)
cli.add_typer(stream_cli, name="stream")
dlq_cli = typer.Typer(help="The dead-letter stream: inspect, replay, purge.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise typer.BadParameter(
            "DATASTORAGE_DATABASE_URL is not set (only `datastorage run` starts an embedded Postgres)",
            param_hint="environment",
        )
    return settings.database_url


def _redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise typer.BadParameter(
            "DATASTORAGE_REDIS_URL is not set (only `datastorage run` starts an embedded Redis)",
            param_hint="environment",
        )
    return settings.redis_url


def _service_settings() -> Settings:
    """Settings of a long-running part (consumer, API): both servers named, /metrics served."""
    settings = _settings()
    _database_url(settings)
    _redis_url(settings)
    start_metrics_server(settings.metrics_port)
    return settings


@cli.command()
def run() -> None:
    """Run the whole service; starts embedded Postgres and Redis where no URL is set. Ctrl-C stops it."""
    run_module.run(_settings())


@cli.command()
def consume() -> None:
    """Consume the audit stream into Postgres (one consumer of the group; run several to scale)."""
    from consumers.audit import create_app

    settings = _service_settings()
    asyncio.run(create_app(settings).run())


@cli.command()
def serve() -> None:
    """Serve the HTTP API (audit queries and writes, health) on DATASTORAGE_HTTP_PORT."""
    from app.api.server import serve as serve_api

    serve_api(_service_settings())


@cli.command()
def migrate() -> None:
    """Apply the schema migrations and create the upcoming monthly partitions."""
    settings = _settings()
    applied = asyncio.run(
        migrate_database(
            _database_url(settings), settings.schema_dir, months_ahead=settings.partition_months_ahead
        )
    )
    typer.echo(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")


@partitions_cli.command("ensure")
def partitions_ensure(
    months_ahead: Annotated[int, typer.Option(min=0, max=24, help="Months after the current one.")] = 3,
) -> None:
    """Create the current month's partition and the next N months' where missing."""
    url = _database_url(_settings())

    async def ensure() -> list[str]:
        conn = await connect(url)
        try:
            return await ensure_upcoming_partitions(conn, months_ahead)
        finally:
            await conn.close()

    for name in asyncio.run(ensure()):
        typer.echo(name)


@partitions_cli.command("list")
def partitions_list(
    exact: Annotated[bool, typer.Option(help="Count rows exactly (scans every partition).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
) -> None:
    """List the partitions with their rows and size."""
    url = _database_url(_settings())

    async def fetch():
        conn = await connect(url)
        try:
            return await list_partitions(conn, exact_counts=exact)
        finally:
            await conn.close()

    partitions = asyncio.run(fetch())
    if as_json:
        typer.echo(json.dumps([
            {"name": p.name, "month": p.month.isoformat(), "rows": p.rows, "bytes": p.bytes}
            for p in partitions
        ]))
        return
    typer.echo(f"{'partition':<24} {'month':<8} {'rows':>12} {'size':>10}")
    for p in partitions:
        typer.echo(f"{p.name:<24} {p.month:%Y-%m}  {p.rows:>12} {p.bytes / 2**20:>8.1f}MB")


@partitions_cli.command("drop")
def partitions_drop(
    older_than: Annotated[str, typer.Option(help="Retention, in months: 13mo drops months that ended over 13 months ago.")],
    dry_run: Annotated[bool, typer.Option(help="Only list what would be dropped.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Drop whole monthly partitions older than the retention (never the current or a future month)."""
    match = re.fullmatch(r"(\d+)mo", older_than.strip())
    if not match or int(match[1]) < 1:
        raise typer.BadParameter("give months, 1mo or more, e.g. 13mo", param_hint="--older-than")
    url = _database_url(_settings())

    async def drop(dry: bool):
        conn = await connect(url)
        try:
            return await drop_partitions_before(conn, int(match[1]), dry_run=dry)
        finally:
            await conn.close()

    candidates = asyncio.run(drop(True))
    for p in candidates:
        typer.echo(f"{p.name}  {p.month:%Y-%m}  ~{p.rows} rows  {p.bytes / 2**20:.1f}MB")
    if not candidates:
        typer.echo("nothing older than the retention")
        return
    if dry_run:
        typer.echo(f"dry run: {len(candidates)} partition(s) would be dropped")
        return
    if not yes:
        typer.confirm(f"drop these {len(candidates)} partition(s) and their rows for good?", abort=True)
    typer.echo(f"dropped {len(asyncio.run(drop(False)))} partition(s)")


def _redis_client(settings: Settings):
    import redis.asyncio as aioredis

    return aioredis.from_url(_redis_url(settings))


@stream_cli.command("status")
def stream_status_command(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Length, lag, pending entries and their age, consumers and their idle time, DLQ depth."""
    settings = _settings()

    async def status():
        client = _redis_client(settings)
        try:
            return await stream_status(client, settings)
        finally:
            await client.aclose()

    found = asyncio.run(status())
    if as_json:
        typer.echo(json.dumps(found))
        return
    typer.echo(f"stream {found['stream']}: {found['length']} entries; DLQ {found['dlq_stream']}: {found['dlq_depth']}")
    for group in found["groups"]:
        typer.echo(f"group {group['name']}: lag {group['lag']}, pending {group['pending']}"
                   + (f" (oldest {group['oldest_pending_age_s']} s)" if group["pending"] else ""))
        for consumer in group["consumers"]:
            typer.echo(f"  consumer {consumer['name']}: pending {consumer['pending']}, idle {consumer['idle_s']} s")


@dlq_cli.command("list")
def dlq_list_command(
    reason: Annotated[str | None, typer.Option(help="Only this dlq_reason.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """List dead letters, oldest first."""
    settings = _settings()

    async def entries():
        client = _redis_client(settings)
        try:
            return await dlq_list(client, settings.dlq_stream, reason=reason, limit=limit)
        finally:
            await client.aclose()

    found = asyncio.run(entries())
    if as_json:
        typer.echo(json.dumps([{"id": e.id, **e.as_text()} for e in found]))
        return
    for entry in found:
        fields = entry.as_text()
        typer.echo(f"{entry.id}  {fields.get('dlq_reason')}  {fields.get('source_id')}  {fields.get('dlq_error', '')[:100]}")


@dlq_cli.command("show")
def dlq_show_command(entry_id: Annotated[str, typer.Argument(help="A DLQ entry id.")]) -> None:
    """Every field of one dead letter."""
    settings = _settings()

    async def entry():
        client = _redis_client(settings)
        try:
            return await dlq_show(client, settings.dlq_stream, entry_id)
        finally:
            await client.aclose()

    found = asyncio.run(entry())
    if found is None:
        typer.echo(f"no dead letter {entry_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps({"id": found.id, **found.as_text()}, indent=2))


@dlq_cli.command("replay")
def dlq_replay_command(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="DLQ entry ids (default: all, or --reason).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this dlq_reason.")] = None,
) -> None:
    """Move dead letters back to the audit stream (after a fix); one that fails again comes back
    to the DLQ with a new reason."""
    if entry_ids and reason:
        raise typer.BadParameter("give entry ids or --reason, not both")
    settings = _settings()

    async def replay() -> tuple[int, int]:
        client = _redis_client(settings)
        try:
            if entry_ids:
                entries = [e for e in [await dlq_show(client, settings.dlq_stream, i) for i in entry_ids] if e]
            else:
                entries = [e async for e in iterate_dlq(client, settings.dlq_stream, reason=reason)]
            with Progress() as progress:
                task = progress.add_task("replaying", total=len(entries))
                moved = await dlq_replay(client, settings, entries, lambda n: progress.advance(task, n))
            return moved, len(entries)
        finally:
            await client.aclose()

    moved, selected = asyncio.run(replay())
    typer.echo(f"replayed {moved} of {selected} dead letter(s) to {settings.stream}")


@dlq_cli.command("purge")
def dlq_purge_command(
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this dlq_reason.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete dead letters for good."""
    settings = _settings()
    if not yes:
        what = f"dead letters with reason {reason!r}" if reason else "ALL dead letters"
        typer.confirm(f"delete {what} from {settings.dlq_stream} for good?", abort=True)

    async def purge() -> int:
        client = _redis_client(settings)
        try:
            return await dlq_purge(client, settings.dlq_stream, reason=reason)
        finally:
            await client.aclose()

    typer.echo(f"purged {asyncio.run(purge())} dead letter(s)")


@playbooks_cli.command("import")
def playbooks_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A catalog YAML file.")],
    force: Annotated[bool, typer.Option(help="Replace a version whose content changed.")] = False,
) -> None:
    """Upsert every playbook version of FILE, keep the latest-version flags right, embed them."""
    from app.catalog_import import import_catalog

    settings = _settings()
    try:
        summary = asyncio.run(import_catalog(_database_url(settings), file, force=force,
                                             backend=settings.embedding_backend,
                                             cache_dir=settings.model_cache_dir))
    except CatalogError as error:
        typer.echo(f"import refused: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{summary.entries} versions of {summary.playbooks} playbooks: {summary.changed} written, "
               f"{summary.embedded} embedded")


@playbooks_cli.command("search")
def playbooks_search(
    query: Annotated[str, typer.Argument(help="An incident description.")],
    label: Annotated[list[str], typer.Option(help="Label filter name=value (repeatable).")] = [],
    min_confidence: Annotated[float, typer.Option(min=0, max=1)] = DEFAULT_MIN_CONFIDENCE,
    max_results: Annotated[int, typer.Option(min=1, max=100)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """Rank the active, latest playbooks for QUERY."""
    from app.embedding import Embedder
    from app.playbooks import create_pool, search

    settings = _settings()
    labels = {}
    for item in label:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected name=value", param_hint="--label")
        labels[name] = value

    async def ranked():
        pool = await create_pool(_database_url(settings), min_size=1, max_size=2)
        try:
            return await search(pool, Embedder(settings.embedding_backend, settings.model_cache_dir), query, labels=labels,
                                min_confidence=min_confidence, max_results=max_results)
        finally:
            await pool.close()

    hits = asyncio.run(ranked())
    if as_json:
        typer.echo(json.dumps([hit.__dict__ for hit in hits]))
        return
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"{rank:>2}. {hit.confidence:.3f}  {hit.playbook_id} {hit.version}  {hit.name}")
    if not hits:
        typer.echo("no playbook above the confidence threshold")


def main() -> None:
    cli()
