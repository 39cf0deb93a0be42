"""The stream wire format, both ways: flat string fields of an XADD <-> `AuditEvent`.

Any service can produce (Go, Python, a shell with redis-cli): the fields are the event's own names,
every value a string, `event_data`/`metadata` as JSON text. An entry without `event_id` or
`event_timestamp` gets them derived from the stream key and entry id, so a redelivered entry maps to
the same row (and the insert's ON CONFLICT makes it a no-op).
"""

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from app.audit.event import DEFAULT_LIMITS, FIELD_TYPES, AuditEvent, ValidationLimits, describe_validation_error
from app.audit.identity import DERIVABLE, Submission
from app.streams.ids import entry_id_time

# Namespace of the event ids derived from (stream, entry id); never change it.
ENTRY_ID_NAMESPACE = uuid.UUID("6f0b9a52-8f0e-4d7c-9d55-2f4c1e0a7b31")

EVENT_FIELDS = frozenset(AuditEvent.model_fields)
# FastStream reads a field of this name as its own envelope: a producer must never send it.
RESERVED_FIELD = "data"
# The metadata key saying a missing event_timestamp was taken from the read time, not the entry id.
TIMESTAMP_SOURCE = "timestamp_source"


class InvalidEntry(ValueError):
    """An entry that can never become a row; the message names the field and the problem."""


def derived_event_id(stream: str, entry_id: str) -> uuid.UUID:
    return uuid.uuid5(ENTRY_ID_NAMESPACE, f"{stream}/{entry_id}")


def decode(
    stream: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    limits: ValidationLimits = DEFAULT_LIMITS,
    *,
    now: datetime | None = None,
) -> Submission:
    """Decodes one stream entry as its producer submitted it; raises `InvalidEntry` saying why it
    can never be stored.

    A missing event_timestamp is the entry id's time, unless that time is further ahead of `now`
    (the reading consumer's clock) than the clock-skew allowance: another producer can XADD an
    explicit future id, after which Redis gives every later `*` entry an id at least that late.
    Then the read time is used and `metadata.timestamp_source` says so: an honest event is never
    refused or mis-dated because of someone else's entry id.
    """
    values: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        name = _FIELD_NAMES.get(raw_name) or _unknown_field(raw_name)
        try:
            values[name] = raw_value.decode()
        except UnicodeDecodeError:
            raise InvalidEntry(f"{name}: value is not valid UTF-8") from None
    derived = frozenset(name for name in DERIVABLE if not values.get(name))
    read_time = False
    if "event_id" in derived:
        values["event_id"] = str(derived_event_id(stream, entry_id))
    if "event_timestamp" in derived:
        entry_time = entry_id_time(entry_id)
        read_time = now is not None and entry_time > now + limits.max_future_skew
        values["event_timestamp"] = (now if read_time and now else entry_time).isoformat()
    try:
        event = AuditEvent.model_validate(values, context=_as_text(limits))
    except ValidationError as error:
        raise InvalidEntry(describe_validation_error(error)) from None
    if read_time:
        event = event.model_copy(update={"metadata": {**(event.metadata or {}), TIMESTAMP_SOURCE: "read_time"}})
    return Submission(event, derived)


# The field names as they arrive, looked up without decoding each one (it runs per field consumed).
_FIELD_NAMES = {name.encode(): name for name in EVENT_FIELDS}


def _unknown_field(raw_name: bytes) -> str:
    """Raises `InvalidEntry` naming what is wrong with a field name that is not an event field."""
    try:
        name = raw_name.decode()
    except UnicodeDecodeError:
        raise InvalidEntry(f"a field name is not valid UTF-8: {raw_name[:40]!r}") from None
    if name == RESERVED_FIELD:
        raise InvalidEntry(
            "data: field name reserved (FastStream reads it as its own envelope); send the payload as event_data"
        )
    raise InvalidEntry(f"{name[:60]}: unknown field")


def decode_entry(
    stream: str, entry_id: str, fields: dict[bytes, bytes], limits: ValidationLimits = DEFAULT_LIMITS
) -> AuditEvent:
    """The event of one stream entry (see `decode`)."""
    return decode(stream, entry_id, fields, limits).event


@lru_cache(maxsize=8)
def _as_text(limits: ValidationLimits) -> ValidationLimits:
    return replace(limits, json_as_text=True)


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: str,
    uuid.UUID: str,
    datetime: datetime.isoformat,
    dict: lambda value: orjson.dumps(value).decode(),
}
_FIELD_ENCODERS = [(name, _ENCODERS[kind]) for name, kind in FIELD_TYPES.items()]


def encode_submission(submission: Submission) -> dict[str, str]:
    """The fields to XADD for an event the service received: a timestamp the service derived is
    left out, so the consumer derives it from the entry id and a retry without one stays the
    same event (app/audit/identity.py)."""
    fields = encode_event(submission.event)
    if "event_timestamp" in submission.derived:
        del fields["event_timestamp"]
    return fields


def encode_event(event: AuditEvent) -> dict[str, str]:
    """The flat fields to XADD for `event`; unset optional fields are left out."""
    fields = {}
    for name, encode in _FIELD_ENCODERS:
        value = getattr(event, name)
        if value is not None:
            fields[name] = encode(value)
    return fields
