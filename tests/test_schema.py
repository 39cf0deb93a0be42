"""The schema as the database sees it after `datastorage migrate`."""

import hashlib
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from app.core.db import connect

AUDIT_COLUMNS = {
    "event_id", "event_type", "event_category", "event_outcome", "event_timestamp", "event_date",
    "service_name", "service_version", "actor_type", "actor_id", "actor_name", "resource_type",
    "resource_id", "resource_name", "event_data", "correlation_id", "parent_event_id", "trace_id",
    "span_id", "metadata",
}

PLAYBOOK_COLUMNS = {
    "playbook_id", "version", "name", "description", "owner", "maintainer", "content",
    "content_hash", "labels", "embedding", "status", "disabled_at", "disabled_by",
    "disabled_reason", "is_latest_version", "previous_version", "deprecation_notice",
    "version_notes", "change_summary", "approved_by", "approved_at", "expected_success_rate",
    "expected_duration_seconds", "actual_success_rate", "total_executions",
    "successful_executions", "created_at", "updated_at", "created_by", "updated_by",
}


async def columns(db, table: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", table
    )
    return {row["column_name"]: row["data_type"] for row in rows}


async def primary_key(db, table: str) -> list[str]:
    return await db.fetchval(
        """
        SELECT array_agg(a.attname ORDER BY k.ord)
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = $1::regclass AND i.indisprimary
        """,
        table,
    )


async def index_definitions(db, table: str) -> dict[str, str]:
    rows = await db.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1", table)
    return {row["indexname"]: row["indexdef"] for row in rows}


def audit_row(timestamp: datetime, **overrides) -> dict:
    row = {
        "event_id": uuid.uuid4(),
        "event_type": "notification.sent",
        "event_category": "notification",
        "event_outcome": "success",
        "event_timestamp": timestamp,
        "event_date": timestamp.astimezone(UTC).date(),
        "service_name": "gateway",
        "actor_type": "service",
        "resource_type": "notification",
        "resource_id": "notif-1",
        "event_data": '{"channel": "email"}',
    }
    row.update(overrides)
    return row


async def insert_audit_row(db, row: dict) -> None:
    names = list(row)
    placeholders = ", ".join(f"${n}" for n in range(1, len(names) + 1))
    await db.execute(
        f"INSERT INTO audit_events ({', '.join(names)}) VALUES ({placeholders})", *row.values()
    )


async def test_vector_extension_is_installed(db):
    assert await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'") >= "0.8"


async def test_audit_events_has_every_adr034_column(db):
    found = await columns(db, "audit_events")
    # Every ADR-034 column, and the two the integrity seals need (docs/INTEGRITY.md).
    assert set(found) == AUDIT_COLUMNS | {"seal_id", "integrity_salt"}
    assert found["event_id"] == "uuid"
    assert found["event_timestamp"] == "timestamp with time zone"
    assert found["event_date"] == "date"
    assert found["event_data"] == "jsonb"


async def test_audit_events_is_range_partitioned_by_event_date(db):
    strategy, key = await db.fetchrow(
        """
        SELECT p.partstrat::text, a.attname
        FROM pg_partitioned_table p
        JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
        WHERE p.partrelid = 'audit_events'::regclass
        """
    )
    assert (strategy, key) == ("r", "event_date")


async def test_audit_primary_key_contains_the_partition_key(db):
    assert await primary_key(db, "audit_events") == ["event_id", "event_date"]


async def test_audit_indexes_of_the_plan_exist(db):
    indexes = await index_definitions(db, "audit_events")
    for name in (
        "idx_audit_events_event_type",
        "idx_audit_events_event_category",
        "idx_audit_events_correlation_id",
        "idx_audit_events_service_name",
        "idx_audit_events_event_timestamp",
        "idx_audit_events_resource",
        "idx_audit_events_actor",
        "idx_audit_events_event_data",
    ):
        assert name in indexes, name
    assert "USING gin (event_data jsonb_path_ops)" in indexes["idx_audit_events_event_data"]


async def test_audit_checks_reject_unknown_outcome_and_actor_type(db):
    now = datetime.now(UTC)
    with pytest.raises(asyncpg.CheckViolationError, match="event_outcome"):
        await insert_audit_row(db, audit_row(now, event_outcome="maybe"))
    with pytest.raises(asyncpg.CheckViolationError, match="actor_type"):
        await insert_audit_row(db, audit_row(now, actor_type="robot"))


