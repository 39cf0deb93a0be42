"""The Citus layout (schema/citus/) on plain Postgres, with Citus's functions stubbed: Citus is not
installable here, so this checks that the DDL runs after the migrations, that the key satisfies
the rules Citus enforces (a non-generated distribution column in every unique constraint), and
what the new key means for writes. It does not check Citus itself (docs/SCALING.md)."""

from datetime import UTC, datetime

import asyncpg
import pytest

from app.core.db import connect
from app.core.migrations import discover, migrate_database
from tests.helpers import SCHEMA_DIR, audit_row, insert_audit_row

CITUS_DIR = SCHEMA_DIR / "citus"

# Citus's UDFs as far as the layout uses them: each records its call and checks what Citus would.
STUBS = """
CREATE TABLE citus_stub_calls (function TEXT, table_name TEXT, argument TEXT);

CREATE FUNCTION create_distributed_table(table_name regclass, distribution_column text,
        distribution_type text DEFAULT 'hash', colocate_with text DEFAULT 'default',
        shard_count int DEFAULT NULL) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    column_number smallint;
BEGIN
    SELECT attnum INTO column_number FROM pg_attribute
    WHERE attrelid = table_name AND attname = distribution_column AND NOT attisdropped;
    IF column_number IS NULL THEN
        RAISE 'column "%" of relation "%" does not exist', distribution_column, table_name;
    END IF;
    IF (SELECT attgenerated <> '' FROM pg_attribute WHERE attrelid = table_name AND attnum = column_number) THEN
        RAISE 'cannot distribute relation: Distribution column must not use GENERATED ALWAYS AS (...) STORED.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index WHERE indrelid = table_name AND indisunique
               AND NOT column_number = ANY (indkey::smallint[])) THEN
        RAISE 'Distributed relations cannot have UNIQUE, EXCLUDE, or PRIMARY KEY constraints '
              'that do not include the partition column';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = table_name AND NOT tgisinternal)
       AND current_setting('citus.enable_unsafe_triggers', true) IS DISTINCT FROM 'on' THEN
        RAISE 'cannot distribute relation "%" because it has triggers', table_name;
    END IF;
    INSERT INTO citus_stub_calls VALUES ('create_distributed_table', table_name::text,
                                         distribution_column || ' shards=' || coalesce(shard_count::text, '-'));
END;
$$;

CREATE FUNCTION create_reference_table(table_name regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = table_name AND NOT tgisinternal)
       AND current_setting('citus.enable_unsafe_triggers', true) IS DISTINCT FROM 'on' THEN
        RAISE 'cannot distribute relation "%" because it has triggers', table_name;
    END IF;
    INSERT INTO citus_stub_calls VALUES ('create_reference_table', table_name::text, NULL);
END;
$$;

-- Monthly only, with Citus's names (audit_events_pYYYY_MM); a month that already has a partition
-- is left alone, as Citus leaves it.
CREATE FUNCTION create_time_partitions(table_name regclass, partition_interval interval,
        end_at timestamptz, start_from timestamptz DEFAULT now()) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    month date := date_trunc('month', start_from)::date;
    created boolean := false;
BEGIN
    IF partition_interval <> INTERVAL '1 month' THEN
        RAISE 'the stub makes monthly partitions only';
    END IF;
    WHILE month < end_at LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = table_name
                       AND pg_get_expr(c.relpartbound, c.oid) LIKE format('%%FROM (%L)%%', month)) THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                           table_name::text || '_p' || to_char(month, 'YYYY_MM'), table_name,
                           month, (month + INTERVAL '1 month')::date);
            created := true;
        END IF;
        month := (month + INTERVAL '1 month')::date;
    END LOOP;
    INSERT INTO citus_stub_calls VALUES ('create_time_partitions', table_name::text, partition_interval::text);
    RETURN created;
END;
$$;
"""


@pytest.fixture
async def citus_db(empty_database_url):
    await migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=3)
    conn = await connect(empty_database_url)
    await conn.execute(STUBS)
    for path in sorted(CITUS_DIR.glob("*.sql")):
        if path.name != "000_extension.sql":  # CREATE EXTENSION citus: the one step not stubbable
            await conn.execute(path.read_text())
    yield conn
    await conn.close()


def test_the_migration_runner_does_not_read_the_citus_layout():
    assert {p.name for p in CITUS_DIR.glob("*.sql")} == {
        "000_extension.sql",
        "001_audit_events.sql",
        "002_playbook_catalog.sql",
    }
    citus_sql = {p.read_text() for p in CITUS_DIR.glob("*.sql")}
    assert discover(SCHEMA_DIR) and not {m.sql for m in discover(SCHEMA_DIR)} & citus_sql


async def test_the_layout_distributes_audit_events_by_shard_key_and_copies_the_catalog(citus_db):
    calls = [tuple(r) for r in await citus_db.fetch("SELECT function, table_name, argument FROM citus_stub_calls")]
    assert calls == [
        ("create_distributed_table", "audit_events", "shard_key shards=32"),
        ("create_time_partitions", "audit_events", "1 mon"),
        ("create_reference_table", "playbook_catalog", None),
    ]
    key = await citus_db.fetchval(
        "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conname = 'audit_events_pkey' AND c.conrelid = 'audit_events'::regclass"
    )
    assert key == ["shard_key", "event_id", "event_date"]
    months = await citus_db.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass")
    assert months == 7  # the current month and six ahead: the service made four, Citus's call the rest


async def test_the_shard_key_is_the_correlation_or_else_the_event_id(citus_db):
    now = datetime.now(UTC)
    correlated = audit_row(now, correlation_id="rem-42", shard_key="rem-42")
    await insert_audit_row(citus_db, correlated)
    alone = audit_row(now, correlation_id=None)
    await insert_audit_row(citus_db, {**alone, "shard_key": str(alone["event_id"])})
    with pytest.raises(asyncpg.CheckViolationError):
        await insert_audit_row(citus_db, audit_row(now, correlation_id="rem-42", shard_key="rem-43"))
    with pytest.raises(asyncpg.NotNullViolationError):
        await insert_audit_row(citus_db, audit_row(now, correlation_id="rem-42"))

    # A redelivery is the same row; the same event_id under another correlation is not (the
    # uniqueness Citus gives up: docs/SCALING.md).
    columns = ", ".join(correlated)
    values = ", ".join(f"${n}" for n in range(1, len(correlated) + 1))
    upsert = (f"INSERT INTO audit_events ({columns}) VALUES ({values}) "
              "ON CONFLICT (shard_key, event_id, event_date) DO NOTHING")
    assert await citus_db.execute(upsert, *correlated.values()) == "INSERT 0 0"
    moved = {**correlated, "correlation_id": "rem-7", "shard_key": "rem-7"}
    assert await citus_db.execute(upsert, *moved.values()) == "INSERT 0 1"
    assert await citus_db.fetchval(
        "SELECT count(*) FROM audit_events WHERE event_id = $1", correlated["event_id"]
    ) == 2


async def test_the_layout_refuses_a_table_that_already_holds_events(empty_database_url):
    await migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=0)
    conn = await connect(empty_database_url)
    try:
        await conn.execute(STUBS)
        await insert_audit_row(conn, audit_row(datetime.now(UTC)))
        with pytest.raises(asyncpg.RaiseError, match="audit_events holds rows"):
            await conn.execute((CITUS_DIR / "001_audit_events.sql").read_text())
    finally:
        await conn.close()
