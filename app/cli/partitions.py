"""`datastorage partitions ensure|list|drop`: the monthly partitions of audit_events."""

import json
import re
from datetime import UTC, datetime
from typing import Annotated

import typer

from app.audit.partitions import ensure_upcoming_partitions, list_partitions
from app.audit.retention import RetentionPlan, older_than_days, older_than_due
from app.audit.self_audit import Action
from app.cli.common import load_settings, with_postgres
from app.cli.retention import ALLOW_SHORTER, check_floor, drop_or_apply

# 100 years: any real retention; beyond, the cut-off date would leave the calendar.
MAX_RETENTION_MONTHS = 1200

partitions_cli = typer.Typer(help="Monthly partitions of audit_events.", no_args_is_help=True)


@partitions_cli.command("ensure")
def ensure(months_ahead: Annotated[int, typer.Option(min=0, max=24, help="Months after the current one.")] = 3) -> None:
    """Create the current month's partition and the next N months' where missing."""
    for name in with_postgres(load_settings(), lambda conn: ensure_upcoming_partitions(conn, months_ahead)):
        typer.echo(name)


@partitions_cli.command("list")
def list_(
    exact: Annotated[bool, typer.Option(help="Count rows exactly (scans every partition).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
) -> None:
    """List the partitions with their rows and size."""
    partitions = with_postgres(load_settings(), lambda conn: list_partitions(conn, exact_counts=exact))
    if as_json:
        typer.echo(
            json.dumps(
                [{"name": p.name, "month": p.month.isoformat(), "rows": p.rows, "bytes": p.bytes} for p in partitions]
            )
        )
        return
    typer.echo(f"{'partition':<24} {'month':<8} {'rows':>12} {'size':>10}")
    for p in partitions:
        typer.echo(f"{p.name:<24} {p.month:%Y-%m}  {p.rows:>12} {p.bytes / 2**20:>8.1f}MB")


@partitions_cli.command("drop")
def drop(
    older_than: Annotated[
        str, typer.Option(help="Retention, in months: 13mo drops months that ended over 13 months ago.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only list what would be dropped.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    allow_shorter: Annotated[bool, ALLOW_SHORTER] = False,
) -> None:
    """Drop whole monthly partitions older than the retention (never the current or a future month).

    The manual form of `retention apply`: rows under a legal hold move to the archive first, a
    retention below DATASTORAGE_RETENTION_FLOOR_DAYS is refused without --allow-shorter, and each
    drop is recorded in the integrity chain and in the self-audit trail."""
    match = re.fullmatch(r"(\d{1,6})mo", older_than.strip())
    if not match or not 1 <= int(match[1]) <= MAX_RETENTION_MONTHS:
        raise typer.BadParameter(
            f"give months, 1mo or more (at most {MAX_RETENTION_MONTHS}mo), e.g. 13mo", param_hint="--older-than"
        )
    months = int(match[1])
    settings = load_settings()
    today = datetime.now(UTC).date()
    check_floor(
        older_than_days(months, today), settings.retention_floor_days, allow_shorter, f"--older-than {months}mo"
    )

    def record(done: RetentionPlan) -> dict:
        return {
            "older_than": f"{months}mo",
            "partitions": [
                {"name": m.partition, "month": f"{m.month:%Y-%m}", "estimated_rows": m.rows} for m in done.months
            ],
            "estimated_rows": sum(m.rows for m in done.months),
            **done.as_json(),
        }

    drop_or_apply(settings, lambda day: older_than_due(months, day), dry_run=dry_run, yes=yes,
                  command="partitions drop", action=Action.PARTITIONS_DROPPED, extra=record)  # fmt: skip
