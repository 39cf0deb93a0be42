"""Commands record what they did in the audit trail (app/audit/self_audit.py), as the OS user.

    record_cli_action(settings, Action.DLQ_PURGED, resource_type="dlq", resource_id=..., data={...})

The event goes the way of every event: XADD to the stream, or straight to Postgres when Redis is
away (or not configured for this command). If neither takes it the action has still happened: the
command says so and exits 1, so that a script notices the trail is missing an entry.
"""

import asyncio
from typing import Any

import asyncpg
import structlog
import typer

from app.audit.event import AuditEvent, EventOutcome
from app.audit.identity import Submission
from app.audit.integrity.keys import Signer
from app.audit.self_audit import Action, Actor, operator_event
from app.audit.store import AuditStore
from app.audit.writer import AuditWriter, StoresUnavailable, configured_producer
from app.core import metrics
from app.core.db import asyncpg_dsn
from app.core.redis_client import create_redis
from app.core.settings import Settings

log = structlog.get_logger(__name__)


def record_cli_action(
    settings: Settings,
    action: Action,
    *,
    resource_type: str,
    resource_id: str,
    outcome: EventOutcome = "success",
    data: dict[str, Any] | None = None,
) -> None:
    event = operator_event(
        action, Actor.of_cli(), resource_type=resource_type, resource_id=resource_id, outcome=outcome, data=data
    )
    try:
        asyncio.run(write_event(settings, event))
    except Exception as error:  # noqa: BLE001 - whatever failed, the trail lacks this action
        metrics.SELF_AUDIT_WRITE_FAILURES.inc()
        log.error("self_audit_write_failed", event_type=event.event_type, error=repr(error))
        reason = str(error) or "neither Redis nor Postgres took it"
        typer.echo(f"warning: done, but its audit event ({event.event_type}) was not written: {reason}", err=True)
        raise typer.Exit(1) from None


async def write_event(settings: Settings, event: AuditEvent) -> str:
    """XADD, or Postgres when Redis is away: AuditWriter when both are configured, else the one."""
    client = create_redis(settings, socket_timeout=5, socket_connect_timeout=2) if settings.redis_url else None
    # min_size 0: no connection unless Redis fails.
    pool = (
        await asyncpg.create_pool(asyncpg_dsn(settings.database_url), min_size=0, max_size=1)
        if settings.database_url
        else None
    )
    # Rows written here are sealed like the API's (unsealed, as there, without a key).
    key_file = settings.audit_signing_key_file
    signer = Signer.from_file(key_file) if key_file else None
    submissions = [Submission(event)]
    try:
        if client is not None and pool is not None:
            return await AuditWriter(configured_producer(settings, client), AuditStore(pool, signer)).write(submissions)
        if client is not None:
            await configured_producer(settings, client).publish(event)
            return "accepted"
        if pool is not None:
            await AuditStore(pool, signer).insert(submissions, refuse_conflicts=True)
            return "stored"
        raise StoresUnavailable("neither DATASTORAGE_REDIS_URL nor DATASTORAGE_DATABASE_URL is set")
    finally:
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.close()
