"""The Redis keys of the audit stream: the stream, its dead-letter stream and the consumer group."""

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamKeys:
    stream: str = "audit_events"
    dlq: str = "audit_dlq"
    group: str = "datastorage"
