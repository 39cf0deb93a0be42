"""The audit table as SQLAlchemy Core sees it, for building queries from filters. The schema
itself is the SQL of `schema/` (tests/test_tables.py checks that the two agree); the catalog is
queried with asyncpg (vector parameters) and needs no description here."""

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    MetaData,
    String,
    Table,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

audit_events = Table(
    "audit_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("event_type", String(100), nullable=False),
    Column("event_category", String(50), nullable=False),
    Column("event_outcome", String(20), nullable=False),
    Column("event_timestamp", DateTime(timezone=True), nullable=False),
    Column("event_date", Date, primary_key=True),
    Column("service_name", String(100), nullable=False),
    Column("service_version", String(50)),
    Column("actor_type", String(50), nullable=False),
    Column("actor_id", String(255)),
    Column("actor_name", String(255)),
    Column("resource_type", String(100), nullable=False),
    Column("resource_id", String(255), nullable=False),
    Column("resource_name", String(255)),
    Column("event_data", JSONB, nullable=False),
    Column("correlation_id", String(255)),
    Column("parent_event_id", Uuid),
    Column("trace_id", String(255)),
    Column("span_id", String(255)),
    Column("metadata", JSONB),
)
