"""`datastorage audit keygen|verify|checkpoints|export|verify-export`: the tamper-evident trail
(docs/INTEGRITY.md).

verify and verify-export exit 0 when intact, 1 when tampering is found, 2 on usage errors and 3
when they could not verify (a store unreachable, no checkpoint outside the database).
"""

import asyncio
import gzip
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import redis
import redis.asyncio as aioredis
import typer
from rich.progress import Progress

from app.audit.integrity.checkpoints import Checkpoint, published_checkpoints, stored_checkpoints
from app.audit.integrity.export import export_lines, verify_export
from app.audit.integrity.keys import KeyFileError, Verifier, generate_key_pair, public_key_path
from app.audit.integrity.verify import Report, Window, verify
from app.audit.query import AuditFilters, AuditQuery, export_select, parse_time_bound
from app.cli.common import database_url, load_settings, redis_url
from app.core.db import connect, create_engine
from app.core.settings import Settings

audit_cli = typer.Typer(help="The tamper-evident audit trail: keys, verification, exports.", no_args_is_help=True)

INTACT, TAMPERED, USAGE, UNVERIFIABLE = 0, 1, 2, 3


@audit_cli.command("keygen")
def keygen(directory: Annotated[Path, typer.Argument(help="Where to write audit-signing.key and .pub.")]) -> None:
    """Write a new Ed25519 key pair: DIR/audit-signing.key (mode 0600) and DIR/audit-signing.pub."""
    try:
        private_path, public_path = generate_key_pair(directory)
    except FileExistsError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"private key: {private_path} (keep it outside the database; every writer reads it)")
    typer.echo(f"public key:  {public_path} (all a verifier needs)")


def _verifier(settings: Settings, public_key: Path | None) -> Verifier:
    path = public_key
    if path is None and settings.audit_signing_key_file is not None:
        path = public_key_path(settings.audit_signing_key_file)
    if path is None:
        raise typer.BadParameter("give --public-key FILE (or set DATASTORAGE_AUDIT_SIGNING_KEY_FILE)")
    try:
        return Verifier.from_file(path)
    except KeyFileError as error:
        raise typer.BadParameter(str(error), param_hint="--public-key") from None


