"""`datastorage dlq list|show|replay|purge`: the dead-letter streams (the plain one and each shard's).

A dead letter is named by its entry id, or `shard:id` when it is in a shard's DLQ
(app/streams/operations.py).
"""

import json
import sys
from typing import Annotated

import typer
from rich.progress import Progress

from app.audit.self_audit import Action
from app.cli.common import load_settings, with_redis
from app.cli.self_audit import record_cli_action
from app.core.redis_client import RedisClient
from app.streams.dlq import NOT_REPLAYABLE
from app.streams.operations import DeadLetterEntry, dlq_list, dlq_purge, dlq_replay, dlq_show, iterate_dead_letters

dlq_cli = typer.Typer(help="The dead-letter stream: inspect, replay, purge.", no_args_is_help=True)


class UnknownDeadLetters(Exception):
    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


def _as_json(entry: DeadLetterEntry) -> dict:
    return {"id": entry.name, **entry.as_text()}


@dlq_cli.command("list")
def list_(
    reason: Annotated[str | None, typer.Option(help="Only this dlq_reason.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
) -> None:
    """List dead letters, oldest first (over every shard's DLQ)."""
    settings = load_settings()
    found = with_redis(settings, lambda client: dlq_list(client, settings.stream_keys, reason=reason, limit=limit))
    if as_json:
        typer.echo(json.dumps([_as_json(e) for e in found]))
        return
    for entry in found:
        fields = entry.as_text()
        typer.echo(
            f"{entry.name}  {fields.get('dlq_reason')}  {fields.get('source_id')}  {fields.get('dlq_error', '')[:100]}"
        )


@dlq_cli.command("show")
def show(entry_id: Annotated[str, typer.Argument(help="A dead letter: its entry id, or shard:id.")]) -> None:
    """Every field of one dead letter."""
    settings = load_settings()
    try:
        found = with_redis(settings, lambda client: dlq_show(client, settings.stream_keys, entry_id))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="ID") from None
    if found is None:
        typer.echo(f"no dead letter {entry_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(_as_json(found), indent=2))


@dlq_cli.command("replay")
def replay(
    entry_ids: Annotated[
        list[str] | None, typer.Argument(help="Dead letters: entry ids or shard:id (default: all, or --reason).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this dlq_reason.")] = None,
) -> None:
    """Move dead letters back to the audit stream (after a fix); one that fails again comes back
    to the DLQ with a new reason."""
    if entry_ids and reason:
        raise typer.BadParameter("give entry ids or --reason, not both")
    settings = load_settings()
    keys = settings.stream_keys

    async def work(client: RedisClient) -> tuple[int, int]:
        if entry_ids:
            found = [await dlq_show(client, keys, name) for name in entry_ids]
            unknown = [name for name, entry in zip(entry_ids, found, strict=True) if entry is None]
            if unknown:
                raise UnknownDeadLetters(unknown)
            entries = [e for e in found if e]
        else:
            entries = [e async for e in iterate_dead_letters(client, keys, reason=reason)]
        with Progress() as progress:
            task = progress.add_task("replaying", total=len(entries))
            moved = await dlq_replay(client, keys, entries, lambda n: progress.advance(task, n))
        return moved, len(entries)

    try:
        moved, selected = with_redis(settings, work)
    except UnknownDeadLetters as error:
        typer.echo(f"no dead letter {', '.join(error.names)}: nothing replayed", err=True)
        raise typer.Exit(1) from None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="ENTRY_IDS") from None
    target = "the streams of their shards" if keys.sharded else keys.stream
    typer.echo(f"replayed {moved} of {selected} dead letter(s) to {target}")
    if moved < selected:
        typer.echo(
            f"kept {selected - moved} dead letter(s) that hold no original entry ({', '.join(sorted(NOT_REPLAYABLE))}):"
            " they record what was lost and cannot be stored; `datastorage dlq purge --reason …` removes them",
            err=True,
        )
    record_cli_action(
        settings,
        Action.DLQ_REPLAYED,
        resource_type="dlq",
        resource_id=keys.dlq,
        data={"replayed": moved, "selected": selected, "reason": reason, "entry_ids": (entry_ids or [])[:100]},
    )


@dlq_cli.command("purge")
def purge(
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this dlq_reason.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete dead letters for good (from every shard's DLQ)."""
    settings = load_settings()
    if not yes:
        if sys.stdin is None or sys.stdin.closed or not sys.stdin.isatty():
            # Nobody to ask (a script, a closed stdin): refuse rather than read an answer from nowhere.
            typer.echo("purge: no terminal to confirm on; pass --yes to purge without asking", err=True)
            raise typer.Exit(1)
        what = f"dead letters with reason {reason!r}" if reason else "ALL dead letters"
        where = "every shard's DLQ" if settings.stream_keys.sharded else settings.dlq_stream
        typer.confirm(f"delete {what} from {where} for good?", abort=True)
    purged = with_redis(settings, lambda client: dlq_purge(client, settings.stream_keys, reason=reason))
    typer.echo(f"purged {purged} dead letter(s)")
    record_cli_action(
        settings,
        Action.DLQ_PURGED,
        resource_type="dlq",
        resource_id=settings.dlq_stream,
        data={"purged": purged, "reason": reason},
    )
