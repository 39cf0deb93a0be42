"""The `datastorage` command line: one module per command group."""

import typer

from app.cli import service
from app.cli.audit import audit_cli
from app.cli.dlq import dlq_cli
from app.cli.legal_holds import legal_hold_cli
from app.cli.partitions import partitions_cli
from app.cli.playbooks import playbooks_cli
from app.cli.retention import retention_cli
from app.cli.stream import stream_cli

cli = typer.Typer(
    help="Data Storage Service: the audit trail and the playbook catalog.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for command in (service.run, service.consume, service.serve, service.migrate):
    cli.command()(command)
cli.add_typer(partitions_cli, name="partitions")
cli.add_typer(playbooks_cli, name="playbooks")
cli.add_typer(stream_cli, name="stream")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(retention_cli, name="retention")
cli.add_typer(legal_hold_cli, name="legal-hold")


def main() -> None:
    cli()
