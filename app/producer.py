"""The producer library: what another Python service imports to write its audit trail.

    import redis.asyncio
    from app.producer import AuditProducer, notification_audit_event

    producer = AuditProducer(redis.asyncio.Redis.from_url("redis://…"))
    await producer.publish(notification_audit_event("notif-1", "sent", "ops@example.com", "email"))

With a sharded stream (`DATASTORAGE_STREAM_SHARDS=N`, usually on a Redis Cluster) give the same N:
`AuditProducer(redis.asyncio.RedisCluster.from_url("redis://any-node:6379"), shards=N)` XADDs each
event to `audit_events:{crc32(correlation_id) mod N}`, so one remediation's events stay in order.
`wait_replicas=1` makes a publish return only once a replica has the events too (Redis `WAIT`),
for events that must survive a fail-over of the master.

This module is the project's public API (`__all__`); everything else is the service's own.
Services in other languages XADD the same flat fields (README: "Producing events").
"""

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from app.audit.event import AuditEvent, ValidationLimits
from app.audit.integrity.proofs import verify_proof
from app.audit.wire import encode_event
from app.streams.ids import as_text
from app.streams.keys import StreamKeys

__all__ = [
    "AuditEvent",
    "verify_proof",
    "AuditProducer",
    "DEFAULT_STREAM",
    "NotReplicated",
    "ValidationLimits",
    "ai_analysis_audit_event",
    "new_audit_event",
    "notification_audit_event",
    "workflow_audit_event",
]

DEFAULT_STREAM = StreamKeys().stream


class NotReplicated(Exception):
    """Redis has the events, but fewer replicas than asked confirmed them within the timeout (or
    the master changed meanwhile): a fail-over now could lose them. Publishing the same events
    again is safe: an event_id is stored once."""

    def __init__(self, entry_ids: list[str], wanted: int, confirmed: int):
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed {len(entry_ids)} event(s)")
        self.entry_ids = entry_ids
        self.wanted = wanted
        self.confirmed = confirmed


class AuditProducer:
    """XADDs audit events. `client`: a `redis.asyncio.Redis` or `RedisCluster`. `shards`: the
    stream's shard count (the service's DATASTORAGE_STREAM_SHARDS). `wait_replicas`: after the
    XADDs, WAIT until that many replicas have them (0: do not wait; the master's answer is the
    acknowledgement), at most `wait_timeout_ms`, else raise `NotReplicated`."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        stream: str = DEFAULT_STREAM,
        *,
        shards: int = 1,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ):
        self.client = client
        self.keys = StreamKeys(stream=stream, shards=shards)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    @property
    def stream(self) -> str:
        return self.keys.stream

    def stream_for(self, event: AuditEvent) -> str:
        """The stream (shard) this event goes to."""
        return self.keys.stream_for(event.correlation_id)

    def _stream_of(self, fields: dict[str, str]) -> str:
        return self.keys.stream_for(fields.get("correlation_id"))

    async def publish(self, event: AuditEvent, *, wait_replicas: int | None = None) -> str:
        """XADDs one event; returns the entry id once Redis (and `wait_replicas` replicas) have it."""
        if (self.wait_replicas if wait_replicas is None else wait_replicas) > 0:
            [entry_id] = await self.publish_many([event], wait_replicas=wait_replicas)
            return entry_id
        return as_text(await self.client.xadd(self.stream_for(event), encode_event(event)))

    async def publish_many(self, events: Iterable[AuditEvent], *, wait_replicas: int | None = None) -> list[str]:
        """XADDs many events in one round trip (a pipeline, not a transaction; on a cluster, one per
        master), in order within each shard."""
        return await self.publish_entries((encode_event(event) for event in events), wait_replicas=wait_replicas)

    async def publish_entries(
        self, entries: Iterable[dict[str, str]], *, wait_replicas: int | None = None
    ) -> list[str]:
        """XADDs entries already in the wire format (README: "Producing events"), as publish_many."""
        wanted = self.wait_replicas if wait_replicas is None else wait_replicas
        batch = list(entries)
        if not batch:
            return []
        streams = [self._stream_of(fields) for fields in batch]
        nodes = await self._masters_of(streams) if wanted > 0 else []
        async with self.client.pipeline(transaction=False) as pipe:
            for stream, fields in zip(streams, batch, strict=True):
                pipe.xadd(stream, fields)
            # WAIT counts the replicas that have every write made on ITS connection: it must
            # follow the XADDs on the connection of the master that took them. A cluster pipeline
            # sends each master's commands in order on one connection; `target_nodes` puts the
            # WAIT there. (Without a target, redis-py refuses to route a pipelined WAIT, so a
            # retried pipeline fails rather than waiting on a connection that wrote nothing.)
            for node in nodes:
                options = {} if node is None else {"target_nodes": node}
                pipe.execute_command("WAIT", wanted, self.wait_timeout_ms, **options)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies[: len(batch)]:
            if isinstance(reply, Exception):
                raise reply
        entry_ids = [as_text(reply) for reply in replies[: len(batch)]]
        if wanted > 0:
            confirmed = min((r if isinstance(r, int) else 0) for r in replies[len(batch) :])
            # An XADD redirected by MOVED (its slot moved during the pipeline) was taken by
            # another master than the one that answered WAIT: not confirmed.
            if confirmed >= wanted and nodes != await self._masters_of(streams):
                confirmed = 0
            if confirmed < wanted:
                raise NotReplicated(entry_ids, wanted, confirmed)
        return entry_ids

    async def _masters_of(self, streams: list[str]) -> list:
        """The cluster masters of these streams' slots, as redis-py knows them now, in a stable
        order ([None] for a plain client: one connection does it all)."""
        if not isinstance(self.client, aioredis.RedisCluster):
            return [None]
        await self.client.initialize()
        found = {node.name: node for node in (self.client.get_node_from_key(stream) for stream in streams)}
        return [found[name] for name in sorted(found)]


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