def _checkpoint_file(path: Path) -> list[Checkpoint]:
    try:
        document = json.loads(path.read_text())
        items = document if isinstance(document, list) else [document]
        return [Checkpoint.from_json(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise typer.BadParameter(f"{path}: not what `audit checkpoints --json` prints ({error})") from None


def _time(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_time_bound(text)
    except (ValueError, OverflowError) as error:
        raise typer.BadParameter(str(error), param_hint=name) from None


@audit_cli.command("verify")
def verify_command(
    since: Annotated[str | None, typer.Option(help="RFC 3339, or back from now (15m, 24h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="Same forms as --since.")] = None,
    correlation_id: Annotated[
        str | None, typer.Option(help="Only this correlation (finds its deleted events).")
    ] = None,
    public_key: Annotated[Path | None, typer.Option(help="The public key (default: beside the signing key).")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoints kept elsewhere (`audit checkpoints --json`).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Check the trail against its seals and the checkpoints kept outside the database."""
    settings = load_settings()
    verifier = _verifier(settings, public_key)
    window = Window(_time("--since", since), _time("--until", until), correlation_id)
    if window.since and window.until and window.since >= window.until:
        raise typer.BadParameter("must be earlier than --until", param_hint="--since")
    external = _checkpoint_file(checkpoint) if checkpoint else []
    report = asyncio.run(_verify(settings, verifier, window, external))
    if as_json:
        typer.echo(json.dumps(report.as_json()))
    else:
        _print_report(report)
    raise typer.Exit(UNVERIFIABLE if report.incomplete else INTACT if report.intact else TAMPERED)


async def _verify(settings: Settings, verifier: Verifier, window: Window, external: list[Checkpoint]) -> Report:
    checkpoints = list(external)
    try:
        client = aioredis.from_url(redis_url(settings), socket_connect_timeout=5)
        try:
            checkpoints += await published_checkpoints(client)
        finally:
            await client.aclose()
        redis_problem = None
    except (redis.RedisError, OSError) as error:
        redis_problem = f"the checkpoints in Redis could not be read ({type(error).__name__}: {error})"
    try:
        conn = await connect(database_url(settings), timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        return Report(incomplete=f"Postgres could not be reached ({type(error).__name__}: {error})")
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("verifying rows", total=None)
            report = await verify(
                conn, verifier, checkpoints, window, progress=lambda n: progress.advance(task, n),
                sealing_bound=_bound(settings),
            )  # fmt: skip
    finally:
        await conn.close()
    if redis_problem and not external:
        report.incomplete = redis_problem + "; give --checkpoint FILE to verify without them"
    return report


def _bound(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.audit_sealing_bound_s)


def _print_report(report: Report) -> None:
    for finding in report.findings:
        places = (
            ("event", finding.event_id), ("column", finding.column), ("seal", finding.seal),
            ("partition", finding.partition),
        )  # fmt: skip
        where = ", ".join(f"{name} {value}" for name, value in places if value)
        typer.echo(f"TAMPERED  {finding.kind}: {finding.detail}" + (f" [{where}]" if where else ""))
    typer.echo(
        f"{report.seals} seals, {report.checkpoints} checkpoints, {report.rows} rows checked; "
        f"{report.pending} pending (younger than the sealing bound); "
        f"{report.dropped_by_retention} dropped by retention"
    )
    if report.incomplete:
        typer.echo(f"COULD NOT VERIFY: {report.incomplete}", err=True)
    else:
        typer.echo("intact" if report.intact else f"{len(report.findings)} finding(s): the trail was tampered with")


@audit_cli.command("checkpoints")
def checkpoints_command(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for `audit verify --checkpoint FILE`.")] = False,
) -> None:
    """The signed checkpoints published in the Redis stream audit_checkpoints, oldest first."""
    settings = load_settings()

    async def read() -> list[Checkpoint]:
        client = aioredis.from_url(redis_url(settings))
        try:
            return await published_checkpoints(client)
        finally:
            await client.aclose()

    found = asyncio.run(read())
    if as_json:
        typer.echo(json.dumps([c.as_json() for c in found]))
        return
    for c in found:
        typer.echo(f"{c.checkpoint_index:>6}  seal {c.chain_index:>8}  rows {c.rows_total:>10}  "
                   f"{c.created_at:%Y-%m-%d %H:%M:%S}  {c.seal_hash.hex()[:16]}…  key {c.key_id}")  # fmt: skip
    if not found:
        typer.echo("no checkpoint published yet")


@audit_cli.command("export")
def export_command(
    output: Annotated[Path, typer.Option(help="The NDJSON file to write (.gz: gzip).")],
    since: Annotated[str | None, typer.Option(help="RFC 3339, or back from now (15m, 24h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="Same forms as --since.")] = None,
    correlation_id: Annotated[str | None, typer.Option()] = None,
    event_type: Annotated[str | None, typer.Option()] = None,
    service_name: Annotated[str | None, typer.Option()] = None,
    redact: Annotated[str | None, typer.Option(help="event_data keys to withhold (comma-separated).")] = None,
) -> None:
    """Export events with their proofs, seals and the newest checkpoint, verifiable offline."""
    settings = load_settings()
    filters = {k: v for k, v in {"correlation_id": correlation_id, "event_type": event_type,
                                 "service_name": service_name}.items() if v is not None}  # fmt: skip
    query = AuditQuery(
        AuditFilters(**filters).model_dump(exclude_none=True), _time("--since", since), _time("--until", until)
    )
    redacted = [
        k.strip() for k in (redact if redact is not None else settings.audit_export_redact).split(",") if k.strip()
    ]
    count = asyncio.run(_export(settings, query, output, redacted, filters))
    typer.echo(f"exported {count} event(s) to {output}")


async def _export(settings: Settings, query: AuditQuery, output: Path, redact: list[str], filters: dict) -> int:
    url = database_url(settings)
    engine = create_engine(url)
    conn = await connect(url)
    client = aioredis.from_url(redis_url(settings))
    opener = gzip.open if output.suffix == ".gz" else open
    exported = 0
    try:
        newest = await published_checkpoints(client, count=1) or await stored_checkpoints(conn)
        checkpoint = newest[-1] if newest else None
        with Progress() as progress, opener(output, "wb") as file:
            task = progress.add_task("exporting", total=None)

            def advance(n: int) -> None:
                nonlocal exported
                exported += n
                progress.advance(task, n)

            async with engine.connect() as rows_conn:
                result = await rows_conn.stream(export_select(query))
                rows = (row._mapping async for row in result)
                async for chunk in export_lines(conn, rows, checkpoint, filters=_json_filters(query, filters),
                                                redact=redact, progress=advance):  # fmt: skip
                    file.write(chunk)
    finally:
        await client.aclose()
        await conn.close()
        await engine.dispose()
    return exported


def _json_filters(query: AuditQuery, filters: dict) -> dict:
    return {**filters, "since": query.since.isoformat() if query.since else None,
            "until": query.until.isoformat() if query.until else None}  # fmt: skip


@audit_cli.command("verify-export")
def verify_export_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An export (NDJSON, or .gz).")],
    public_key: Annotated[Path, typer.Option(help="The public key of the signing key.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check an export offline with the public key alone."""
    try:
        verifier = Verifier.from_file(public_key)
    except KeyFileError as error:
        raise typer.BadParameter(str(error), param_hint="--public-key") from None
    with Progress(transient=True) as progress:
        task = progress.add_task("verifying", total=None)
        check = verify_export(_lines(file), verifier, lambda n: progress.advance(task, n))
    if as_json:
        typer.echo(json.dumps(check.as_json()))
    else:
        for problem in check.problems:
            typer.echo(f"TAMPERED  {problem}")
        typer.echo(f"{check.events} events in {check.seals} seals: " + ("intact" if check.intact else "NOT intact"))
    raise typer.Exit(INTACT if check.intact else TAMPERED)


def _lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            yield from file
    except (OSError, EOFError) as error:
        typer.echo(f"cannot read {path}: {error}", err=True)
        sys.exit(UNVERIFIABLE)
