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
from sqlalchemy import BigInteger, Column, Date, DateTime, LargeBinary, MetaData, String, Table, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from app.audit.event import FIELD_TYPES, MAX_LENGTHS, AuditEvent

# The partition key: not a field of the event, the UTC date of its timestamp.
PARTITION_KEY = "event_date"
PRIMARY_KEY = ("event_id", PARTITION_KEY)

_fields = list(AuditEvent.model_fields)
# The columns of an event as the API returns it.
_after_timestamp = _fields.index("event_timestamp") + 1
COLUMNS: tuple[str, ...] = (*_fields[:_after_timestamp], PARTITION_KEY, *_fields[_after_timestamp:])
COLUMN_TYPES: dict[str, type] = {**FIELD_TYPES, PARTITION_KEY: date}
JSON_COLUMNS = tuple(name for name in COLUMNS if COLUMN_TYPES[name] is dict)
_OPTIONAL_FIELDS = frozenset(
    name
    for name, field in AuditEvent.model_fields.items()
    if field.annotation is not None and type(None) in getattr(field.annotation, "__args__", ())
)

# Columns the service keeps with each row for tamper evidence (docs/INTEGRITY.md): the seal the row
# belongs to and the salt of its event_data commitments. Stored, never returned as event fields.
INTEGRITY_COLUMNS: tuple[str, ...] = ("seal_id", "integrity_salt")
STORED_COLUMNS: tuple[str, ...] = (*COLUMNS, *INTEGRITY_COLUMNS)
STORED_TYPES: dict[str, type] = {**COLUMN_TYPES, "seal_id": int, "integrity_salt": bytes}
# Unsealed rows (written without a signing key, or by someone else) have neither.
NULLABLE = _OPTIONAL_FIELDS | set(INTEGRITY_COLUMNS)

POSTGRES_TYPES = {
    uuid.UUID: "uuid",
    str: "varchar",
    datetime: "timestamptz",
    date: "date",
    dict: "jsonb",
    int: "bigint",
    bytes: "bytea",
}

column_values = attrgetter(*COLUMNS)
"""The values of an event's columns, in COLUMNS order, as Python values."""
_json_positions = [COLUMNS.index(name) for name in JSON_COLUMNS]


def row_values(event: AuditEvent) -> tuple:
    """The row of `event`, in `COLUMNS` order, JSON objects as text (asyncpg's COPY takes it)."""
    values = list(column_values(event))
    for position in _json_positions:
        if values[position] is not None:
            values[position] = orjson.dumps(values[position]).decode()
    return tuple(values)


_SQLALCHEMY_TYPES: dict[type, TypeEngine | type[TypeEngine]] = {
    uuid.UUID: Uuid,
    datetime: DateTime(timezone=True),
    date: Date,
    dict: JSONB,
    int: BigInteger,
    bytes: LargeBinary,
}


def _sqlalchemy_type(name: str) -> TypeEngine | type[TypeEngine]:
    kind = STORED_TYPES[name]
    return String(MAX_LENGTHS.get(name)) if kind is str else _SQLALCHEMY_TYPES[kind]


metadata = MetaData()


def _stored_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        *(
            Column(column, _sqlalchemy_type(column), primary_key=column in PRIMARY_KEY, nullable=column in NULLABLE)
            for column in STORED_COLUMNS
        ),
    )


audit_events = _stored_table("audit_events")
# What queries read (schema/008): audit_events and the held rows of months retention dropped,
# which the list and get endpoints keep returning while their hold lasts.
audit_events_all = _stored_table("audit_events_all")


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