async def test_event_date_must_be_the_utc_date_of_the_timestamp(db):
    # 00:30 at UTC+02:00 is 22:30 the day before in UTC.
    timestamp = datetime.fromisoformat("2026-11-15T00:30:00+02:00")
    with pytest.raises(asyncpg.CheckViolationError, match="event_date"):
        await insert_audit_row(db, audit_row(timestamp, event_date=timestamp.date()))
    await insert_audit_row(db, audit_row(timestamp))
    assert await db.fetchval("SELECT event_date FROM audit_events") == timestamp.date().replace(day=14)


async def test_event_data_must_be_a_json_object(db):
    with pytest.raises(asyncpg.CheckViolationError, match="event_data"):
        await insert_audit_row(db, audit_row(datetime.now(UTC), event_data="[1, 2]"))


async def test_audit_rows_cannot_be_updated_deleted_or_truncated(db):
    await insert_audit_row(db, audit_row(datetime.now(UTC)))
    for statement in (
        "UPDATE audit_events SET event_outcome = 'failure'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE event_outcome = 'success'") == 1


async def test_playbook_catalog_has_every_dd_storage_008_column(db):
    found = await columns(db, "playbook_catalog")
    assert set(found) >= PLAYBOOK_COLUMNS
    assert found["embedding"] == "USER-DEFINED"
    assert found["labels"] == "jsonb"
    assert await primary_key(db, "playbook_catalog") == ["playbook_id", "version"]


async def test_playbook_embedding_is_384_dimensional_with_an_hnsw_cosine_index(db):
    type_name = await db.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'playbook_catalog'::regclass AND attname = 'embedding'"
    )
    assert type_name == "vector(384)"
    indexes = await index_definitions(db, "playbook_catalog")
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["idx_playbook_catalog_embedding"]
    assert "USING gin (labels)" in indexes["idx_playbook_catalog_labels"]


async def test_playbook_hashes_follow_the_text_and_expose_stale_embeddings(db):
    await db.execute(
        "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels) "
        "VALUES ('pb-1', '1.0.0', 'Restart pod', 'Restarts a crashing pod', 'kubectl delete pod ✓', "
        "'{\"env\": \"prod\"}')"
    )
    content_hash, input_hash = await db.fetchrow(
        "SELECT content_hash, embedding_input_hash FROM playbook_catalog"
    )
    assert content_hash == hashlib.sha256("kubectl delete pod ✓".encode()).hexdigest()
    assert await db.fetchval("SELECT count(*) FROM playbook_catalog_stale") == 1

    await db.execute(
        "UPDATE playbook_catalog SET embedding = array_fill(0.1, ARRAY[384])::vector, "
        "embedded_input_hash = embedding_input_hash"
    )
    assert await db.fetchval("SELECT count(*) FROM playbook_catalog_stale") == 0

    await db.execute("UPDATE playbook_catalog SET description = 'Restarts a pod stuck in CrashLoopBackOff'")
    assert await db.fetchval("SELECT count(*) FROM playbook_catalog_stale") == 1
    assert await db.fetchval("SELECT embedding_input_hash FROM playbook_catalog") != input_hash


async def test_playbook_updated_at_is_set_by_the_trigger(db):
    await db.execute(
        "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, updated_at) "
        "VALUES ('pb-1', '1.0.0', 'n', 'd', 'c', '{}', '2000-01-01')"
    )
    await db.execute("UPDATE playbook_catalog SET status = 'disabled'")
    assert (await db.fetchval("SELECT updated_at FROM playbook_catalog")).year > 2000


async def test_only_one_latest_version_per_playbook(db):
    insert = (
        "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
        "is_latest_version) VALUES ('pb-1', $1, 'n', 'd', 'c', '{}', true)"
    )
    await db.execute(insert, "1.0.0")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, "1.1.0")


async def test_each_test_has_a_database_of_its_own(database_url, postgres_server):
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_database()") not in ("postgres", "datastorage")
        assert await conn.fetchval("SELECT count(*) FROM audit_events") == 0
    finally:
        await conn.close()
