"""The stored row is derived from the event model, and it is the migrated schema's row."""

from app.audit.integrity.encoding import ENCODED_COLUMNS
from app.audit.record import COLUMNS, POSTGRES_TYPES, STORED_COLUMNS, STORED_TYPES, audit_events, row_values
from app.audit.wire import encode_event
from tests.helpers import event

# information_schema's names of the types the record maps to.
SQL_TYPE_NAMES = {"uuid": "uuid", "varchar": "character varying", "timestamptz": "timestamp with time zone",
                  "date": "date", "jsonb": "jsonb", "bigint": "bigint", "bytea": "bytea"}


async def test_the_record_columns_are_the_schema_columns_in_order_with_their_types(db):
    rows = await db.fetch(
        "SELECT column_name, data_type, is_nullable, character_maximum_length FROM information_schema.columns "
        "WHERE table_name = 'audit_events' ORDER BY ordinal_position")
    assert [r["column_name"] for r in rows] == list(STORED_COLUMNS)
    for row in rows:
        name = row["column_name"]
        assert row["data_type"] == SQL_TYPE_NAMES[POSTGRES_TYPES[STORED_TYPES[name]]], name
        column = audit_events.c[name]
        assert column.nullable == (row["is_nullable"] == "YES"), name
        if row["character_maximum_length"] and name not in ("event_outcome", "actor_type"):
            assert column.type.length == row["character_maximum_length"], name


def test_a_row_and_the_wire_fields_come_from_the_same_event():
    written = event(4, correlation_id="rem-4", metadata={"k": "v"})
    row = dict(zip(COLUMNS, row_values(written), strict=True))
    assert row["event_id"] == written.event_id and row["event_date"] == written.event_date
    assert row["event_data"] == '{"n":4}' and row["metadata"] == '{"k":"v"}'
    fields = encode_event(written)
    assert set(fields) == {name for name in COLUMNS if row[name] is not None} - {"event_date"}
    assert fields["event_timestamp"] == written.event_timestamp.isoformat()


def test_integrity_version_1_encodes_exactly_the_event_columns_in_order():
    """A new column changes the record, not version 1 of the encoding: that is a new version."""
    assert ENCODED_COLUMNS == COLUMNS
