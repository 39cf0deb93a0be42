"""The stored audit row, derived from the event model (`app/audit/event.py`): its columns in
order, their Postgres types, the tuple a row is written as, the SQLAlchemy Core table queries are
built from, and the JSON Schema of a row as the API returns it.

The schema itself is the SQL of `schema/`; tests/test_record.py checks that the two agree.
"""

import uuid
from datetime import date, datetime
from operator import attrgetter
from typing import Any

import orjson
from sqlalchemy import Column, Date, DateTime, MetaData, String, Table, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from app.audit.event import FIELD_TYPES, MAX_LENGTHS, AuditEvent

# The partition key: not a field of the event, the UTC date of its timestamp.
PARTITION_KEY = "event_date"
PRIMARY_KEY = ("event_id", PARTITION_KEY)

_fields = list(AuditEvent.model_fields)
_after_timestamp = _fields.index("event_timestamp") + 1
COLUMNS: tuple[str, ...] = (*_fields[:_after_timestamp], PARTITION_KEY, *_fields[_after_timestamp:])
COLUMN_TYPES: dict[str, type] = {**FIELD_TYPES, PARTITION_KEY: date}
JSON_COLUMNS = tuple(name for name in COLUMNS if COLUMN_TYPES[name] is dict)
NULLABLE = frozenset(
    name
    for name, field in AuditEvent.model_fields.items()
    if field.annotation is not None and type(None) in getattr(field.annotation, "__args__", ())
)

POSTGRES_TYPES = {uuid.UUID: "uuid", str: "varchar", datetime: "timestamptz", date: "date", dict: "jsonb"}

# The idempotent path, for a batch in which some events are stored already (a redelivery): one
# array parameter per column unnested into rows, and an event already there is skipped, not doubled.
_ARRAYS = ", ".join(f"${n}::{POSTGRES_TYPES[COLUMN_TYPES[c]]}[]" for n, c in enumerate(COLUMNS, 1))
INSERT_BATCH = (
    f"INSERT INTO audit_events ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({_ARRAYS}) "
    f"ON CONFLICT ({', '.join(PRIMARY_KEY)}) DO NOTHING"
)

_column_values = attrgetter(*COLUMNS)
_json_positions = [COLUMNS.index(name) for name in JSON_COLUMNS]


def row_values(event: AuditEvent) -> tuple:
    """The row of `event`, in `COLUMNS` order, JSON objects as text (asyncpg's COPY takes it)."""
    values = list(_column_values(event))
    for position in _json_positions:
        if values[position] is not None:
            values[position] = orjson.dumps(values[position]).decode()
    return tuple(values)


_SQLALCHEMY_TYPES: dict[type, TypeEngine | type[TypeEngine]] = {
    uuid.UUID: Uuid,
    datetime: DateTime(timezone=True),
    date: Date,
    dict: JSONB,
}


def _sqlalchemy_type(name: str) -> TypeEngine | type[TypeEngine]:
    kind = COLUMN_TYPES[name]
    return String(MAX_LENGTHS.get(name)) if kind is str else _SQLALCHEMY_TYPES[kind]


metadata = MetaData()
audit_events = Table(
    "audit_events",
    metadata,
    *(
        Column(name, _sqlalchemy_type(name), primary_key=name in PRIMARY_KEY, nullable=name in NULLABLE)
        for name in COLUMNS
    ),
)


def record_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the API returns it: times and dates in ISO 8601, UUIDs as text."""
    return {
        name: (
            value.isoformat()
            if isinstance(value, (datetime, date))
            else str(value)
            if isinstance(value, uuid.UUID)
            else value
        )
        for name, value in row.items()
    }


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema of a stored row as the API returns it: every column, always present."""
    schema = AuditEvent.model_json_schema(mode="serialization")
    properties = schema["properties"]
    properties[PARTITION_KEY] = {"type": "string", "format": "date", "title": "Event Date"}
    return {
        "type": "object",
        "title": "AuditEventRecord",
        "properties": {name: properties[name] for name in COLUMNS},
        "required": list(COLUMNS),
        "additionalProperties": False,
    }
