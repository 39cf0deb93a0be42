"""Monthly partitions: created ahead, on demand, safely under concurrency, rows in the right month."""

import asyncio
import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from app.audit.partitions import add_months, ensure_partitions, list_partitions, upcoming_months
from app.core.db import connect
from tests.helpers import audit_row, insert_audit_row


def test_months_arithmetic_crosses_years():
    assert add_months(date(2026, 11, 25), 3) == date(2027, 2, 1)
    assert add_months(date(2026, 1, 31), -1) == date(2025, 12, 1)
    assert upcoming_months(date(2026, 12, 31), 2) == [date(2026, 12, 1), date(2027, 1, 1), date(2027, 2, 1)]


async def test_migrate_creates_the_current_month_and_the_next_three(db):
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    months = [p.month for p in await list_partitions(db)]
    assert months == upcoming_months(today, 3)


async def test_a_month_without_partition_refuses_rows_until_it_is_created(db):
    timestamp = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await insert_audit_row(db, audit_row(timestamp))
    assert await ensure_partitions(db, [timestamp.date()]) == ["audit_events_2031_05"]
    await insert_audit_row(db, audit_row(timestamp))
    assert await db.fetchval("SELECT count(*) FROM audit_events_2031_05") == 1


async def test_ensuring_an_existing_partition_changes_nothing(db):
    before = await list_partitions(db)
    await ensure_partitions(db, [p.month for p in before])
    assert await list_partitions(db) == before


async def test_month_boundary_rows_land_in_their_own_partitions(db):
    last_moment = datetime(2030, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)
    first_moment = datetime(2030, 2, 1, 0, 0, 0, tzinfo=UTC)
    await ensure_partitions(db, [last_moment.date(), first_moment.date()])
    await insert_audit_row(db, audit_row(last_moment, resource_id="last"))
    await insert_audit_row(db, audit_row(first_moment, resource_id="first"))
    rows = await db.fetch("SELECT tableoid::regclass::text AS partition, resource_id FROM audit_events")
    assert {(r["partition"], r["resource_id"]) for r in rows} == {
        ("audit_events_2030_01", "last"),
        ("audit_events_2030_02", "first"),
    }


async def test_a_timestamp_with_an_offset_lands_in_its_utc_month(db):
    # 2030-03-01 01:00 at +02:00 is still February in UTC.
    timestamp = datetime.fromisoformat("2030-03-01T01:00:00+02:00")
    await ensure_partitions(db, [date(2030, 2, 1)])
    await insert_audit_row(db, audit_row(timestamp))
    assert await db.fetchval("SELECT tableoid::regclass::text FROM audit_events") == "audit_events_2030_02"


async def test_concurrent_creators_and_writers_of_a_new_month_all_succeed(database_url):
    """Eight connections at once each ensure the same new month and insert into it."""
    month = date(2032, 7, 1)

    async def ensure_and_insert(n: int) -> None:
        conn = await connect(database_url)
        try:
            await ensure_partitions(conn, [month])
            async with conn.transaction():
                for i in range(20):
                    timestamp = datetime(2032, 7, 1 + i, tzinfo=UTC)
                    await insert_audit_row(conn, audit_row(timestamp, resource_id=f"w{n}-{i}"))
        finally:
            await conn.close()

    await asyncio.gather(*(ensure_and_insert(n) for n in range(8)))
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_events_2032_07") == 160
        names = [p.name for p in await list_partitions(conn)]
        assert names.count("audit_events_2032_07") == 1
    finally:
        await conn.close()


async def test_list_partitions_counts_rows_exactly_when_asked(db):
    now = datetime.now(UTC)
    for _ in range(3):
        await insert_audit_row(db, audit_row(now, event_id=uuid.uuid4()))
    current = {p.month: p for p in await list_partitions(db, exact_counts=True)}[now.date().replace(day=1)]
    assert current.rows == 3
    assert current.bytes > 0
