"""`datastorage legal-hold place|release|list`: legal holds per correlation, as the OS user.

The same record as `/api/v1/audit/legal-holds` (app/audit/legal_holds.py); placed_by and
released_by are the operating-system user, and each change is a self-audit event.
"""

import json
from typing import Annotated

import typer

from app.audit import legal_holds
from app.audit.legal_holds import MAX_CORRELATION_ID, MAX_REASON, LegalHold
from app.audit.self_audit import Action, Actor
from app.cli.common import load_settings, with_postgres
from app.cli.self_audit import record_cli_action
from app.core.settings import Settings

legal_hold_cli = typer.Typer(
    help="Legal holds: retention never drops a held correlation's events.", no_args_is_help=True
)

CorrelationId = Annotated[str, typer.Argument(help="The correlation id to hold (or release).")]


def _check(correlation_id: str) -> str:
    if not 1 <= len(correlation_id) <= MAX_CORRELATION_ID or "\x00" in correlation_id or correlation_id.isspace():
        raise typer.BadParameter(
            f"1 to {MAX_CORRELATION_ID} characters, no NUL, not only spaces", param_hint="CORRELATION_ID"
        )
    return correlation_id


def _record(settings: Settings, action: Action, hold: LegalHold) -> None:
    data = {"reason": hold.reason, "placed_by": hold.placed_by}
    if hold.released_by:
        data["released_by"] = hold.released_by
    record_cli_action(settings, action, resource_type="legal_hold", resource_id=hold.correlation_id, data=data)


@legal_hold_cli.command("place")
def place(
    correlation_id: CorrelationId, reason: Annotated[str, typer.Option(help="Why (a case number, a ticket): required.")]
) -> None:
    """Hold a correlation; holding one that is held changes nothing."""
    _check(correlation_id)
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise typer.BadParameter(f"1 to {MAX_REASON} characters, no NUL", param_hint="--reason")
    settings = load_settings()
    by = Actor.of_cli().name
    hold, created = with_postgres(settings, lambda conn: legal_holds.place(conn, correlation_id, reason, by))
    if not created:
        typer.echo(f"already held since {hold.placed_at:%Y-%m-%d %H:%M:%S} by {hold.placed_by}: {hold.reason}")
        return
    typer.echo(f"held {correlation_id!r}")
    _record(settings, Action.LEGAL_HOLD_PLACED, hold)


@legal_hold_cli.command("release")
def release(correlation_id: CorrelationId) -> None:
    """Release a hold: the next retention run drops what is past retention, archive included."""
    _check(correlation_id)
    settings = load_settings()
    by = Actor.of_cli().name
    hold = with_postgres(settings, lambda conn: legal_holds.release(conn, correlation_id, by))
    if hold is None:
        typer.echo(f"no legal hold on {correlation_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"released {correlation_id!r}")
    _record(settings, Action.LEGAL_HOLD_RELEASED, hold)


@legal_hold_cli.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="JSON, as the API answers.")] = False) -> None:
    """The active holds, oldest first."""
    holds = with_postgres(load_settings(), legal_holds.active)
    if as_json:
        typer.echo(json.dumps({"legal_holds": [h.as_json() for h in holds]}))
        return
    for h in holds:
        typer.echo(f"{h.correlation_id}\t{h.placed_at:%Y-%m-%d %H:%M:%S}\t{h.placed_by}\t{h.reason}")
