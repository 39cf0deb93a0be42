"""`datastorage retention apply [--dry-run] [--yes]`: the retention policy, applied now.

Also what `partitions drop` runs (`drop_or_apply`): the same holds, floor, records and seals, with
its own rule for which months are due. Exit codes: 0 done (or nothing to do), 1 refused at the
prompt, without standard input and no --yes, another run under way, or its self-audit event not
written, 2 a retention under the floor without --allow-shorter (or a sealed trail and no key).
"""

import sys
from collections.abc import Callable
from datetime import date
from typing import Annotated

import asyncpg
import typer

from app.audit import retention
from app.audit.integrity.keys import Signer
from app.audit.retention import Due, RetentionBusy, RetentionFailed, RetentionPlan, RetentionPolicy, RetentionRefused
from app.audit.self_audit import Action, Actor
from app.cli.common import load_settings, with_postgres
from app.cli.self_audit import record_cli_action
from app.core.settings import Settings

retention_cli = typer.Typer(help="The retention policy: drop monthly partitions past retention.", no_args_is_help=True)

ALLOW_SHORTER = typer.Option("--allow-shorter", help="Accept a retention below DATASTORAGE_RETENTION_FLOOR_DAYS.")


@retention_cli.command("apply")
def apply(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be dropped and kept.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask (needed without a terminal).")] = False,
    allow_shorter: Annotated[bool, ALLOW_SHORTER] = False,
) -> None:
    """Drop the monthly partitions past retention (DATASTORAGE_RETENTION_DAYS, per category
    DATASTORAGE_RETENTION_CATEGORY_DAYS); rows of correlations under a legal hold move to the
    archive first. Never the current or a future month."""
    settings = load_settings()
    policy = RetentionPolicy.from_settings(settings)
    short = policy.below_floor()
    if short and not allow_shorter:
        _refuse_short(", ".join(short), settings.retention_floor_days)
    drop_or_apply(settings, policy.due, dry_run=dry_run, yes=yes, command="retention apply",
                  action=Action.RETENTION_APPLIED,
                  extra=lambda done: {"retention_days": policy.default_days,
                                      "category_days": dict(policy.category_days), **done.as_json()})  # fmt: skip


def _refuse_short(what: str, floor: int) -> None:
    typer.echo(
        f"refused: {what} is below the floor of {floor} days (DATASTORAGE_RETENTION_FLOOR_DAYS); "
        "pass --allow-shorter if that is meant",
        err=True,
    )
    raise typer.Exit(2)


def check_floor(days: int, floor: int, allow_shorter: bool, what: str) -> None:
    if days < floor and not allow_shorter:
        _refuse_short(what, floor)


def drop_or_apply(
    settings: Settings,
    due_on: Callable[[date], Due],
    *,
    dry_run: bool,
    yes: bool,
    command: str,
    action: Action,
    extra: Callable[[RetentionPlan], dict],
) -> RetentionPlan | None:
    """Lists what is due, asks (unless --yes), drops it, records the run and its self-audit event."""
    todo = with_postgres(settings, lambda conn: _plan(conn, due_on))
    _show(todo)
    if not todo.partitions:
        typer.echo("nothing older than the retention")
    if dry_run:
        typer.echo(f"dry run: {todo.partitions} partition(s) would be dropped, {todo.rows_archived} held row(s) kept")
        return None
    if todo.partitions and not yes:
        if not sys.stdin.isatty():
            typer.echo("refused: no terminal to confirm on; pass --yes to drop without asking", err=True)
            raise typer.Exit(1)
        typer.confirm(f"drop these {todo.partitions} partition(s) and their rows for good?", abort=True)
    key_file = settings.audit_signing_key_file
    signer = Signer.from_file(key_file) if key_file else None
    actor = Actor.of_cli()
    try:
        done = with_postgres(settings, lambda conn: _apply(conn, due_on, signer, command, actor.name))
    except RetentionBusy as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    except RetentionRefused as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(2) from None
    except RetentionFailed as failure:
        typer.echo(f"failed: {failure}", err=True)
        data = extra(failure.done) | {"error": repr(failure.error)}
        record_cli_action(
            settings, action, resource_type="audit_partition", resource_id="audit_events", outcome="failure", data=data
        )
        raise typer.Exit(1) from None
    typer.echo(
        f"dropped {done.partitions} partition(s): {done.rows_dropped} row(s) gone, "
        f"{done.rows_archived} held row(s) moved to the archive"
    )
    record_cli_action(settings, action, resource_type="audit_partition", resource_id="audit_events", data=extra(done))
    return done


async def _plan(conn: asyncpg.Connection, due_on: Callable[[date], Due]) -> RetentionPlan:
    today = await retention.today_utc(conn)
    return await retention.plan(conn, due_on(today), today)


async def _apply(
    conn: asyncpg.Connection, due_on: Callable[[date], Due], signer: Signer | None, command: str, actor: str
) -> RetentionPlan:
    today = await retention.today_utc(conn)
    return await retention.apply(conn, due_on(today), today, signer, command=command, actor=actor)


def _show(todo: RetentionPlan) -> None:
    for month in todo.months:
        held = f", {month.held_rows} held row(s) kept ({', '.join(month.held_correlations)})" if month.held_rows else ""
        typer.echo(f"{month.partition}  {month.month:%Y-%m}  {month.rows} rows{held}  [{', '.join(month.categories)}]")
    for archive in todo.archives:
        typer.echo(f"{archive.partition}  released hold {archive.correlation_id!r}  {archive.rows} archived rows")
