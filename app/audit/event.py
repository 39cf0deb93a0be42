"""The audit event (ADR-034, docs/PLAN.md): one model for every producer, the consumer and the HTTP side.

This model owns the record's shape: its fields, in column order, with their types and limits.
The stored row (`app/audit/record.py`), the wire format (`app/audit/wire.py`) and the API's JSON
Schema are derived from it. The model takes either Python values (HTTP JSON bodies, the producer
library) or the flat strings of a stream entry: timestamps as RFC 3339 strings, `event_data`/`metadata` as
JSON text. Every rule that keeps a row storable lives here, so an event the model accepts is one
Postgres accepts: lengths are the VARCHAR sizes, enums are the CHECKs, JSON payloads are objects
without NUL characters, and timestamps fall inside a window that bounds which monthly partitions a
producer can make the service create.
"""

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import UnionType
from typing import Annotated, Any, Literal, TypeAlias, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

EventOutcome = Literal["success", "failure", "pending", "skipped"]
ActorType = Literal["system", "user", "service", "operator", "controller"]
EVENT_OUTCOMES: tuple[str, ...] = get_args(EventOutcome)
ACTOR_TYPES: tuple[str, ...] = get_args(ActorType)

# The earliest timestamp taken: older ones come from unset clocks (the epoch), not from the past.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ValidationLimits:
    """Limits that are settings, passed as the validation context."""

    max_future_skew: timedelta = timedelta(hours=1)
    max_json_bytes: int = 256 * 1024
    max_json_depth: int = 32
    # Stream entries carry event_data/metadata as JSON text; HTTP bodies as JSON objects.
    json_as_text: bool = False


DEFAULT_LIMITS = ValidationLimits()


# The VARCHAR sizes of the columns. Required texts must say something: an empty or blank
# event_type is no event type.
RequiredText50: TypeAlias = Annotated[str, Field(min_length=1, max_length=50, pattern=r"\S")]
RequiredText100: TypeAlias = Annotated[str, Field(min_length=1, max_length=100, pattern=r"\S")]
RequiredText255: TypeAlias = Annotated[str, Field(min_length=1, max_length=255, pattern=r"\S")]
OptionalText50: TypeAlias = Annotated[str, Field(max_length=50)] | None
OptionalText255: TypeAlias = Annotated[str, Field(max_length=255)] | None


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: RequiredText100
    event_category: RequiredText50
    event_outcome: EventOutcome
    event_timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))

    service_name: RequiredText100
    service_version: OptionalText50 = None

    actor_type: ActorType
    actor_id: OptionalText255 = None
    actor_name: OptionalText255 = None

    resource_type: RequiredText100
    resource_id: RequiredText255
    resource_name: OptionalText255 = None

    event_data: dict[str, Any] = Field(default_factory=dict)

    correlation_id: OptionalText255 = None
    parent_event_id: uuid.UUID | None = None
    trace_id: OptionalText255 = None
    span_id: OptionalText255 = None

    metadata: dict[str, Any] | None = None

    @property
    def event_date(self) -> date:
        """The partition key: the UTC date of the timestamp. Not cached: `model_copy(update=…)`
        would copy a cached date along with a new timestamp."""
        return self.event_timestamp.astimezone(UTC).date()

    @field_validator("event_timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> datetime:
        if isinstance(value, str):
            value = parse_rfc3339(value)
        if not isinstance(value, datetime):
            raise ValueError("must be an RFC 3339 timestamp string, e.g. 2026-11-25T17:30:00Z")
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset (Z or ±hh:mm)")
        return utc_representable(value)

    @field_validator("event_data", "metadata", mode="before")
    @classmethod
    def _parse_json_object(cls, value: Any, info: ValidationInfo) -> Any:
        limits = _limits(info)
        if isinstance(value, (str, bytes)) and limits.json_as_text:
            # Characters first (never more than the bytes): a huge text is refused without a copy,
            # and a text of at most a quarter of the limit in characters is within it in bytes.
            if len(value) > limits.max_json_bytes or (
                4 * len(value) > limits.max_json_bytes and utf8_size(value) > limits.max_json_bytes
            ):
                raise ValueError(f"is larger than {limits.max_json_bytes} bytes")
            try:
                parsed = orjson.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"is not valid JSON ({error})") from None
            if parsed is None:  # `null`: no metadata (event_data, not optional, is refused below)
                return None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
            if _check_json_tree(parsed, limits.max_json_depth):
                # A whole float of 64-bit size or more may be an integer beyond 64 bits that orjson
                # read inexactly: read exactly, the second walk refuses it by name.
                parsed = json.loads(value)
                _check_json_tree(parsed, limits.max_json_depth)
            return parsed
        elif isinstance(value, dict):
            # The tree first: it names what orjson's encoder would only call unencodable.
            _check_json_tree(value, limits.max_json_depth)
            try:
                size = len(orjson.dumps(value))
            except orjson.JSONEncodeError as error:
                raise ValueError(f"cannot be written as JSON ({error})") from None
            if size > limits.max_json_bytes:
                raise ValueError(f"is larger than {limits.max_json_bytes} bytes")
            return value
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        if value is not None:
            _check_json_tree(value, limits.max_json_depth)
        return value

    @model_validator(mode="after")
    def _storable(self, info: ValidationInfo) -> "AuditEvent":
        # Postgres text cannot hold U+0000; refusing it here names the field.
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and "\x00" in value:
                raise ValueError(f"{name}: must not contain NUL characters (U+0000)")
        limits = _limits(info)
        if self.event_timestamp.timestamp() > time.time() + limits.max_future_skew.total_seconds():
            raise ValueError(
                f"event_timestamp: is more than {limits.max_future_skew} in the future (clock skew allowance)"
            )
        if self.event_timestamp < EARLIEST_TIMESTAMP:
            raise ValueError(f"event_timestamp: is before {EARLIEST_TIMESTAMP:%Y-%m-%d}")
        return self


