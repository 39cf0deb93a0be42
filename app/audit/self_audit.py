"""The service audits itself: each operator action is an audit event in the trail it keeps.

One call records an action, from the API or from a command:

    await record_action(writer, Action.DLQ_PURGED, actor, resource_type="dlq", resource_id="audit_dlq",
                        data={"purged": 12})

The event has `service_name` "datastorage", `event_category` "operations", `event_type` the
action (`datastorage.dlq.purged`), and the actor: a token's NAME or Kubernetes user through the
API, the operating-system user of a command (both `actor_type` operator). It is written like every
other event (AuditWriter: XADD to the stream, straight to Postgres when Redis is away).
"""

import getpass
import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import metadata
from typing import Any

from app.audit.event import ActorType, AuditEvent, EventOutcome
from app.audit.identity import Submission
from app.audit.writer import AuditWriter, WriteStatus

SERVICE_NAME = "datastorage"
CATEGORY = "operations"


class Action(StrEnum):
    """Every event type the service writes about itself (later: failed verification)."""

    DLQ_REPLAYED = "datastorage.dlq.replayed"
    DLQ_PURGED = "datastorage.dlq.purged"
    PARTITIONS_DROPPED = "datastorage.partitions.dropped"
    RETENTION_APPLIED = "datastorage.retention.applied"
    LEGAL_HOLD_PLACED = "datastorage.legal_hold.placed"
    LEGAL_HOLD_RELEASED = "datastorage.legal_hold.released"
    CATALOG_IMPORTED = "datastorage.catalog.imported"
    ACCESS_DENIED = "datastorage.access.denied"


@dataclass(frozen=True)
class Actor:
    name: str
    kind: ActorType = "operator"
    # Where the action came from: "api" or "cli".
    via: str = "api"

    @classmethod
    def of_cli(cls) -> "Actor":
        """The operating-system user running the command (the one behind sudo, if any)."""
        return cls(os.environ.get("SUDO_USER") or _os_user(), via="cli")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # A container's arbitrary uid has no passwd entry (OpenShift).
        return f"uid:{os.getuid()}"


@cache
def _service_version() -> str | None:
    try:
        return metadata.version("datastorage")
    except metadata.PackageNotFoundError:
        return None


def operator_event(
    action: Action,
    actor: Actor,
    *,
    resource_type: str,
    resource_id: str,
    outcome: EventOutcome = "success",
    data: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        event_type=action.value,
        event_category=CATEGORY,
        event_outcome=outcome,
        service_name=SERVICE_NAME,
        service_version=_service_version(),
        actor_type=actor.kind,
        actor_id=actor.name[:255],
        actor_name=actor.name[:255],
        resource_type=resource_type,
        resource_id=resource_id[:255],
        correlation_id=correlation_id,
        event_data=data or {},
        metadata={"via": actor.via, "host": socket.gethostname()},
    )


async def record_action(
    writer: AuditWriter,
    action: Action,
    actor: Actor,
    *,
    resource_type: str,
    resource_id: str,
    outcome: EventOutcome = "success",
    data: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> WriteStatus:
    """Writes the event of one operator action; raises StoresUnavailable if no store takes it."""
    event = operator_event(
        action,
        actor,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        data=data,
        correlation_id=correlation_id,
    )
    return await writer.write([Submission(event)])
