"""The producer library: what another Python service imports to write its audit trail.

    import redis.asyncio
    from app.producer import AuditProducer, notification_audit_event

    producer = AuditProducer(redis.asyncio.Redis.from_url("redis://…"))
    await producer.publish(notification_audit_event("notif-1", "sent", "ops@example.com", "email"))

This module is the project's public API (`__all__`); everything else is the service's own.
Services in other languages XADD the same flat fields (README: "Producing events").
"""

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from app.audit.event import AuditEvent, ValidationLimits
from app.audit.wire import encode_event
from app.streams.keys import StreamKeys

__all__ = [
    "AuditEvent",
    "AuditProducer",
    "DEFAULT_STREAM",
    "ValidationLimits",
    "ai_analysis_audit_event",
    "new_audit_event",
    "notification_audit_event",
    "workflow_audit_event",
]

DEFAULT_STREAM = StreamKeys().stream


class AuditProducer:
    def __init__(self, client: aioredis.Redis, stream: str = DEFAULT_STREAM):
        self.client = client
        self.stream = stream

    async def publish(self, event: AuditEvent) -> str:
        """XADDs one event; returns the entry id once Redis has it."""
        entry_id = await self.client.xadd(self.stream, encode_event(event))
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def publish_many(self, events: Iterable[AuditEvent]) -> list[str]:
        """XADDs many events in one round trip (a pipeline, not a transaction)."""
        return await self.publish_entries(encode_event(event) for event in events)

    async def publish_entries(self, entries: Iterable[dict[str, str]]) -> list[str]:
        """XADDs entries already in the wire format (README: "Producing events"), pipelined."""
        async with self.client.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(self.stream, fields)
            entry_ids = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in entry_ids]


def new_audit_event(
    event_type: str,
    event_category: str,
    event_outcome: str,
    *,
    service_name: str,
    actor_type: str,
    resource_type: str,
    resource_id: str,
    event_data: dict[str, Any] | None = None,
    **optional: Any,
) -> AuditEvent:
    """An event with a fresh id and the current time; `optional` takes any other ADR-034 field."""
    return AuditEvent(
        event_type=event_type,
        event_category=event_category,
        event_outcome=event_outcome,
        service_name=service_name,
        actor_type=actor_type,
        resource_type=resource_type,
        resource_id=resource_id,
        event_data=event_data or {},
        **optional,
    )


# A notification's status -> the event's outcome.
_NOTIFICATION_OUTCOMES = {
    "sent": "success",
    "delivered": "success",
    "acknowledged": "success",
    "failed": "failure",
    "bounced": "failure",
    "rejected": "failure",
    "pending": "pending",
    "queued": "pending",
    "retrying": "pending",
    "skipped": "skipped",
    "suppressed": "skipped",
}


def notification_audit_event(
    notification_id: str,
    status: str,
    recipient: str,
    channel: str,
    extra: dict[str, Any] | None = None,
    *,
    service_name: str = "notification-controller",
    **optional: Any,
) -> AuditEvent:
    return new_audit_event(
        f"notification.{status}",
        "notification",
        _NOTIFICATION_OUTCOMES.get(status, "success"),
        service_name=service_name,
        actor_type="controller",
        resource_type="notification",
        resource_id=notification_id,
        event_data={"recipient": recipient, "channel": channel, "status": status, **(extra or {})},
        **optional,
    )


def workflow_audit_event(
    workflow_id: str,
    phase: str,
    status: str,
    extra: dict[str, Any] | None = None,
    *,
    outcome: str = "success",
    service_name: str = "workflow-execution-controller",
    **optional: Any,
) -> AuditEvent:
    return new_audit_event(
        f"workflow.{phase}",
        "workflow",
        outcome,
        service_name=service_name,
        actor_type="controller",
        resource_type="workflow",
        resource_id=workflow_id,
        event_data={"phase": phase, "status": status, **(extra or {})},
        **optional,
    )


def ai_analysis_audit_event(
    analysis_id: str,
    analysis_type: str,
    extra: dict[str, Any] | None = None,
    *,
    outcome: str = "success",
    service_name: str = "ai-service",
    **optional: Any,
) -> AuditEvent:
    return new_audit_event(
        f"ai.analysis.{analysis_type}",
        "ai",
        outcome,
        service_name=service_name,
        actor_type="service",
        resource_type="analysis",
        resource_id=analysis_id,
        event_data={"analysis_type": analysis_type, **(extra or {})},
        **optional,
    )