def value_type(annotation: Any) -> tuple[type, int | None]:
    """The Python type a field holds, without `| None`, `Annotated` or `Literal` (whose values are
    text here): str, uuid.UUID, datetime or dict; and its maximum length where it has one. The
    stored row and the wire format are derived from it."""
    max_length = None
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extras = get_args(annotation)
            for extra in extras:
                for item in getattr(extra, "metadata", ()):
                    max_length = getattr(item, "max_length", max_length)
        elif origin in (Union, UnionType):
            [annotation] = [arg for arg in get_args(annotation) if arg is not type(None)]
        elif origin is Literal:
            return str, max_length
        elif origin is dict:
            return dict, max_length
        else:
            return annotation, max_length


def _field_max_length(field: FieldInfo) -> int | None:
    own = [item.max_length for item in field.metadata if hasattr(item, "max_length")]
    return own[0] if own else value_type(field.annotation)[1]


FIELD_TYPES: dict[str, type] = {name: value_type(f.annotation)[0] for name, f in AuditEvent.model_fields.items()}
MAX_LENGTHS: dict[str, int | None] = {name: _field_max_length(f) for name, f in AuditEvent.model_fields.items()}
# The fields a producer writes text into (Literal fields cannot hold a NUL: they are checked).
_TEXT_FIELDS = tuple(
    name
    for name, f in AuditEvent.model_fields.items()
    if FIELD_TYPES[name] is str and get_origin(f.annotation) is not Literal
)


def _limits(info: ValidationInfo) -> ValidationLimits:
    return info.context if isinstance(info.context, ValidationLimits) else DEFAULT_LIMITS


def _check_json_tree(value: Any, max_depth: int) -> bool:
    """Raises when the JSON tree is nested deeper than `max_depth`, holds a NUL character or an
    integer beyond 64 bits; returns whether it holds a whole float of 64-bit size or more (maybe
    such an integer, as orjson reads one). One walk: it runs for every event consumed."""
    wide_floats = False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"is nested deeper than {max_depth} levels")
        if isinstance(node, str):
            if "\x00" in node:
                raise ValueError("must not contain NUL characters (U+0000)")
        elif isinstance(node, dict):
            for key, child in node.items():
                if "\x00" in key:
                    raise ValueError("must not contain NUL characters (U+0000)")
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, float):
            wide_floats = wide_floats or _maybe_wide_integer(node)
        elif isinstance(node, int) and not _INT64_MIN <= node <= _INT64_MAX:
            # Stored it would become a float (jsonb keeps it, but no reader of ours could): refused.
            raise ValueError(f"holds an integer beyond 64 bits ({node}); send it as a string to keep it exact")
    return wide_floats


def _maybe_wide_integer(number: float) -> bool:
    """A whole float of 64-bit size or more: orjson reads an integer beyond 64 bits as one."""
    return abs(number) >= 2**63 and number.is_integer()


_INT64_MIN, _INT64_MAX = -(2**63), 2**64 - 1


def loads_exact(text: str | bytes | bytearray) -> Any:
    """JSON text parsed with integers kept exact. orjson reads an integer beyond 64 bits as a
    float, silently inexact; then the standard parser reads the text again and keeps it an int
    (which the event model refuses by name)."""
    value = orjson.loads(text)
    return json.loads(text) if _holds_wide_floats(value) else value


def _holds_wide_floats(value: Any) -> bool:
    """Whether a parsed tree holds a whole float of 64-bit size or more (maybe a wide integer); the
    event model's `_check_json_tree` finds them in the walk it makes anyway."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, float) and _maybe_wide_integer(node):
            return True
    return False


def parse_rfc3339(text: str) -> datetime:
    """`2026-11-25T17:30:00Z`, `…+02:00`, with or without fractions; a date alone is refused."""
    if len(text) < 19 or text[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-11-25T17:30:00Z")
    try:
        value = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-11-25T17:30:00Z") from None
    if value.tzinfo is None:
        raise ValueError("must carry a UTC offset (Z or ±hh:mm)")
    return utc_representable(value)


def utc_representable(value: datetime) -> datetime:
    """`value` if its UTC time is a datetime too: 0001-01-01T00:00:00+01:00 is not (it is in year 0),
    nor is 9999-12-31T23:59:59-01:00, and either would fail later, far from its cause."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range: its UTC time falls outside the years 1 to 9999") from None
    return value


def utf8_size(text: str | bytes) -> int:
    """Bytes, as the HTTP body limit counts them: a four-byte character is four, not one."""
    return len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))


def describe_validation_error(error: ValidationError) -> str:
    """One short line naming each bad field: `event_outcome: Input should be …; …`."""
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)
