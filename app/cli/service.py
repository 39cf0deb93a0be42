"""The long-running parts and the schema: `run`, `consume`, `serve`, `migrate`."""

import asyncio
from typing import Annotated

import typer

from app.audit.integrity.keys import load_signer
from app.cli.common import database_url, load_settings, redis_url
from app.core.metrics import start_metrics_server
from app.core.migrations import migrate_database
from app.core.settings import Settings


def _service_settings() -> Settings:
    """Settings of a long-running part (consumer, API): both servers named, the Postgres checked
    when it answers (a pod starts while it is away), /metrics served."""
    settings = load_settings()
    url = database_url(settings)
    redis_url(settings)
    asyncio.run(_check_postgres_if_reachable(url))
    start_metrics_server(settings.metrics_port)
    return settings


async def _check_postgres_if_reachable(url: str) -> None:
    import asyncpg
    import structlog

    from app.core.db import connect
    from app.core.requirements import RequirementError, check_server

    try:
        conn = await connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        structlog.get_logger(__name__).warning("postgres_not_checked", error=f"{type(error).__name__}: {error}")
        return
    try:
        await check_server(conn)
    except RequirementError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    finally:
        await conn.close()


def run(
    sample_catalog: Annotated[
        bool, typer.Option(help="On embedded defaults, import the sample playbook catalog into an empty catalog.")
    ] = True,
) -> None:
    """Run the whole service; starts embedded Postgres and Redis where no URL is set. Ctrl-C stops it."""
    from app.core.requirements import RequirementError
    from app.local.embedded import ServerError
    from app.local.run import run as run_service

    try:
        code = run_service(load_settings(find_run=False), sample_catalog=sample_catalog)
    except (ServerError, RequirementError) as error:
        typer.echo(f"run: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def consume() -> None:
    """Consume the audit stream into Postgres (one consumer of the group; run several to scale)."""
    from consumers.audit import AuditConsumer

    settings = _service_settings()
    consumer = AuditConsumer(settings, load_signer(settings.audit_signing_key_file))
    raise typer.Exit(asyncio.run(consumer.run()))


def serve() -> None:
    """Serve the HTTP API (audit queries and writes, health) on DATASTORAGE_HTTP_PORT."""
    from app.api.server import serve as serve_api
    from app.api.tokens import TokenFileError
    from app.core.settings import MissingSetting

    try:
        settings = _service_settings()
        serve_api(settings, load_signer(settings.audit_signing_key_file))
    except (TokenFileError, MissingSetting) as error:
        # Access control that cannot be set up as configured: refuse to start, saying why.
        typer.echo(f"serve: {error}", err=True)
        raise typer.Exit(2) from None


def migrate() -> None:
    """Apply the schema migrations and create the upcoming monthly partitions."""
    from app.core.migrations import MigrationError
    from app.core.requirements import RequirementError

    settings = load_settings()
    try:
        applied = asyncio.run(
            migrate_database(database_url(settings), settings.schema_dir, months_ahead=settings.partition_months_ahead)
        )
    except (RequirementError, MigrationError) as error:
        typer.echo(f"migrate: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
