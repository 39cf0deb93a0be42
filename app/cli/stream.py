"""`datastorage stream status`: the audit stream (every shard of it) and its consumer group."""

import json
from typing import Annotated

import typer

from app.cli.common import load_settings, with_redis
from app.streams.operations import stream_status

stream_cli = typer.Typer(help="The audit stream and its consumer group.", no_args_is_help=True)


@stream_cli.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False) -> None:
    """Length, lag, pending entries and their age, consumers and their idle time, DLQ depth; with
    a sharded stream, the totals and then each shard (and on a cluster, the master it lives on)."""
    settings = load_settings()
    found = with_redis(settings, lambda client: stream_status(client, settings.stream_keys))
    if as_json:
        typer.echo(json.dumps(found))
        return
    if len(found["streams"]) == 1:
        typer.echo(
            f"stream {found['stream']}: {found['length']} entries; DLQ {found['dlq_stream']}: {found['dlq_depth']}"
        )
    else:
        typer.echo(
            f"stream {found['stream']} and {found['shards']} shards: {found['length']} entries; "
            f"DLQs: {found['dlq_depth']}"
        )
    for group in found["groups"]:
        typer.echo(
            f"group {group['name']}: lag {group['lag']}, pending {group['pending']}"
            + (f" (oldest {group['oldest_pending_age_s']} s)" if group["pending"] else "")
        )
        for consumer in group["consumers"]:
            typer.echo(f"  consumer {consumer['name']}: pending {consumer['pending']}, idle {consumer['idle_s']} s")
    if len(found["streams"]) > 1:
        for stream in found["streams"]:
            where = f" on {stream['node']}" if "node" in stream else ""
            groups = ", ".join(f"{g['name']} lag {g['lag']} pending {g['pending']}" for g in stream["groups"])
            typer.echo(
                f"  {stream['stream']}{where}: {stream['length']} entries, DLQ {stream['dlq_depth']}"
                + (f"; {groups}" if groups else "")
            )
    for stream in found["streams"]:
        if stream.get("entry_ids_ahead_s"):
            typer.echo(
                f"warning: {stream['stream']}'s newest entry id is {stream['entry_ids_ahead_s']} s ahead of this clock"
                " (an XADD with an explicit id); events without a timestamp take the read time",
                err=True,
            )
